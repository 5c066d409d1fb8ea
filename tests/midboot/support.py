"""Checks a mid-boot recording must pass, shared by the fixture tests and the live capture test.

Every expected value comes from the real kernel or QEMU: kallsyms (symbol addresses), the kernel's own
tables and counters, the e820 map it printed and the zero page the loader gave it, QEMU's CPU properties
and its ``info tlb``. Each check returns a list of problems (empty when all is well).
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

from earlymm.arch.modes import Features
from earlymm.hw.memory import Region, RegionType
from earlymm.images.monitor_text import parse_info_tlb
from earlymm.kernel.boot import make_context
from earlymm.kernel.consts import PROFILES
from earlymm.kernel.context import KernelConfig
from earlymm.kernel.trampoline import find_trampoline_placement
from earlymm.platform.pc import MachineConfig
from earlymm.tools.midboot.bootinfo import console_e820, effective_e820
from earlymm.tools.midboot.enumerate import Enumeration, Leaf, enumerate_space, qemu_tlb_lines
from earlymm.tools.midboot.fixture import Fixture, Stop

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
MIDBOOT = sorted(p for p in FIXTURES.glob("midboot-*") if p.is_dir())
PAGE_OFFSET = 0xFFFF_8880_0000_0000  # 4-level, nokaslr (spec §2.3)
PAGE_OFFSET_L5 = 0xFF11_0000_0000_0000  # 5-level, nokaslr (page_64_types.h __PAGE_OFFSET_BASE_L5)
START_KERNEL_MAP = 0xFFFF_FFFF_8000_0000
POOL_PAGES = 64  # EARLY_DYNAMIC_PAGE_TABLES
PS = 0x80


def five_level(fx: Fixture) -> bool:
    """The kernel ran with 5-level paging: QEMU's registers at the first stop (CR4.LA57) say so."""
    return bool(fx.stops[0].info["paging"] == "5-level")


def page_offset(fx: Fixture) -> int:
    return PAGE_OFFSET_L5 if five_level(fx) else PAGE_OFFSET


def va_bits(fx: Fixture) -> int:
    """Bits of a lower-half (identity) address: 56 with 5-level paging, else 47."""
    return 56 if five_level(fx) else 47


def maxmem(fx: Fixture) -> int:
    """MAXMEM = 1 << MAX_PHYSMEM_BITS: 52 bits with 5-level paging, else 46 (spec §2.3, §3.9)."""
    return 1 << (52 if five_level(fx) else 46)


def space(fx: Fixture, stop: Stop, root: str = "cr3") -> Enumeration:
    return enumerate_space(stop.memory(), stop.regs, fx.features, root=stop.roots[root])


def check_stop_basics(fx: Fixture, stop: Stop) -> list[str]:
    bad = []
    if int(stop.info["rip"], 16) != fx.symbol(stop.name):
        bad.append(f"{stop.name}: RIP {stop.info['rip']} is not the symbol's address {fx.symbol(stop.name):#x}")
    if not 0 <= stop.next_early_pgt <= POOL_PAGES:
        bad.append(f"{stop.name}: next_early_pgt {stop.next_early_pgt} outside 0..{POOL_PAGES}")
    want_cr3 = "init_top_pgt" if stop.name == "idt_setup_early_pf" else "early_top_pgt"
    if stop.regs[1] & ~0xFFF != stop.roots[want_cr3]:
        bad.append(f"{stop.name}: CR3 {stop.regs[1]:#x} is not {want_cr3} {stop.roots[want_cr3]:#x}")
    for root in ("cr3", "early_top_pgt", "init_top_pgt"):
        en = space(fx, stop, root)
        # Until x86_64_start_kernel's clear_page(init_top_pgt), that page holds head_64.S's CONFIG_XEN_PV
        # prefill — a 4-level table ([0] → level3_ident_pgt → level2_ident_pgt's 2 MiB entries). Read as
        # a 5-level table (not in use yet) its PMD entries are PDPTEs with PS and reserved address bits.
        stale = five_level(fx) and root == "init_top_pgt" and stop.name == "x86_64_start_kernel"
        bad += [f"{stop.name}/{root}: {n.kind} {n.start:#x}: {n.detail}" for n in en.notes
                if not (stale and n.kind == "reserved-bits")]
        missing = en.tables - {pfn << 12 for pfn in stop.pages}
        if missing:
            bad.append(f"{stop.name}/{root}: tables not recorded: {sorted(map(hex, missing))[:5]}")
    return bad


