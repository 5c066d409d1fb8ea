"""GdbPhysFrames (the live FrameSource) and the parser of QEMU's flattened memory map."""

from __future__ import annotations

import pytest

from earlymm.hw.memory import MAX_PA
from earlymm.tools.gdb.physmem import GdbPhysFrames, MemoryMapError, parse_flat_ram
from tests.gdb.fake_gdb import MTREE_512M


def test_flat_map_keeps_ram_and_rom_of_system_space_only() -> None:
    # pc.ram, pc.rom, the BIOS alias and the high pc.ram alias touch: one range; MMIO (ioapic, hpet,
    # apic-msi) is left out; the I/O port space (FlatView #0) is ignored.
    assert parse_flat_ram(MTREE_512M) == [(0, 0x2000_0000), (0xFFFC_0000, 0x1_0000_0000)]


def test_flat_map_kinds_and_fallback_to_cpu_memory() -> None:
    text = ("FlatView #3\n AS \"cpu-memory-0\", root: system\n Root memory region: system\n"
            "  0000000000000000-0000000000000fff (prio 0, romd): flash\n"
            "  0000000000001000-0000000000001fff (prio 0, ramd): vfio-bar\n"
            "  0000000000002000-0000000000002fff (prio -1, i/o): mmio\n"
            "  0000000100000000-000000017fffffff (prio 0, ram): pc.ram @0000000020000000\n")
    assert parse_flat_ram(text) == [(0, 0x1000), (0x1_0000_0000, 0x1_8000_0000)]


def test_flat_map_without_system_space_is_an_error() -> None:
    with pytest.raises(MemoryMapError):
        parse_flat_ram("FlatView #0\n AS \"I/O\", root: io\n  0000-0007 (prio 0, i/o): dma\n")
    with pytest.raises(MemoryMapError):
        parse_flat_ram("Target does not support this command.\n")


class Reader:
    def __init__(self, reply: bytes | None = None) -> None:
        self.calls: list[tuple[int, int]] = []
        self.reply = reply

    def __call__(self, pa: int, length: int) -> bytes | None:
        self.calls.append((pa, length))
        if self.reply is not None:
            return self.reply
        return (pa >> 12).to_bytes(8, "little") * (length // 8)


def test_frames_are_read_once_per_command() -> None:
    read = Reader()
    src = GdbPhysFrames(read, [(0, 0x20000)])
    a = src.frame(3)
    assert a is not None and len(a) == 4096 and a[:8] == (3).to_bytes(8, "little")
    assert src.frame(3) is a
    assert read.calls == [(0x3000, 4096)] and src.reads == 1


def test_frames_outside_ram_are_holes_never_read() -> None:
    # MMIO reads through QEMU's physical mode reach the device; a hole must not be touched.
    read = Reader()
    src = GdbPhysFrames(read, [(0, 0x20000), (0xFFFC0000, 0x100000000)])
    assert src.frame(0x20) is None            # just past RAM
    assert src.frame(0xFEE00) is None         # the local APIC
    assert src.frame(MAX_PA >> 12) is None    # beyond the 52-bit physical space
    assert src.frame(-1) is None
    assert src.frame(0xFFFFF) is not None     # the BIOS ROM is readable
    assert read.calls == [(0xFFFFF000, 4096)]
    assert src.ranges() == [(0, 0x20000), (0xFFFC0000, 0x100000000)]


def test_partial_ram_frame_is_a_hole() -> None:
    assert GdbPhysFrames(Reader(), [(0, 0x1800)]).frame(1) is None


def test_failed_or_short_reads_are_holes_and_cached() -> None:
    src = GdbPhysFrames(lambda pa, n: None, None)
    assert src.frame(5) is None
    short = GdbPhysFrames(Reader(b"\0" * 100), None)
    assert short.frame(5) is None
    assert short.frame(5) is None and short.reads == 1


def test_unknown_map_reads_everything() -> None:
    read = Reader()
    src = GdbPhysFrames(read, None)
    assert src.frame(0xFEE00) is not None
    assert src.ranges() == [(0, MAX_PA)]
