"""Bad input to the image readers: every problem is one ``ImageError`` with a one-line message."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import pytest

from earlymm.images import ImageError, QemuCore, RawImage, open_image, open_qemu_core
from earlymm.images.cpustate import CpuState, pack_qemu_cpustate
from earlymm.images.qemu_core import EHDR, NHDR, PHDR, PT_LOAD, PT_NOTE

PAGE = 4096


def craft(path: Path, *, cls: int = 2, data: int = 1, etype: int = 4, machine: int = 62,
          loads: list[tuple[int, bytes]] | None = None, notes: bytes = b"",
          truncate: int | None = None, phentsize: int = PHDR.size) -> Path:
    """A hand-made ELF core: ``loads`` are (paddr, bytes) segments, placed after the headers."""
    loads = [(0, bytes(PAGE))] if loads is None else loads
    phnum = len(loads) + (1 if notes else 0)
    off = EHDR.size + phnum * PHDR.size
    phdrs = b""
    body = b""
    if notes:
        phdrs += PHDR.pack(PT_NOTE, 0, off, 0, 0, len(notes), len(notes), 0)
        body += notes
        off += len(notes)
    for paddr, blob in loads:
        phdrs += PHDR.pack(PT_LOAD, 0, off, paddr, paddr, len(blob), len(blob), 0)
        body += blob
        off += len(blob)
    ident = b"\x7fELF" + bytes([cls, data, 1]) + bytes(9)
    hdr = EHDR.pack(ident, etype, machine, 1, 0, EHDR.size, 0, 0, EHDR.size, phentsize, phnum, 0, 0, 0)
    out = hdr + phdrs + body
    path.write_bytes(out if truncate is None else out[:truncate])
    return path


def qemu_note(desc: bytes) -> bytes:
    name = b"QEMU\0"
    return NHDR.pack(len(name), len(desc), 0) + name + bytes(-len(name) % 4) + desc + bytes(-len(desc) % 4)


def expect_error(path: Path, fragment: str) -> str:
    with pytest.raises(ImageError) as ei:
        open_qemu_core(path)
    msg = str(ei.value)
    assert fragment in msg, msg
    assert "\n" not in msg
    assert str(path) in msg
    return msg


def test_well_formed_craft_opens(tmp_path: Path) -> None:
    with open_qemu_core(craft(tmp_path / "ok", notes=qemu_note(pack_qemu_cpustate(CpuState(cr3=0x5000))))) as im:
        assert isinstance(im, QemuCore)
        assert im.ranges() == [(0, PAGE)]
        assert im.cpus[0].cr3 == 0x5000


def test_not_an_elf(tmp_path: Path) -> None:
    p = tmp_path / "text"
    p.write_text("hello world, not a core\n")
    expect_error(p, "not an ELF")


def test_empty_file_is_not_an_elf(tmp_path: Path) -> None:
    p = tmp_path / "empty"
    p.write_bytes(b"")
    expect_error(p, "not an ELF")


def test_truncated_header(tmp_path: Path) -> None:
    expect_error(craft(tmp_path / "c", truncate=40), "truncated")


def test_truncated_program_headers(tmp_path: Path) -> None:
    expect_error(craft(tmp_path / "c", truncate=EHDR.size + 10), "truncated")


def test_segment_beyond_eof(tmp_path: Path) -> None:
    msg = expect_error(craft(tmp_path / "c", truncate=EHDR.size + PHDR.size + 100), "truncated")
    assert "PT_LOAD" in msg


def test_note_beyond_eof(tmp_path: Path) -> None:
    notes = qemu_note(pack_qemu_cpustate(CpuState()))
    p = craft(tmp_path / "c", notes=notes, loads=[], truncate=EHDR.size + PHDR.size + 30)
    assert "PT_NOTE" in expect_error(p, "truncated")


def test_wrong_machine(tmp_path: Path) -> None:
    assert "EM_ARM" in expect_error(craft(tmp_path / "c", machine=40), "wrong machine")


def test_em_386_in_elf64_opens(tmp_path: Path) -> None:
    # what qemu-system-i386 writes for a PC (its BIOS ROM block ends at 4 GiB): ELFCLASS64 with EM_386
    with open_qemu_core(craft(tmp_path / "c", machine=3)) as im:
        assert im.machine == 3 and im.ranges() == [(0, PAGE)]


def test_not_et_core(tmp_path: Path) -> None:
    assert "ET_EXEC" in expect_error(craft(tmp_path / "c", etype=2), "not a core")


def test_no_pt_load(tmp_path: Path) -> None:
    expect_error(craft(tmp_path / "c", loads=[]), "no PT_LOAD")


def test_elf32_rejected(tmp_path: Path) -> None:
    expect_error(craft(tmp_path / "c", cls=1), "ELFCLASS64")


def test_big_endian_rejected(tmp_path: Path) -> None:
    expect_error(craft(tmp_path / "c", data=2), "little-endian")


def test_bad_phentsize(tmp_path: Path) -> None:
    expect_error(craft(tmp_path / "c", phentsize=32), "e_phentsize")


def test_bad_qemu_note(tmp_path: Path) -> None:
    desc = bytearray(pack_qemu_cpustate(CpuState()))
    struct.pack_into("<I", desc, 4, 100)  # size field smaller than the fixed part
    expect_error(craft(tmp_path / "c", notes=qemu_note(bytes(desc))), "size field")
    struct.pack_into("<II", desc, 0, 7, 440)
    expect_error(craft(tmp_path / "c", notes=qemu_note(bytes(desc))), "version 7")


def test_note_header_overruns_segment(tmp_path: Path) -> None:
    bad = NHDR.pack(5, 4000, 0) + b"QEMU\0\0\0\0" + bytes(16)
    expect_error(craft(tmp_path / "c", notes=bad), "note at offset 0")


def test_overlapping_segments(tmp_path: Path) -> None:
    p = craft(tmp_path / "c", loads=[(0, bytes(2 * PAGE)), (PAGE, bytes(PAGE))])
    expect_error(p, "overlap")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="cannot read"):
        open_image(tmp_path / "nope")


def test_corrupt_gzip(tmp_path: Path) -> None:
    p = tmp_path / "c.gz"
    p.write_bytes(gzip.compress(b"\x7fELF" + bytes(100))[:30])
    with pytest.raises(ImageError, match="gzip"):
        open_image(p)


def test_gzipped_bad_core_reports_the_same_error(tmp_path: Path) -> None:
    src = craft(tmp_path / "c", machine=40)
    gz = tmp_path / "c.gz"
    gz.write_bytes(gzip.compress(src.read_bytes()))
    expect_error(gz, "wrong machine")


def test_auto_detect_non_elf_is_raw(tmp_path: Path) -> None:
    p = tmp_path / "raw.bin"
    p.write_bytes(b"\x01" * (PAGE + 10))
    with open_image(p) as im:
        assert isinstance(im, RawImage)
        assert im.cpus == []
        assert im.ranges() == [(0, PAGE + 10)]
        last = im.frame(1)
        assert last is not None and len(last) == PAGE
        assert bytes(last[:10]) == b"\x01" * 10 and bytes(last[10:]) == bytes(PAGE - 10)
        assert im.frame(2) is None


def test_empty_raw_image(tmp_path: Path) -> None:
    p = tmp_path / "empty"
    p.write_bytes(b"")
    with open_image(p) as im:
        assert im.ranges() == [] and im.frame(0) is None


def test_forced_kind(tmp_path: Path) -> None:
    core = craft(tmp_path / "c")
    with open_image(core, kind="raw") as im:
        assert isinstance(im, RawImage)
        assert im.ranges() == [(0, core.stat().st_size)]
