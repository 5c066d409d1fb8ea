"""The pieces of the QEMU capture pipeline that run without QEMU: cpio, monitor text, minimizer."""

from __future__ import annotations

import gzip
import itertools
import json
import stat
import struct
from pathlib import Path

import pytest

from earlymm.images import CpuState, open_image, write_qemu_core
from earlymm.images.cpio import CpioEntry, gzip_newc, newc_archive
from earlymm.images.minimize import minimize, read_capture_text, table_pfns
from earlymm.images.monitor_text import (
    TlbLine,
    choose_samples,
    parse_gva2gpa_file,
    parse_gva2gpa_reply,
    parse_info_mem,
    parse_info_tlb,
)

PAGE = 4096


def read_newc(data: bytes) -> list[tuple[str, int, bytes, tuple[int, int]]]:
    """An independent newc reader: (name, mode, data, rdev) per entry, trailer excluded."""
    out: list[tuple[str, int, bytes, tuple[int, int]]] = []
    pos = 0
    while True:
        assert data[pos:pos + 6] == b"070701" and pos % 4 == 0
        f = [int(data[pos + 6 + 8 * i:pos + 14 + 8 * i], 16) for i in range(13)]
        namesize, filesize = f[11], f[6]
        name = data[pos + 110:pos + 110 + namesize - 1].decode()
        assert data[pos + 110 + namesize - 1] == 0
        pos += 110 + namesize
        pos += -pos % 4
        body = data[pos:pos + filesize]
        pos += filesize + (-filesize % 4)
        if name == "TRAILER!!!":
            assert pos == len(data)
            return out
        out.append((name, f[1], body, (f[9], f[10])))


def test_cpio_newc_layout() -> None:
    entries = [CpioEntry.directory("dev"), CpioEntry.chardev("dev/console", 5, 1),
               CpioEntry.file("init", b"#!/bin/sh\necho hi\n", 0o755), CpioEntry.symlink("bin/sh", "busybox"),
               CpioEntry.file("/odd", b"x" * 5)]
    got = read_newc(newc_archive(entries))
    assert [g[0] for g in got] == ["dev", "dev/console", "init", "bin/sh", "odd"]
    assert stat.S_ISCHR(got[1][1]) and got[1][3] == (5, 1)
    assert stat.S_IMODE(got[2][1]) == 0o755 and got[2][2] == b"#!/bin/sh\necho hi\n"
    assert stat.S_ISLNK(got[3][1]) and got[3][2] == b"busybox"
    assert gzip.decompress(gzip_newc(entries)) == newc_archive(entries)


TLB_TEXT = (
    "0000000000400000: 000000000330e000 X---A--U-\r\n"
    "0000000000401000: 000000000330f000 X---A--U-\r\n"
    "ffff888000000000: 0000000000000000 XG-DA---W\r\n"
    "ffff888000200000: 0000000000200000 XGPDA---W\r\n"
    "not a tlb line\r\n"
)


def test_parse_info_tlb_and_mem() -> None:
    tlb = parse_info_tlb(TLB_TEXT)
    assert tlb[0] == TlbLine(0x400000, 0x330E000, "X---A--U-")
    assert tlb[3].flags[2] == "P" and len(tlb) == 4
    mem = parse_info_mem("0000000000400000-0000000000420000 0000000000020000 ur-\r\n"
                         "ffff888000000000-ffff888020000000 0000000020000000 -rw\r\n")
    assert [(m.start, m.end, m.perms) for m in mem] == [(0x400000, 0x420000, "ur-"),
                                                        (0xFFFF888000000000, 0xFFFF888020000000, "-rw")]


def test_parse_gva2gpa() -> None:
    assert parse_gva2gpa_reply("gpa: 0x1234\r\n") == 0x1234
    assert parse_gva2gpa_reply("gpa: 0\r\n") == 0  # QEMU prints %#x, so zero has no 0x
    assert parse_gva2gpa_reply("Unmapped\r\n") is None
    with pytest.raises(ValueError):
        parse_gva2gpa_reply("error")
    assert parse_gva2gpa_file("0x10\tUnmapped\n0xffff888000000000\tgpa: 0\n") == [
        (0x10, None), (0xFFFF888000000000, 0)]


