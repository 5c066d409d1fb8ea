"""``init_mem_mapping`` and its helpers (arch/x86/mm/init.c @ v3.9; 6.x ``memory_map_top_down``):
build the final direct map into ``init_level4_pgt`` top-down, then ``load_cr3`` it (spec §3.8)."""

from __future__ import annotations

from dataclasses import dataclass

from earlymm.arch.addr import PhysAddr
from earlymm.arch.cpuid import Vendor
from earlymm.arch.flags import Cr4
from earlymm.kernel.consts import _PAGE_GLOBAL, _PAGE_NX, ISA_END_ADDRESS, PAGE_SHIFT, PAGE_SIZE, PMD_SIZE, PUD_SIZE
from earlymm.kernel.context import KernelContext
from earlymm.kernel.cpufeature import X86Feature, boot_cpu_has, x86_cpuid_vendor
from earlymm.kernel.events import DirectMapRange, Note
from earlymm.kernel.init_64 import PG_LEVEL_1G, PG_LEVEL_2M, flush_tlb_all, kernel_physical_mapping_init
from earlymm.kernel.mm_state import MmState


def set_in_cr4(ctx: KernelContext, mask: int) -> None:
    """``set_in_cr4``: read-modify-write CR4 through ``pv_ops.cpu``."""
    ctx.pv.cpu.write_cr4(ctx.pv.cpu.read_cr4() | mask)


def pti_check_boottime_disable(ctx: KernelContext) -> bool:
    """6.1 ``pti_check_boottime_disable`` (arch/x86/mm/pti.c): ``pti=on|off|auto``, ``nopti`` and
    ``mitigations=off`` on the command line; in auto mode PTI is on where the CPU has the Meltdown bug.
    Difference: ``cpu_set_bug_bits``' whitelists are reduced to the vendor — AMD (and Hygon) CPUs are
    NO_MELTDOWN, Intel CPUs are taken to have the bug (the model's CPUs report no ARCH_CAP_RDCL_NO)."""
    words = ctx.cpu.read(ctx.sym("boot_command_line"), 2048).split(b"\0", 1)[0].decode("latin-1").split()
    if "nopti" in words or "pti=off" in words or "mitigations=off" in words:
        return False
    if "pti=on" in words:
        return True
    return x86_cpuid_vendor(ctx.cpu) is Vendor.INTEL


def probe_page_size_mask(ctx: KernelContext, st: MmState) -> None:
    """Model of ``probe_page_size_mask()`` (arch/x86/mm/init.c @ v3.9 and 6.1: there 1 GiB pages need
    PSE, and PTI keeps _PAGE_GLOBAL out of ``__default_kernel_pte_mask``)."""
    cpu = ctx.cpu
    pse, pge = boot_cpu_has(cpu, X86Feature.PSE), boot_cpu_has(cpu, X86Feature.PGE)
    if pse:
        st.page_size_mask |= PG_LEVEL_2M
    if boot_cpu_has(cpu, X86Feature.GBPAGES) and (pse or not ctx.profile.gbpages_need_pse):  # direct_gbpages
        st.page_size_mask |= PG_LEVEL_1G
    if pse:
        set_in_cr4(ctx, int(Cr4.PSE))
    if pge:
        set_in_cr4(ctx, int(Cr4.PGE))
        st.supported_pte_mask |= _PAGE_GLOBAL
    else:
        st.supported_pte_mask &= ~_PAGE_GLOBAL
    if not boot_cpu_has(cpu, X86Feature.NX):
        st.supported_pte_mask &= ~_PAGE_NX
    st.default_kernel_pte_mask = st.supported_pte_mask
    if ctx.profile.pti and st.pti:
        st.default_kernel_pte_mask &= ~_PAGE_GLOBAL  # "except when with PTI where the kernel is mostly non-Global"


@dataclass(frozen=True, slots=True)
class MapRange:
    """``struct map_range``: ``[start, end)`` to be mapped with the page sizes ``mask`` allows."""

    start: int
    end: int
    mask: int

    @property
    def page_size(self) -> str:
        return "1G" if self.mask & PG_LEVEL_1G else "2M" if self.mask & PG_LEVEL_2M else "4K"


