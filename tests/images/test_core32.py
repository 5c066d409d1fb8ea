"""32-bit QEMU cores: what qemu-system-i386 7.2's ``dump-guest-memory`` writes for a guest outside long mode
(fixtures recorded by tests/fixtures/i386-qemu-dumps/capture.py), read by earlymm, and matched by its writer.

The register values asserted come from QEMU's own ``info registers`` at reset (EIP=0000fff0, CS=f000 with
base ffff0000, EDX=00000663, CR0=60000010), not from earlymm.
"""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

from earlymm.hw.memory import ZERO_FRAME
from earlymm.images import CpuState, open_image, write_qemu_core
from earlymm.images.cpustate import (
    pack_prstatus_i386,
    pack_qemu_cpustate,
    parse_qemu_cpustate,
    prstatus_i386_eip_esp,
)
from earlymm.images.qemu_core import EHDR, ELF32, ELF64, EM_386, PT_NOTE, iter_notes

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "i386-qemu-dumps"
META = json.loads((FIX / "meta.json").read_text())


def pc_core(tmp: Path) -> Path:
    """The pc-reset core at full size: QEMU's headers and notes, its memory as zeros (left out of the
    fixture: it holds the SeaBIOS ROM), its trailing .shstrtab."""
    raw = (FIX / "pc-reset.headers").read_bytes()
    head, trailer = raw[:META["pc_reset_data_at"]], raw[META["pc_reset_data_at"]:]
    p = tmp / "pc.core"
    with open(p, "wb") as f:
        f.write(head)
        f.seek(META["pc_reset_size"] - len(trailer))
        f.write(trailer)
    return p


def notes_of(raw: bytes) -> tuple[bytes, list[tuple[bytes, int, bytes]]]:
    cls = ELF64 if raw[4] == 2 else ELF32
    f = cls.ehdr.unpack_from(raw, 0)
    phoff, phnum = f[5], f[10]
    for i in range(phnum):
        p_type, _fl, off, _va, _pa, size, _m, _a = cls.phdr(raw, phoff + i * cls.phdr_struct.size)
        if p_type == PT_NOTE:
            blob = raw[off:off + size]
            return blob, [(n, t, bytes(d)) for n, t, d in iter_notes(memoryview(blob), "core")]
    raise AssertionError("no PT_NOTE")


def test_qemu_writes_elf64_em386_for_a_pc_guest_outside_long_mode(tmp_path: Path) -> None:
    raw = (FIX / "pc-reset.headers").read_bytes()
    assert raw[4] == 2 and struct.unpack_from("<H", raw, 18)[0] == EM_386  # ELFCLASS64, EM_386
    with open_image(pc_core(tmp_path)) as img:
        assert img.machine == EM_386  # type: ignore[attr-defined]
        assert img.ranges() == [(0, 0x100_0000), (0xFFFC_0000, 0x1_0000_0000)]  # RAM, and the BIOS up to 4 GiB
        cpu = img.cpus[0]
        assert (cpu.rip, cpu.cs.selector, cpu.cs.base, cpu.gpr("rdx"), cpu.cr0) == (0xFFF0, 0xF000, 0xFFFF_0000,
                                                                                   0x663, 0x6000_0010)
        assert not cpu.is_64bit_code


def test_our_i386_notes_are_qemus_bytes() -> None:
    _blob, notes = notes_of((FIX / "pc-reset.headers").read_bytes())
    assert [(n, t, len(d)) for n, t, d in notes] == [(b"CORE", 1, 144), (b"QEMU", 0, 440)]
    cpu = parse_qemu_cpustate(notes[1][2])
    assert pack_qemu_cpustate(cpu) == notes[1][2]
    assert pack_prstatus_i386(cpu, 1) == notes[0][2]
    assert prstatus_i386_eip_esp(notes[0][2]) == (0xFFF0, 0)


def test_writer_matches_qemu_elf64_layout_for_an_i386_core(tmp_path: Path) -> None:
    theirs = (FIX / "pc-reset.headers").read_bytes()
    cpu = parse_qemu_cpustate(notes_of(theirs)[1][1][2])
    p = tmp_path / "ours.core"
    # a block ending at 4 GiB makes QEMU (and the writer) choose ELFCLASS64
    write_qemu_core(p, [(0, ZERO_FRAME), (0xFFFFF, ZERO_FRAME)], [cpu], machine="i386")
    ours = p.read_bytes()
    t, o = EHDR.unpack_from(theirs, 0), EHDR.unpack_from(ours, 0)
    # e_ident, e_type, e_machine, e_version, e_entry, e_phoff, e_shoff, e_flags; then e_phentsize, e_shentsize,
    # e_shnum, e_shstrndx (e_ehsize: QEMU writes 8, the writer the correct 64; e_phnum: QEMU splits RAM by region)
    assert t[:8] == o[:8] and t[9] == o[9] and t[11:] == o[11:]
    assert (t[8], o[8]) == (8, 64)
    assert notes_of(ours)[0] == notes_of(theirs)[0]


def test_writer_is_byte_identical_to_qemus_elf32_core(tmp_path: Path) -> None:
    theirs = gzip.decompress((FIX / "none-elf32.core.gz").read_bytes())
    p = tmp_path / "ours.core"
    write_qemu_core(p, [(pfn, ZERO_FRAME) for pfn in range(4096)], [], machine="i386")
    ours = p.read_bytes()
    assert ours[4] == 1 and len(ours) == len(theirs)
    assert struct.unpack_from("<H", theirs, 40)[0] == 8  # QEMU's e_ehsize; ELF32's is 52
    assert ours[:40] + ours[42:] == theirs[:40] + theirs[42:]


def test_reads_qemus_elf32_core() -> None:
    with open_image(FIX / "none-elf32.core.gz") as img:
        assert img.ranges() == [(0, 0x100_0000)] and img.cpus == [] and img.machine == EM_386  # type: ignore[attr-defined]
        assert bytes(img.frame(0x800) or b"x") == bytes(4096)


def test_i386_round_trip_and_class_rule(tmp_path: Path) -> None:
    cpu = CpuState(rip=0xC010_0123, cr0=0x8005_0033, cr3=0x3C_0000, cr4=0xB0, gprs=(0,) * 6 + (0xC03C_1FF0,) + (0,) * 9)
    low, high = tmp_path / "low.core", tmp_path / "high.core"
    write_qemu_core(low, [(0x3C0, bytes(range(256)) * 16)], [cpu], machine="i386", absent_zero=True)
    write_qemu_core(high, [(0x3C0, bytes(4096)), (0x10_0000, bytes(4096))], [cpu], machine="i386")
    assert low.read_bytes()[4] == 1 and high.read_bytes()[4] == 2  # ELFCLASS32 below 4 GiB, else ELFCLASS64
    for p in (low, high):
        with open_image(p) as img:
            assert img.cpus == [cpu] and img.machine == EM_386  # type: ignore[attr-defined]
        assert prstatus_i386_eip_esp(notes_of(p.read_bytes())[1][0][2]) == (0xC010_0123, 0xC03C_1FF0)
    with open_image(low) as img:
        assert img.absent_zero and bytes(img.frame(0x3C0) or b"") == bytes(range(256)) * 16
