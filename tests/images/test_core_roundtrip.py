"""The core writer against the reader, against pyelftools, and its atomicity."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from earlymm.images import CpuState, Segment, open_image, write_qemu_core
from earlymm.images import core_writer as cw
from earlymm.images.cpustate import (
    GPR_NAMES,
    PRSTATUS_PID_OFFSET,
    PRSTATUS_REGS_OFFSET,
    SEGMENT_NAMES,
    pack_qemu_cpustate,
    parse_qemu_cpustate,
)
from earlymm.images.qemu_core import EHDR, PHDR, PT_LOAD
from earlymm.images.safe_write import WriteError

PAGE = 4096


def page(tag: int) -> bytes:
    return struct.pack("<Q", tag) * (PAGE // 8)


def cpu(n: int) -> CpuState:
    segs = tuple(Segment(selector=8 * i + n, limit=0xFFFFF, flags=(1 << 21) if i == 0 else 0x9300,
                         base=0x1000 * i) for i in range(len(SEGMENT_NAMES)))
    return CpuState(gprs=tuple(0x1111 * (i + 1) + n for i in range(16)), rip=0xFFFFFFFF81000000 + n,
                    rflags=0x246, segments=segs, cr0=0x80050033, cr2=0x5794A9, cr3=0x6082000 + n * PAGE,
                    cr4=0x10006F0, kernel_gs_base=0xFFFF88801F400000)


FRAMES = [(7, page(7)), (3, page(3)), (4, page(4)), (5, page(5)), (0x100000, page(0x100000))]


def test_roundtrip(tmp_path: Path) -> None:
    p = tmp_path / "x.core"
    cpus = [cpu(0), cpu(1)]
    write_qemu_core(p, FRAMES, cpus)
    with open_image(p) as im:
        assert im.kind == "qemu-core"
        assert im.cpus == cpus
        assert im.ranges() == [(3 * PAGE, 6 * PAGE), (7 * PAGE, 8 * PAGE), (0x100000 * PAGE, 0x100001 * PAGE)]
        assert len(im.segments) == 3  # 3,4,5 merged into one PT_LOAD
        for pfn, data in FRAMES:
            f = im.frame(pfn)
            assert f is not None and bytes(f) == data
        assert im.frame(6) is None and im.frame(-1) is None and im.frame(1 << 40) is None
        assert im.frame(3) is im.frame(3)  # cached


def test_gzip_roundtrip_is_deterministic(tmp_path: Path) -> None:
    a, b = tmp_path / "a.core.gz", tmp_path / "b.core.gz"
    write_qemu_core(a, FRAMES, [cpu(0)])
    write_qemu_core(b, reversed(FRAMES), [cpu(0)])
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes()[:2] == b"\x1f\x8b"
    with open_image(a) as im:
        assert im.cpus == [cpu(0)]
        f = im.frame(0x100000)
        assert f is not None and bytes(f) == page(0x100000)


def test_cpu_state_fields() -> None:
    c = cpu(2)
    assert c.is_64bit_code and c.cpl == 0  # SS.DPL (flags 0x9300), not CS.RPL (2): QEMU takes the CPL from SS
    assert c.gpr("rsp") == c.gprs[GPR_NAMES.index("rsp")]
    assert c.segment("gs") == c.segments[4]
    raw = pack_qemu_cpustate(c)
    assert len(raw) == 440 and struct.unpack_from("<Q", raw, 392 + 3 * 8)[0] == c.cr3
    assert parse_qemu_cpustate(raw) == c
    old = parse_qemu_cpustate(struct.pack("<II", 1, 432) + raw[8:432])
    assert old.kernel_gs_base is None and old.cr3 == c.cr3
    assert not CpuState().is_64bit_code
    with pytest.raises(ValueError):
        CpuState(gprs=(0,) * 3)


def test_pyelftools_reads_output(tmp_path: Path) -> None:
    p = tmp_path / "x.core"
    cpus = [cpu(0), cpu(1)]
    write_qemu_core(p, FRAMES, cpus)
    with open(p, "rb") as fh:
        elf = ELFFile(fh)
        assert elf.header.e_type == "ET_CORE" and elf.header.e_machine == "EM_X86_64"
        assert elf.header.e_ehsize == 64
        segs = list(elf.iter_segments())
        assert [s.header.p_type for s in segs] == ["PT_NOTE", "PT_LOAD", "PT_LOAD", "PT_LOAD"]
        loads = [(s.header.p_paddr, s.header.p_filesz) for s in segs[1:]]
        assert loads == [(3 * PAGE, 3 * PAGE), (7 * PAGE, PAGE), (0x100000 * PAGE, PAGE)]
        assert segs[1].data()[:PAGE] == page(3)
        notes = list(segs[0].iter_notes())  # type: ignore[attr-defined]  # a NoteSegment at run time
        assert [(n.n_name, n.n_type) for n in notes] == [
            ("CORE", "NT_PRSTATUS"), ("CORE", "NT_PRSTATUS"), ("QEMU", 0), ("QEMU", 0)]
        for i, n in enumerate(notes[:2]):
            desc = n["n_desc"]
            assert len(desc) == 336
            assert struct.unpack_from("<I", desc, PRSTATUS_PID_OFFSET)[0] == i + 1
            regs = struct.unpack_from("<27Q", desc, PRSTATUS_REGS_OFFSET)
            assert regs[16] == cpus[i].rip and regs[19] == cpus[i].gpr("rsp")
            assert regs[10] == cpus[i].gpr("rax") and regs[0] == cpus[i].gpr("r15")
        assert [s.name for s in elf.iter_sections()] == ["", ".shstrtab"]


def test_no_cpus_and_no_frames(tmp_path: Path) -> None:
    p = tmp_path / "x.core"
    write_qemu_core(p, [(1, bytes(PAGE))], [])
    with open_image(p) as im:
        assert im.cpus == [] and im.ranges() == [(PAGE, 2 * PAGE)]


@pytest.mark.parametrize("frames", [[(1, b"short")], [(1, bytes(PAGE)), (1, bytes(PAGE))], [(-1, bytes(PAGE))]])
def test_bad_frames_write_nothing(tmp_path: Path, frames: list[tuple[int, bytes]]) -> None:
    with pytest.raises(ValueError):
        write_qemu_core(tmp_path / "x.core", frames, [])
    assert os.listdir(tmp_path) == []


def test_failure_midway_leaves_old_file_and_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "x.core"
    p.write_bytes(b"previous")

    def boom(out: object, *_rest: object) -> None:
        out.write(b"partial")  # type: ignore[attr-defined]
        raise OSError("disk full")

    monkeypatch.setattr(cw, "_write", boom)
    with pytest.raises(WriteError, match="disk full"):
        write_qemu_core(p, FRAMES, [])
    assert p.read_bytes() == b"previous"
    assert os.listdir(tmp_path) == ["x.core"]


def test_frames_straddling_unaligned_segments(tmp_path: Path) -> None:
    # QEMU never writes unaligned segments, but a frame half covered must read zero-padded, not crash.
    p = tmp_path / "u.core"
    segs = [(100, b"\xaa" * (PAGE - 100 + 50)), (PAGE + 60, b"\xbb" * 10)]
    off = EHDR.size + len(segs) * PHDR.size
    phdrs, body = b"", b""
    for paddr, blob in segs:
        phdrs += PHDR.pack(PT_LOAD, 0, off + len(body), paddr, paddr, len(blob), len(blob), 0)
        body += blob
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    p.write_bytes(EHDR.pack(ident, 4, 62, 1, 0, EHDR.size, 0, 0, 64, PHDR.size, len(segs), 0, 0, 0)
                  + phdrs + body)
    with open_image(p) as im:
        f0 = im.frame(0)
        assert f0 is not None and bytes(f0[:100]) == bytes(100) and bytes(f0[100:]) == b"\xaa" * (PAGE - 100)
        f1 = im.frame(1)
        assert f1 is not None
        assert bytes(f1[:50]) == b"\xaa" * 50 and bytes(f1[50:60]) == bytes(10)
        assert bytes(f1[60:70]) == b"\xbb" * 10 and bytes(f1[70:]) == bytes(PAGE - 70)
        assert im.frame(2) is None


def test_close_and_context_manager(tmp_path: Path) -> None:
    p = tmp_path / "x.core"
    write_qemu_core(p, FRAMES, [])
    im = open_image(p)
    assert im.frame(3) is not None
    im.close()
    with open_image(p) as im2:
        kept = im2.frame(4)
    assert kept is not None  # a view held past close must not make close() raise


@pytest.mark.slow
def test_pn_xnum_many_segments(tmp_path: Path) -> None:
    frames = [(2 * i, bytes(PAGE)) for i in range(0xFFFF)]
    p = tmp_path / "many.core"
    write_qemu_core(p, frames, [cpu(0)])
    with open_image(p) as im:
        assert len(im.segments) == 0xFFFF
        assert im.frame(2 * 0xFFFE) is not None and im.frame(1) is None
    with open(p, "rb") as fh:
        assert ELFFile(fh).num_segments() == 0x10000