def split_mem_range(st: MmState, start: int, end: int, merges_first: bool = False) -> list[MapRange]:
    """Up to five ranges: 4K head, 2M to the first 1G boundary, 1G, 2M tail, 4K tail; then upgraded
    where the enclosing block is all RAM, and merged (spec §3.8)."""
    mask = st.page_size_mask
    mr: list[MapRange] = []

    def save(s: int, e: int, m: int) -> None:
        if s < e:
            mr.append(MapRange(s << PAGE_SHIFT, e << PAGE_SHIFT, m))

    limit = end >> PAGE_SHIFT
    pmd_pfns, pud_pfns = PMD_SIZE >> PAGE_SHIFT, PUD_SIZE >> PAGE_SHIFT
    def rup(v: int, a: int) -> int:
        return (v + a - 1) // a * a

    def rdown(v: int, a: int) -> int:
        return v // a * a
    pos = start
    s, e = start >> PAGE_SHIFT, min(rup(pos, PMD_SIZE) >> PAGE_SHIFT, limit)
    if s < e:
        save(s, e, 0)
        pos = e << PAGE_SHIFT
    s, e = rup(pos, PMD_SIZE) >> PAGE_SHIFT, min(rup(pos, PUD_SIZE) >> PAGE_SHIFT, rdown(limit, pmd_pfns))
    if s < e:
        save(s, e, mask & PG_LEVEL_2M)
        pos = e << PAGE_SHIFT
    s, e = rup(pos, PUD_SIZE) >> PAGE_SHIFT, rdown(limit, pud_pfns)
    if s < e:
        save(s, e, mask & (PG_LEVEL_2M | PG_LEVEL_1G))
        pos = e << PAGE_SHIFT
    s, e = rup(pos, PMD_SIZE) >> PAGE_SHIFT, rdown(limit, pmd_pfns)
    if s < e:
        save(s, e, mask & PG_LEVEL_2M)
        pos = e << PAGE_SHIFT
    save(pos >> PAGE_SHIFT, limit, 0)

    def adjust(ranges: list[MapRange]) -> list[MapRange]:  # adjust_range_page_size_mask
        out = []
        for r in ranges:
            m = r.mask
            if mask & PG_LEVEL_2M and not m & PG_LEVEL_2M:
                lo, hi = rdown(r.start, PMD_SIZE), rup(r.end, PMD_SIZE)
                if st.memblock.is_region_memory(lo, hi - lo):
                    m |= PG_LEVEL_2M
            if mask & PG_LEVEL_1G and not m & PG_LEVEL_1G:
                lo, hi = rdown(r.start, PUD_SIZE), rup(r.end, PUD_SIZE)
                if st.memblock.is_region_memory(lo, hi - lo):
                    m |= PG_LEVEL_1G
            out.append(MapRange(r.start, r.end, m))
        return out

    def merge(ranges: list[MapRange]) -> list[MapRange]:  # "try to merge same page size and continuous"
        merged: list[MapRange] = []
        for r in ranges:
            if merged and merged[-1].end == r.start and merged[-1].mask == r.mask:
                merged[-1] = MapRange(merged[-1].start, r.end, r.mask)
            else:
                merged.append(r)
        return merged

    # v3.9 merges first and adjusts the merged ranges (a 3.11 fix, commit 7de3d66b, swapped the two after
    # the mem=2G trouble); 6.1 adjusts, then merges.
    return adjust(merge(mr)) if merges_first else merge(adjust(mr))


def init_memory_mapping(ctx: KernelContext, st: MmState, start: int, end: int) -> int:
    ret = 0
    for r in split_mem_range(st, start, end, ctx.profile.split_merge_before_adjust):
        ctx.emit(DirectMapRange(r.start, r.end, r.page_size))
        ret = kernel_physical_mapping_init(ctx, st, r.start, r.end, r.mask)
    st.pfn_mapped.append((start >> PAGE_SHIFT, ret >> PAGE_SHIFT))  # add_pfn_range_mapped
    st.max_pfn_mapped = max(st.max_pfn_mapped, ret >> PAGE_SHIFT)
    return ret >> PAGE_SHIFT


def init_range_memory_mapping(ctx: KernelContext, st: MmState, r_start: int, r_end: int) -> int:
    mapped = 0
    for ms, me in st.memblock.mem_ranges():
        start, end = min(max(ms, r_start), r_end), min(max(me, r_start), r_end)
        if start >= end:
            continue
        # A range overlapping the BRK buffer must take its tables from memblock instead.
        st.can_use_brk_pgt = max(start, st.pgt_buf_end << PAGE_SHIFT) >= min(end, st.pgt_buf_top << PAGE_SHIFT)
        init_memory_mapping(ctx, st, start, end)
        mapped += end - start
        st.can_use_brk_pgt = True
    return mapped


def init_mem_mapping(ctx: KernelContext, st: MmState) -> None:
    if ctx.profile.pti:
        st.pti = pti_check_boottime_disable(ctx)
        if st.pti:
            ctx.emit(Note("pti_check_boottime_disable: page-table isolation on (the direct map loses _PAGE_GLOBAL)"))
    probe_page_size_mask(ctx, st)
    end = st.max_pfn << PAGE_SHIFT
    init_memory_mapping(ctx, st, 0, ISA_END_ADDRESS)  # the ISA range, regardless of holes
    prof = ctx.profile
    addr = st.memblock.find_in_range(ISA_END_ADDRESS, end, PMD_SIZE,
                                     PMD_SIZE if prof.real_end_pmd_aligned else PAGE_SIZE)
    real_end = addr + PMD_SIZE
    step = PMD_SIZE
    st.max_pfn_mapped = 0
    st.min_pfn_mapped = real_end >> PAGE_SHIFT
    last_start = real_end
    mapped_total = 0
    while last_start > ISA_END_ADDRESS:
        start = max((last_start - 1) // step * step, ISA_END_ADDRESS) if last_start > step else ISA_END_ADDRESS
        new = init_range_memory_mapping(ctx, st, start, last_start)
        last_start = start
        st.min_pfn_mapped = last_start >> PAGE_SHIFT
        if prof.step_grows_on_new_ram:
            if new > mapped_total:
                step <<= prof.step_shift
            mapped_total += new
        else:
            mapped_total += new
            if mapped_total >= step:
                step <<= prof.step_shift
    if real_end < end:
        init_range_memory_mapping(ctx, st, real_end, end)
    lay = ctx.layout
    ctx.pv.mmu.write_cr3(PhysAddr(ctx.pa_symbol("init_top_pgt")))  # load_cr3(swapper_pg_dir)
    flush_tlb_all(ctx)
    ctx.emit(Note(f"load_cr3({ctx.profile.init_pgt}) at {ctx.pa(lay.init_pgt):#x}: the early tables are retired"))
