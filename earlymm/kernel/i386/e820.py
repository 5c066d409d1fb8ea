"""The i386 kernel's e820 map (arch/i386/kernel/e820.c, mach-default/setup.c @ 2.6.21): read from the
``boot_params`` copy head.S made, sanitised in place, copied with the 640 KiB – 1 MiB fix-up, printed as
2.6.21 prints it, and ``find_max_pfn``. 2.6.21 knows only the zero page's 128 entries (setup data came
in 2.6.26)."""

from __future__ import annotations

import struct

from earlymm.hw.faults import Halt
from earlymm.kernel.e820 import E820_ACPI, E820_NVS, E820_RAM, E820_RESERVED, E820Table
from earlymm.kernel.i386.consts import PAGE_SHIFT, PAGE_SIZE
from earlymm.kernel.i386.context import I386Context
from earlymm.platform import bootparams as bp

E820MAX = 128
_NAMES = {E820_RAM: "(usable)", E820_RESERVED: "(reserved)", E820_ACPI: "(ACPI data)", E820_NVS: "(ACPI NVS)"}


def copy_e820_map(entries: list[tuple[int, int, int]]) -> list[tuple[int, int, int]] | None:
    """Model of copy_e820_map(), arch/i386/kernel/e820.c @ 2.6.21; differences: none. Fewer than two
    entries, or one that wraps 64 bits, means "ignore the map" (None); RAM claimed between 640 KiB and
    1 MiB is cut out ("Some BIOSes claim RAM in the 640k - 1M region")."""
    if len(entries) < 2:
        return None
    out: list[tuple[int, int, int]] = []
    for start, size, kind in entries:
        end = start + size
        if end >= 1 << 64:
            return None
        if kind == E820_RAM and start < 0x10_0000 and end > 0xA_0000:
            if start < 0xA_0000:
                out.append((start, 0xA_0000 - start, kind))
            if end <= 0x10_0000:
                continue
            start = 0x10_0000
            size = end - start
        out.append((start, size, kind))
    return out


def machine_specific_memory_setup(ctx: I386Context) -> str:
    """Model of machine_specific_memory_setup(), arch/i386/mach-default/setup.c @ 2.6.21; differences:
    a map copy_e820_map refuses ends the boot (2.6.21 falls back to the BIOS's 88h/E801h sizes, which the
    model's loader does not provide). ``sanitize_e820_map`` works on the zero page's entries in place."""
    params = ctx.sym("boot_params")
    n = min(ctx.rd(params + bp.E820_ENTRIES, 1), E820MAX)
    raw = ctx.cpu.read(params + bp.E820_TABLE, 20 * n)
    table = E820Table()
    for i in range(n):
        table.append(*struct.unpack_from("<QQI", raw, 20 * i))
    table.update_table()  # sanitize_e820_map(E820_MAP, &E820_MAP_NR)
    sanitized = table.as_tuples()
    ctx.cpu.write(params + bp.E820_TABLE, b"".join(struct.pack("<QQI", *e) for e in sanitized))
    ctx.wr(params + bp.E820_ENTRIES, len(sanitized), 1)
    copied = copy_e820_map(sanitized)
    if copied is None:
        msg = "Kernel panic - not syncing: the BIOS e820 map is unusable and no fallback memory size is known"
        ctx.print(msg)
        raise Halt(msg, outcome="panic", console="\n".join(ctx.console))
    ctx.mm.e820 = copied
    return "BIOS-e820"


def print_memory_map(ctx: I386Context, who: str) -> None:
    """``print_memory_map``: `` BIOS-e820: %016Lx - %016Lx (usable)`` per entry."""
    for start, size, kind in ctx.mm.e820:
        ctx.print(f" {who}: {start:016x} - {start + size:016x} {_NAMES.get(kind, f'type {kind}')}")


def find_max_pfn(ctx: I386Context) -> int:
    """Model of find_max_pfn(), arch/i386/kernel/e820.c @ 2.6.21; differences: no EFI map. The end of the
    highest RAM entry, whole pages only."""
    max_pfn = 0
    for start, size, kind in ctx.mm.e820:
        if kind != E820_RAM:
            continue
        first, last = (start + PAGE_SIZE - 1) >> PAGE_SHIFT, (start + size) >> PAGE_SHIFT
        if first < last:
            max_pfn = max(max_pfn, last)
    return max_pfn