def test_choose_samples_is_bounded_fair_and_canonical_agnostic() -> None:
    espfix = [TlbLine(0xFFFFFF0000000000 + i * 0x10000, 0x5000, "X--DA---W") for i in range(20000)]
    text = [TlbLine(0xFFFFFFFF81000000 + i * 0x200000, 0x1000000 + i * 0x200000, "-GPDA---W") for i in range(8)]
    direct = [TlbLine(0xFFFF888000000000, 0, "XGPDA---W")]
    s = choose_samples(parse_info_tlb(TLB_TEXT) + direct + espfix + text, False, 512 << 20, limit=100)
    assert s == sorted(set(s)) and all(0 <= v < 1 << 64 for v in s)
    assert 100 < len(s) < 300
    # espfix gets what the small regions leave of the budget, and does not crowd them out.
    assert 50 < sum(v >> 39 == 0x1FFFFFE for v in s) <= 100
    assert sum(0xFFFFFFFF81000000 <= v < 0xFFFFFFFF82000000 for v in s) >= 4
    assert 0xFFFF888000000000 + 0x1FF000 <= max(v for v in s if v >> 39 == 0x1FFFF11) < 1 << 64
    assert 0x8000000000000000 in s  # a non-canonical probe


def tables(levels: int) -> tuple[list[tuple[int, bytes]], set[int]]:
    """A small hierarchy with a 2 MiB leaf, a loop back to the root, aliasing and a missing table."""
    pages: dict[int, bytearray] = {p: bytearray(PAGE) for p in range(1, 8)}

    def put(pfn: int, idx: int, entry: int) -> None:
        struct.pack_into("<Q", pages[pfn], 8 * idx, entry)

    chain = [1, 2, 3, 4, 5][5 - levels:]  # root ... PT
    for parent, child in itertools.pairwise(chain):
        put(parent, 0, child << 12 | 0x63)
        put(parent, 1, child << 12 | 0x62)  # not present: must not matter
    put(chain[0], 511, chain[0] << 12 | 0x3)  # self-reference
    put(chain[-2], 2, 0x40000000 | 0x83)  # 2 MiB leaf (PS) must not be followed as a table
    put(chain[-2], 3, chain[-1] << 12 | 0x3)  # alias of the same PT
    put(chain[-3], 4, 0x99 << 12 | 0x3)  # a table the image does not hold
    put(chain[0], 5, 6 << 12 | 0x83)  # PS in the root level is reserved: not followed
    put(chain[-1], 0, 7 << 12 | 0x3)  # a PTE: page 7 is data, not a table
    return [(p, bytes(b)) for p, b in pages.items()], set(chain)


@pytest.mark.parametrize("levels", [4, 5])
def test_table_pfns(tmp_path: Path, levels: int) -> None:
    frames, want = tables(levels)
    cr4 = 0x20 | (0x1000 if levels == 5 else 0)
    cpu = CpuState(cr0=0x80000001, cr3=(6 - levels) << 12 | 0x18, cr4=cr4)
    write_qemu_core(tmp_path / "c", frames, [cpu])
    with open_image(tmp_path / "c") as img:
        found, missing = table_pfns(img, cpu)
        assert found == want and missing == {0x99}
        assert table_pfns(img, CpuState(cr3=cpu.cr3, cr4=cr4)) == (set(), set())  # paging off


def test_minimize_synthetic_capture(tmp_path: Path) -> None:
    frames, want = tables(4)
    frames.append((0x300, b"\x01" * PAGE))
    cap, fix = tmp_path / "cap", tmp_path / "fix"
    cap.mkdir()
    cpu = CpuState(cr0=0x80000001, cr3=0x2000, cr4=0x20)
    write_qemu_core(cap / "core.elf", frames, [cpu])
    (cap / "gva2gpa.txt").write_text("0x1000\tgpa: 0x300abc\n0x2000\tUnmapped\n0x3000\tgpa: 0xfee00000\n")
    (cap / "tlb.txt").write_text("x" * 300_000)
    (cap / "meta.json").write_text("{}")
    summary = minimize(cap, fix)
    assert summary["table_pages"] == len(want) and summary["data_pages"] == 1
    assert summary["sample_pages_in_holes"] == ["0xfee00000"]
    assert not (fix / "tlb.txt").exists() and read_capture_text(fix, "tlb.txt") == "x" * 300_000
    assert json.loads((fix / "minimize.json").read_text())["samples"] == 3
    with open_image(fix / "core.elf.gz") as img:
        assert img.cpus == [cpu]
        assert {a >> 12 for a, _ in img.ranges()} <= want | {0x300}
        assert sum((b - a) >> 12 for a, b in img.ranges()) == len(want) + 1