def pool_pages_linked(fx: Fixture, stop: Stop) -> int:
    """Distinct early_dynamic_pgts pages reachable from early_top_pgt (the kernel's tables, not its counter)."""
    pool = fx.symbol("early_dynamic_pgts") - START_KERNEL_MAP + int(stop.info["phys_base"], 16)
    en = space(fx, stop, "early_top_pgt")
    return len({t for t in en.tables if pool <= t < pool + POOL_PAGES * 4096})


def tlb_lines(leaves: list[Leaf]) -> list[str]:
    return qemu_tlb_lines(leaves)


def check_direct_map(fx: Fixture, stop: Stop) -> list[str]:
    """After init_mem_mapping: every direct-map leaf maps VA − PAGE_OFFSET, and the direct map covers every
    page of the RAM the kernel printed (plus the ISA range, mapped regardless, spec §3.8)."""
    bad = []
    covered: list[tuple[int, int]] = []
    base = page_offset(fx)
    for lf in space(fx, stop).leaves:
        if base <= lf.va < base + maxmem(fx):
            if lf.pa != lf.va - base:
                bad.append(f"direct-map leaf {lf.va:#x} maps {lf.pa:#x}")
            covered.append((lf.pa, lf.pa + lf.size))
    covered.sort()
    merged: list[list[int]] = []
    for lo, hi in covered:
        if merged and lo <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    ram = [(e.start, e.end) for e in effective_e820(fx.console) if e.kind == "usable"] + [(0, 0x10_0000)]
    for start, end in ram:
        lo, hi = (start + 0xFFF) & ~0xFFF, end & ~0xFFF
        if lo < hi and not any(a <= lo and hi <= b for a, b in merged):
            bad.append(f"RAM [{lo:#x}, {hi:#x}) is not all in the direct map")
    return bad


def check_zero_page_e820(fx: Fixture) -> list[str]:
    """The firmware's map, twice: as the kernel printed it and as the loader's zero page holds it."""
    first = fx.stops[0]
    printed = [e.to_json() for e in console_e820(fx.console)["BIOS-e820"]]
    given = first.boot_params["e820_table"]
    return [] if printed == given else [f"console e820 {printed} != zero page e820 {given}"]


def check_tlb(fx: Fixture, stop: Stop) -> list[str]:
    mine = tlb_lines(space(fx, stop).leaves)
    text = stop.tlb_text()
    qemu = [ln.rstrip("\r") for ln in text.split("\n") if ln.strip()]
    if len(parse_info_tlb(text)) != len(qemu):
        return [f"{stop.name}: info tlb has lines that are not leaves"]
    if mine != qemu:
        diff = next(i for i, (a, b) in enumerate(zip([*mine, ""], [*qemu, ""], strict=False)) if a != b)
        return [f"{stop.name}: line {diff}: enumerator {mine[diff:diff + 1]}, QEMU {qemu[diff:diff + 1]} "
                f"({len(mine)} vs {len(qemu)} lines)"]
    return []


def entry(stop: Stop, table: int, index: int) -> int:
    return int(struct.unpack_from("<Q", stop.pages[table >> 12], 8 * index)[0])


def model_placement(fx: Fixture) -> int:
    """The model's ``find_trampoline_placement`` (6.1 pgtable_64.c) on the fixture's inputs: the loader's zero
    page the kernel was entered with (RDI at x86_64_start_kernel: its e820 table, its EFI loader signature)
    and the 256 bytes of the BIOS data area read from the guest, written over the model's own."""
    e820 = tuple(Region(e.start, e.end, RegionType(e.model_kind)) for e in fx.firmware_e820)
    ctx = make_context(MachineConfig(e820=e820, features=Features(la57=True, pks=False)),
                       KernelConfig(PROFILES["current"], decompressor="merged"))
    mem = ctx.platform.mem
    mem.write(ctx.platform.entry.boot_data,
              gzip.decompress((fx.path / "x86_64_start_kernel.boot_params.bin.gz").read_bytes()))
    mem.write(0x400, fx.bda())
    return find_trampoline_placement(ctx)
