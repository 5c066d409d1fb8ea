"""The decompressor's 4↔5-level switch (issue 10; spec §1.8, §4; seed 003).

Expected values come from the architecture (CR4.LA57 can change only with paging off; a far return to a
32-bit code segment keeps 32 bits of the target) and from Debian 6.1's arch/x86/boot/compressed/
pgtable_64.c rules, worked by hand in the comments — never from the model's output.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest

from earlymm.arch.flags import Cr4
from earlymm.arch.modes import Features, PagingMode
from earlymm.kernel.boot import BootResult, boot, make_context
from earlymm.kernel.consts import PROFILES, START_KERNEL_MAP
from earlymm.kernel.context import KernelConfig, KernelContext
from earlymm.kernel.phases import BootOutcome, Phase
from earlymm.kernel.trampoline import find_trampoline_placement
from earlymm.platform import bootparams as bp
from earlymm.platform.pc import MachineConfig, pc_e820

GiB, MiB, TiB = 1 << 30, 1 << 20, 1 << 40
VARIANTS = ("v4.14", "rfc", "merged")
PAGE_OFFSET_L5 = 0xFF11_0000_0000_0000  # page_offset_base with 5-level paging (spec §4, page_64_types.h)
PAGE_OFFSET_L4 = 0xFFFF_8880_0000_0000


def machine(*, mem: int = 8 * GiB, la57: bool = True, **kw: Any) -> MachineConfig:
    return MachineConfig(e820=tuple(kw.pop("e820", None) or pc_e820(mem)),
                         features=Features(la57=la57, pks=False), **kw)


def run(variant: str = "merged", until: Phase | None = Phase.DECOMPRESSOR, **kw: Any) -> BootResult:
    return boot(machine(**kw), KernelConfig(PROFILES["current"], decompressor=variant), until=until, trace=True)


def five_level(r: BootResult) -> bool:
    return bool(r.ctx.cpu.regs.cr4 & Cr4.LA57) and r.ctx.cpu.mmu.mode is PagingMode.LONG5


def notes(r: BootResult) -> str:
    return "\n".join(str(getattr(e, "what", "")) for e in r.ctx.trace.events)


# -- the three variants, below and above 4 GiB -----------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("at, mem", [(16 * MiB, 4 * GiB), (6 * GiB, 8 * GiB), (1 * TiB, TiB + 8 * GiB)])
def test_variants_below_and_above_4g(variant: str, at: int, mem: int) -> None:
    r = run(variant, kernel_at=at, mem=mem)
    if variant == "v4.14" and at >= 4 * GiB:
        # lretq to a 32-bit code segment: EIP = the low 32 bits of compatible_mode's address
        assert r.outcome is BootOutcome.LOST_CONTROL, r.reason
        assert r.phase == "decompressor"
        assert "32-bit EIP cannot hold an address above 4 GiB" in r.reason
        assert f"{(r.ctx.decompressor_layout.compatible_mode & 0xFFFF_FFFF):#x}" in r.reason
        assert not r.ctx.cpu.regs.cr4 & Cr4.LA57
        return
    assert r.outcome is BootOutcome.STOPPED, r.reason
    assert five_level(r)
    # the decompressor leaves identity-mapped code for the kernel: startup_64 is fetched where it lies
    assert r.ctx.cpu.mmu.probe(at, 2).pa == at


def test_rfc_above_4g_pushes_land_at_the_truncated_esp() -> None:
    r = run("rfc", kernel_at=6 * GiB)
    assert five_level(r)
    assert "the 32-bit pushes went to ESP" in notes(r)


def test_merged_saves_and_restores_the_trampoline_memory() -> None:
    cfg = machine()
    kc = KernelConfig(PROFILES["current"], decompressor="merged")
    ctx = make_context(cfg, kc)
    before = ctx.platform.mem.read(0x9D000, 0x2000)  # 6.1's placement on this map (see the placement tests)
    r = boot(cfg, kc, until=Phase.DECOMPRESSOR, trace=True)
    assert five_level(r)
    assert r.ctx.platform.mem.read(0x9D000, 0x2000) == before
    lay = r.ctx.decompressor_layout
    # CR3 = the copy of the table built in the trampoline: PML5[0] → the loader's PML4 (_PAGE_TABLE_NOENC)
    assert r.ctx.cpu.regs.cr3 == lay.top_pgtable
    assert r.ctx.platform.mem.read_int(lay.top_pgtable, 8) == cfg.pgtables_at | 0x63 | 0x4


@pytest.mark.parametrize("variant", ("rfc", "merged"))
def test_whole_boot_in_5_level_above_4g(variant: str) -> None:
    r = run(variant, until=None, kernel_at=6 * GiB)
    assert r.outcome is BootOutcome.BOOTED, r.reason
    assert five_level(r)
    assert r.ctx.page_offset == PAGE_OFFSET_L5
    failed = [c.name for c in r.observer.final() if not c.ok]
    assert not failed


def test_v414_below_4g_boots_the_whole_kernel() -> None:
    r = run("v4.14", until=None)
    assert r.outcome is BootOutcome.BOOTED, r.reason
    assert five_level(r) and r.ctx.page_offset == PAGE_OFFSET_L5


# -- directions and CPUs ---------------------------------------------------------------------------------
def test_no5lvl_on_a_5_level_loader_switches_to_4_level() -> None:
    r = run("merged", until=None, loader_paging=5,
            cmdline="root=/dev/sda1 ro console=ttyS0 no5lvl")
    assert r.outcome is BootOutcome.BOOTED, r.reason
    assert not r.ctx.cpu.regs.cr4 & Cr4.LA57 and r.ctx.cpu.mmu.mode is PagingMode.LONG4
    assert r.ctx.page_offset == PAGE_OFFSET_L4
    assert "5→4-level" in notes(r)


def test_5_level_loader_needs_no_trampoline() -> None:
    r = run("merged", loader_paging=5)
    assert five_level(r)
    assert "no trampoline" in notes(r)


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_cpu_without_la57_stays_4_level(variant: str) -> None:
    r = run(variant, until=None, la57=False)
    assert r.outcome is BootOutcome.BOOTED, r.reason
    assert not r.ctx.cpu.regs.cr4 & Cr4.LA57
    assert r.ctx.page_offset == PAGE_OFFSET_L4
    assert "CPU LA57 no" in notes(r)


def test_ram_above_64_tib_is_mapped() -> None:
    r = run("merged", until=None, mem=80 * TiB)
    assert r.outcome is BootOutcome.BOOTED, r.reason
    for pa in (70 * TiB, 80 * TiB + 512 * MiB, 64 * TiB + 0x1234000):  # RAM above 4 GiB ends at 80 TiB + 1 GiB
        res = r.ctx.cpu.mmu.probe(PAGE_OFFSET_L5 + pa)
        assert res.ok and res.pa == pa


# -- find_trampoline_placement (6.1 pgtable_64.c) --------------------------------------------------------
def placement(**kw: Any) -> int:
    ctx = make_context(machine(**kw), KernelConfig(PROFILES["current"], decompressor="merged"))
    return find_trampoline_placement(ctx)


@pytest.mark.parametrize("bda, ebda, efi, want", [
    # SeaBIOS on QEMU: 639 KiB (0x9fc00 > BIOS_START_MAX 0x9f000 → 0x9f000), EBDA 0x9fc0:0 not below it
    (None, None, "", 0x9D000),
    (512, 0, "", 0x7E000),        # 0x80000 is within [128K, 640K]: under it
    (127, 0, "", 0x9D000),        # 0x1fc00 < BIOS_START_MIN: insane, use the maximum
    (0xFFFF, 0, "", 0x9D000),     # 64 MiB of base memory: above the maximum
    (0, 0, "", 0x9D000),          # an empty BDA
    (639, 0x2000, "", 0x9D000),   # EBDA at exactly 128K: not *above* BIOS_START_MIN, ignored
    (639, 0x2001, "", 0x1E000),   # EBDA at 0x20010: taken, rounded down to 0x20000
    (639, 0x9E81, "", 0x9C000),   # EBDA at 0x9e810 → 0x9e000
    (512, 0x9000, "", 0x7E000),   # EBDA at 0x90000 above the base memory: ignored
    (512, 0x4000, "EL64", 0x9D000),  # an EFI boot: the legacy BDA is not read at all
    (512, 0x4000, "EL32", 0x9D000),
])
def test_placement_from_bda_and_ebda(bda: int | None, ebda: int | None, efi: str, want: int) -> None:
    assert placement(bda_base_kib=bda, ebda_segment=ebda, efi_loader=efi) == want


def _with_boot_e820(entries: list[tuple[int, int, int]]) -> int:
    """The placement for a boot_params e820 table written as given (order kept, as a loader may)."""
    ctx: KernelContext = make_context(machine(bda_base_kib=639, ebda_segment=0),
                                      KernelConfig(PROFILES["current"], decompressor="merged"))
    b = ctx.platform.entry.boot_data
    mem = ctx.platform.mem
    mem.write(b + bp.E820_ENTRIES, bytes([len(entries)]))
    mem.write(b + bp.E820_TABLE, b"".join(struct.pack("<QQI", a, s, t) for a, s, t in entries))
    return find_trampoline_placement(ctx)


def test_placement_lowered_to_the_end_of_low_ram() -> None:
    # bios_start 0x9f000 lies beyond the RAM entry [0, 0x60000): new = 0x60000, the trampoline under it
    assert _with_boot_e820([(0, 0x60000, 1), (0x60000, 0x40000, 2), (0x100000, 0x7FF00000, 1)]) == 0x5E000


def test_placement_skips_an_entry_too_small_for_8k() -> None:
    # scanned from the last entry: [0x50000, +0x1000) ends at 0x51000 but 0x4f000 < 0x50000 (too small),
    # so [0, 0x50000) is used: 0x50000 - 0x2000
    assert _with_boot_e820([(0, 0x50000, 1), (0x50000, 0x1000, 1), (0x51000, 0x4F000, 2)]) == 0x4E000


def test_placement_skips_non_ram_and_higher_entries() -> None:
    # reserved [0x80000, 0xa0000) and everything at or above bios_start are skipped; RAM [0, 0x80000) used
    assert _with_boot_e820([(0, 0x80000, 1), (0x80000, 0x20000, 2), (0x9F000, 0x1000, 1)]) == 0x7E000


def test_placement_underflow_guard_is_unsigned() -> None:
    # the last entry [0, 0x1000) ends below 8 KiB: new - TRAMPOLINE_32BIT_SIZE wraps to ~2^64, which is
    # not below the entry, but above bios_start: "protect against underflow" breaks out with bios_start
    # unchanged (0x9f000), even though [0x10000, 0x50000) earlier in the table would fit
    assert _with_boot_e820([(0x10000, 0x40000, 1), (0, 0x1000, 1)]) == 0x9D000


def test_placement_with_no_ram_below() -> None:
    assert _with_boot_e820([(0x100000, 0x7FF00000, 1)]) == 0x9D000


def test_5_level_switchover_identity_map_links_pgd_and_p4d_twice() -> None:
    """head64.c @ v6.1:241-256 with la57: pud, pmd, then p4d from early_dynamic_pgts (next_early_pgt 0 → 3);
    pgd[i], pgd[i + 1] → p4d and p4d[k % 512], p4d[(k + 1) % 512] → pud, all _KERNPG_TABLE (0x63), with
    i = (physaddr >> 48) % 512 and k = physaddr >> 39. At 6 GiB: i = 0, k = 0."""
    at = 6 * GiB
    r = run(until=Phase.STARTUP_64, kernel_at=at)
    assert five_level(r)
    lay, mem = r.ctx.layout, r.ctx.platform.mem
    delta = at - (lay.text - START_KERNEL_MAP)
    pool = lay["early_dynamic_pgts"] - START_KERNEL_MAP + delta
    pud, p4d = pool, pool + 2 * 4096
    top = lay.top_pgt - START_KERNEL_MAP + delta
    assert mem.read_u64(top) == mem.read_u64(top + 8) == p4d + 0x63
    assert {i: mem.read_u64(p4d + 8 * i) for i in range(512) if mem.read_u64(p4d + 8 * i)} == \
        {0: pud + 0x63, 1: pud + 0x63}
    assert r.ctx.rd(r.ctx.sym("next_early_pgt"), 4) == 3
