"""The decisions of the kernel model, each with one deliberate change (a mutant), for ``tests/mutation/run.py``.

Every mutant edits the model's source text: ``old`` must occur exactly once in its file (the runner refuses
otherwise, so a refactoring that moves the code makes the list fail loudly rather than test nothing), and
``new`` is what it becomes. ``focus`` names the tests expected to catch it — run first, for speed; when they
all pass the runner widens to the kernel tier and, if asked, to the whole default suite. The golden boots
(tests/kernel/test_golden_boot.py) are never run: they are a refactoring guard recorded from the model
itself and do not count as catching a decision change.

``equivalent`` marks a change no boot of the native model can observe, with the reason; such mutants are
listed so the list is complete, and run only with ``--all``.
"""

from __future__ import annotations

from dataclasses import dataclass

K = "earlymm/kernel/"
STARTUP = "tests/kernel/test_startup_64.py"
EARLY_PF = "tests/kernel/test_early_pf.py"
IMM = "tests/kernel/test_init_mem_mapping.py"
DECISIONS = "tests/kernel/test_decisions.py"
BUILDERS = "tests/kernel/test_direct_map_builders.py"
LOWMEM = "tests/kernel/test_low_memory.py"
REAL = "tests/midboot/test_compare.py::test_model_matches_the_real_kernel"
REAL_BYTES = "tests/midboot/test_real_kernel_details.py"


@dataclass(frozen=True)
class Edit:
    path: str
    old: str
    new: str


@dataclass(frozen=True)
class Mutant:
    id: str
    where: str  # file:function
    what: str  # the decision, and how the mutant changes it
    edits: tuple[Edit, ...]
    focus: tuple[str, ...] = ()
    equivalent: str = ""  # why no native boot can tell (run only with --all)


def m(id: str, where: str, what: str, path: str, old: str, new: str, *focus: str, equivalent: str = "") -> Mutant:
    return Mutant(id, where, what, (Edit(K + path, old, new),), focus, equivalent)


MUTANTS: tuple[Mutant, ...] = (
    # ---- head_64.py: startup_64 / __startup_64 -------------------------------------------------------
    m("startup.bad_address_alignment", "head_64.py:startup_64", "no bad_address spin for a load address that is "
      "not 2 MiB aligned", "head_64.py", "if load_delta & (PMD_SIZE - 1):", "if False:",
      f"{STARTUP}::test_unaligned_load_spins_in_bad_address"),
    m("startup.bad_address_maxphys", "head_64.py:startup_64", "no bad_address spin for _text beyond "
      "MAX_PHYSMEM_BITS", "head_64.py", "if p >= ctx.maxmem:", "if False:", DECISIONS),
    m("startup.fixup_top_511", "head_64.py:startup_64", "early_top_pgt[511] not fixed up by load_delta",
      "head_64.py", "addq(top_511, load_delta)  # head_64.S", "addq(top_511, 0)  # head_64.S",
      f"{STARTUP}::test_relocated_kernel_sets_phys_base_and_fixes_the_high_mapping"),
    m("startup.fixup_l3_510", "head_64.py:startup_64", "level3_kernel_pgt[510] not fixed up", "head_64.py",
      "(g.ptrs_per_pud - 2), load_delta)", "(g.ptrs_per_pud - 2), 0)",
      f"{STARTUP}::test_relocated_kernel_sets_phys_base_and_fixes_the_high_mapping"),
    m("startup.fixup_l3_511", "head_64.py:startup_64", "level3_kernel_pgt[511] (→ level2_fixmap_pgt) not fixed up",
      "head_64.py", "(g.ptrs_per_pud - 1), load_delta)", "(g.ptrs_per_pud - 1), 0)",
      f"{EARLY_PF}::test_relocated_kernel_merged_boots", DECISIONS),
    m("startup.fixup_fixmap", "head_64.py:startup_64", "level2_fixmap_pgt's level1_fixmap_pgt links not fixed up",
      "head_64.py", "addq(phys(\"level2_fixmap_pgt\") + g.entry_size * idx, load_delta)",
      "addq(phys(\"level2_fixmap_pgt\") + g.entry_size * idx, 0)", DECISIONS),
    m("startup.ident_pgd_alias", "head_64.py:_identity_map", "PGD[i+1] not pointed at the PUD page", "head_64.py",
      "ctx.wr(pgd + w * (i + 1), below + _KERNPG_TABLE)", "ctx.wr(pgd + w * (i + 1), 0)",
      f"{STARTUP}::test_kernel_at_16m_image_24m"),
    m("startup.ident_pud_wrap", "head_64.py:_identity_map", "PUD[(j+1) % 512] written unmasked (PUD[j+1])",
      "head_64.py", "j + 1 if rfc else (j + 1) % g.ptrs_per_pud", "j + 1", f"{STARTUP}::test_kernel_at_512g_minus_2m"),
    m("startup.ident_pud_alias", "head_64.py:_identity_map", "PUD[j+1] not pointed at the PMD page", "head_64.py",
      "ctx.wr(pud + w * (j + 1 if rfc else (j + 1) % g.ptrs_per_pud), pmd + _KERNPG_TABLE)",
      "ctx.wr(pud + w * (j + 1 if rfc else (j + 1) % g.ptrs_per_pud), 0)",
      f"{STARTUP}::test_kernel_at_1g_minus_2m_image_6m"),
    m("startup.ident_link_flags", "head_64.py:_identity_map", "switchover links with _PAGE_TABLE (US) instead of "
      "_KERNPG_TABLE", "head_64.py", "ctx.wr(pgd + w * i, below + _KERNPG_TABLE)", "ctx.wr(pgd + w * i, below + 0x67)",
      f"{STARTUP}::test_kernel_at_16m_image_24m"),
    m("startup.ident_global", "head_64.py", "identity PMDs with G (__PAGE_KERNEL_LARGE_EXEC, no ~_PAGE_GLOBAL)",
      "head_64.py", "IDENT_PMD_FLAGS = __PAGE_KERNEL_LARGE_EXEC & ~_PAGE_GLOBAL",
      "IDENT_PMD_FLAGS = __PAGE_KERNEL_LARGE_EXEC",
      f"{STARTUP}::test_no_identity_entry_is_global_and_kernel_mapping_is"),
    m("startup.ident_count", "head_64.py:_identity_map", "one identity PMD more than the image spans (-v9: only "
      "the kernel's PMDs)", "head_64.py", "count = ((end_phys - 1) >> g.pmd_shift) - (p >> g.pmd_shift) + 1",
      "count = ((end_phys - 1) >> g.pmd_shift) - (p >> g.pmd_shift) + 2", f"{STARTUP}::test_kernel_at_16m_image_24m"),
    m("startup.rfc_ident_all_512", "head_64.py:_identity_map", "the RFC fills only the image's identity PMDs, "
      "not all 512", "head_64.py", "if rfc:\n        count = g.ptrs_per_pmd", "if False:\n        count = 0",
      DECISIONS),
    m("startup.ident_mask_supported", "head_64.py:_identity_map", "6.1 identity PMD flags not masked with "
      "__supported_pte_mask", "head_64.py", "flags &= ctx.rd(phys(\"__supported_pte_mask\"))", "flags &= -1",
      equivalent="__supported_pte_mask is still ~0 when __startup_64 runs (x86_configure_nx comes in setup_arch)"),
    m("startup.trim_kernel_pmds", "head_64.py:startup_64", "6.1 does not make level2_kernel_pgt entries outside "
      "_text.._end not-present", "head_64.py", "if prof.trim_kernel_pmds and not first <= i <= last:",
      "if False:", f"{REAL}[midboot-qemu64-512m-startup_64]"),
    m("startup.trim_last_pmd", "head_64.py:startup_64", "6.1 trims the PMD at pmd_index(_end) (loop to "
      "pmd_index(_end - 1), not 'i <= pmd_index(_end)')", "head_64.py",
      "first, last = g.pmd_index(lay.text), g.pmd_index(lay.end)",
      "first, last = g.pmd_index(lay.text), g.pmd_index(lay.end - 1)",
      f"{STARTUP}::test_61_keeps_level2_kernel_pgt_through_pmd_index_of_a_2m_aligned_end"),
    m("startup.relocate_l2", "head_64.py:startup_64", "level2_kernel_pgt entries not relocated by load_delta",
      "head_64.py", "ctx.wr(l2 + g.entry_size * i, e + load_delta)", "ctx.wr(l2 + g.entry_size * i, e)",
      f"{STARTUP}::test_relocated_kernel_sets_phys_base_and_fixes_the_high_mapping"),
    m("startup.phys_base", "head_64.py:startup_64", "phys_base not advanced by load_delta", "head_64.py",
      "addq(phys(\"phys_base\"), load_delta)", "addq(phys(\"phys_base\"), 0)",
      f"{STARTUP}::test_relocated_kernel_sets_phys_base_and_fixes_the_high_mapping"),
    m("startup.nx_in_early_pmd_flags", "head_64.py:_common_tail", "NX never added to early_pmd_flags",
      "head_64.py", "if has_nx or ctx.config.force_nx:", "if ctx.config.force_nx:",
      f"{EARLY_PF}::test_spec_test_vector_fault_at_0xffff880012345678"),
    m("startup.efer_nxe", "head_64.py:_common_tail", "EFER.NXE not set on an NX CPU", "head_64.py",
      "efer |= Efer.NXE", "efer = efer", f"{EARLY_PF}::test_default_boot_takes_its_first_faults_in_copy_bootdata"),
    m("startup.fixmap_order", "consts.py:CURRENT", "level2_fixmap_pgt[506]/[507] → level1_fixmap_pgt pages in the "
      "other order", "consts.py", "fixmap_pmds=(506, 507)", "fixmap_pmds=(507, 506)",
      f"{REAL}[midboot-qemu64-512m-startup_64]"),
    m("startup.l3_fixmap_link_flags", "image.py:install_image", "level3_kernel_pgt[511] linked with _KERNPG_TABLE "
      "(head_64.S: _PAGE_TABLE)", "image.py", "511: lp(\"level2_fixmap_pgt\") + _PAGE_TABLE}",
      "511: lp(\"level2_fixmap_pgt\") + _KERNPG_TABLE}", f"{REAL}[midboot-qemu64-512m-startup_64]"),
    # ---- head64.py: x86_64_start_kernel --------------------------------------------------------------
    m("start_kernel.first_reset", "head64.py:x86_64_start_kernel", "the identity map is not killed first",
      "head64.py", "reset_early_page_tables(ctx)  # \"Kill off the identity-map trampoline\"", "pass",
      f"{EARLY_PF}::test_default_boot_takes_its_first_faults_in_copy_bootdata"),
    m("start_kernel.clear_brk", "head64.py:clear_bss", "6.1's clear_bss leaves the BRK area as the loader left it",
      "head64.py", "if ctx.profile.clear_brk:", "if False:", DECISIONS),
    m("start_kernel.clear_brk_v39", "consts.py:V39", "v3.9's clear_bss zeroes the BRK area too (6.1 only)",
      "consts.py", "pf_init=\"early_trap_pf_init\", pf_entry=\"page_fault\", idt_stub_size=10, "
      "kernel_image_size=512 << 20,\n    clear_brk=False,",
      "pf_init=\"early_trap_pf_init\", pf_entry=\"page_fault\", idt_stub_size=10, "
      "kernel_image_size=512 << 20,\n    clear_brk=True,", DECISIONS),
    m("start_kernel.init_pgt_511", "head64.py:x86_64_start_kernel", "init_top_pgt[511] not copied from the early "
      "table", "head64.py", "ctx.wr(lay.init_pgt + last, ctx.rd(lay.top_pgt + last))", "ctx.wr(lay.init_pgt + last, 0)",
      f"{EARLY_PF}::test_default_boot_takes_its_first_faults_in_copy_bootdata"),
    m("start_kernel.global_flush", "head64.py:x86_64_start_kernel", "6.1 does not flush the decompressor's global "
      "translations", "head64.py", "if ctx.profile.global_flush_in_start_kernel:", "if False:",
      equivalent="the model's loader leaves CR4.PGE clear, so no global translation predates head_64's CR4 write "
                 "(which flushes everything); what the flush drops later (the image's global entries) is walked "
                 "again without a fault"),
    m("start_kernel.clear_init_pgt_late", "consts.py:CURRENT", "6.1 clears init_top_pgt after load_ucode_bsp (v3.9 "
      "order)", "consts.py", "real_end_pmd_aligned=True, clear_top_pgt_first=True,",
      "real_end_pmd_aligned=True, clear_top_pgt_first=False,",
      equivalent="nothing writes init_top_pgt between the two places; the page is zero in the image"),
    # ---- early_fault.py: reset_early_page_tables, early_make_pgtable, early_idt_handler ---------------
    m("early.reset_clears_511", "early_fault.py:reset_early_page_tables", "the reset clears entry 511 (the kernel "
      "mapping) too", "early_fault.py", "ctx.memset(top, 0, (ctx.pgt.ptrs_per_pgd - 1) * ctx.pgt.entry_size)",
      "ctx.memset(top, 0, ctx.pgt.ptrs_per_pgd * ctx.pgt.entry_size)",
      f"{EARLY_PF}::test_default_boot_takes_its_first_faults_in_copy_bootdata"),
    m("early.reset_keeps_counter", "early_fault.py:reset_early_page_tables", "next_early_pgt not reset to 0",
      "early_fault.py", "ctx.wr(ctx.sym(\"next_early_pgt\"), 0, 4)", "ctx.wr(ctx.sym(\"next_early_pgt\"), used, 4)",
      f"{EARLY_PF}::test_small_pool_resets_often_and_still_boots"),
    m("early.reset_no_cr3", "early_fault.py:reset_early_page_tables", "no CR3 reload (TLB keeps the old "
      "translations)", "early_fault.py",
      "ctx.pv.mmu.write_cr3(PhysAddr(ctx.pa_symbol(\"early_top_pgt\")))  # write_cr3(): the pv wrapper", "pass",
      f"{EARLY_PF}::test_small_pool_resets_often_and_still_boots", DECISIONS),
    m("early.pool_va_no_phys_base", "early_fault.py:_pool_va", "pool pages reached at phys + __START_KERNEL_map "
      "(no phys_base)", "early_fault.py", "return phys + START_KERNEL_MAP - ctx.phys_base",
      "return phys + START_KERNEL_MAP", f"{EARLY_PF}::test_relocated_kernel_merged_boots"),
    m("early.pool_overrun", "early_fault.py:_alloc", "the pool is declared full one page late",
      "early_fault.py", "if n >= ctx.config.pool_pages:", "if n > ctx.config.pool_pages:",
      f"{EARLY_PF}::test_small_pool_resets_often_and_still_boots"),
    m("early.no_reuse_pud", "early_fault.py:_table_below", "a present pgd entry is not reused: a new PUD page per "
      "fault", "early_fault.py", "    entry = ctx.rd(entry_p)\n    if entry:",
      "    entry = ctx.rd(entry_p)\n    if entry and level != \"pud\":", DECISIONS),
    m("early.no_reuse_pmd", "early_fault.py:_table_below", "a present pud entry is not reused: a new PMD page per "
      "fault", "early_fault.py", "    entry = ctx.rd(entry_p)\n    if entry:",
      "    entry = ctx.rd(entry_p)\n    if entry and level != \"pmd\":", DECISIONS),
    m("early.link_flags", "early_fault.py:_table_below", "early tables linked with _PAGE_TABLE instead of "
      "_KERNPG_TABLE", "early_fault.py", "ctx.wr(entry_p, phys + _KERNPG_TABLE)", "ctx.wr(entry_p, phys + 0x67)",
      f"{EARLY_PF}::test_spec_test_vector_fault_at_0xffff880012345678"),
    m("early.pool_page_not_zeroed", "early_fault.py:_table_below", "a pool page is handed out without being zeroed",
      "early_fault.py", "    ctx.memset(table, 0, 4096)\n", "", DECISIONS),
    m("early.no_maxmem_check", "early_fault.py:early_make_pgtable", "addresses beyond MAXMEM are mapped too",
      "early_fault.py", "if physaddr >= ctx.maxmem or ctx.pv", "if physaddr >= (1 << 64) or ctx.pv",
      f"{EARLY_PF}::test_access_beyond_maxmem_is_declined_and_panics"),
    m("early.no_cr3_check", "early_fault.py:early_make_pgtable", "the handler is not inert once CR3 left the early "
      "table", "early_fault.py", "& g.pte_pfn_mask != ctx.pa_symbol(\"early_top_pgt\"):", "& g.pte_pfn_mask == -1:",
      DECISIONS),
    m("early.pmd_base_1g", "early_fault.py:early_make_pgtable", "the PMD maps the fault's 1 GiB base, not its 2 MiB "
      "block", "early_fault.py", "pmd = (physaddr & ~(g.pmd_size - 1)) + ctx.rd(",
      "pmd = (physaddr & ~(g.pud_size - 1)) + ctx.rd(",
      f"{EARLY_PF}::test_spec_test_vector_fault_at_0xffff880012345678"),
    m("early.pmd_flags_constant", "early_fault.py:early_make_pgtable", "PMD flags 0xe3 instead of early_pmd_flags",
      "early_fault.py", "+ ctx.rd(ctx.sym(\"early_pmd_flags\"))", "+ 0xE3",
      f"{EARLY_PF}::test_spec_test_vector_fault_at_0xffff880012345678"),
    m("early.full_pool_declines", "early_fault.py:early_make_pgtable", "a full pool declines the fault instead of "
      "resetting and restarting", "early_fault.py", "            reset_early_page_tables(ctx)\n            continue",
      "            return -1", f"{EARLY_PF}::test_small_pool_resets_often_and_still_boots"),
    m("early.reset_without_restart", "early_fault.py:_table_below", "a full pool is reset but the walk goes on "
      "at the same level (no 'goto again')", "early_fault.py",
      "    page = _alloc(ctx, level, address)\n    if page is None:\n        return None",
      "    page = _alloc(ctx, level, address)\n    if page is None:\n        reset_early_page_tables(ctx)\n"
      "        page = _alloc(ctx, level, address)\n        assert page is not None",
      f"{EARLY_PF}::test_small_pool_resets_often_and_still_boots"),
    m("early.rfc_pud_reuse_when_full", "early_fault.py:early_make_pgtable_rfc", "the RFC reuses a present PUD page "
      "even with the pool full", "early_fault.py", "if pgd and ctx.rd(nxt, 4) < n_pool:", "if pgd:", DECISIONS),
    m("early.rfc_reset_at_64", "early_fault.py:early_make_pgtable_rfc", "the RFC resets at 64, not 63",
      "early_fault.py", "if ctx.rd(nxt, 4) >= n_pool - 1:", "if ctx.rd(nxt, 4) >= n_pool:", DECISIONS),
    m("early.rfc_pmd_one_gib", "early_fault.py:early_make_pgtable_rfc", "the RFC's PMD page maps from the fault's "
      "2 MiB block, not the 1 GiB around it", "early_fault.py",
      "pmd = (physaddr & ~(g.pud_size - 1)) + (__PAGE_KERNEL_LARGE & ~_PAGE_GLOBAL)",
      "pmd = (physaddr & ~(g.pmd_size - 1)) + (__PAGE_KERNEL_LARGE & ~_PAGE_GLOBAL)", DECISIONS),
    m("early.rfc_flags", "early_fault.py:early_make_pgtable_rfc", "the RFC uses early_pmd_flags (NX only with NX)",
      "early_fault.py", "pmd = (physaddr & ~(g.pud_size - 1)) + (__PAGE_KERNEL_LARGE & ~_PAGE_GLOBAL)",
      "pmd = (physaddr & ~(g.pud_size - 1)) + ctx.rd(ctx.sym(\"early_pmd_flags\"))",
      f"{EARLY_PF}::test_rfc_sets_nx_unconditionally_so_it_livelocks_without_nx"),
    m("early.rfc_phys_base", "early_fault.py:early_make_pgtable_rfc", "the RFC applies phys_base",
      "early_fault.py", "pud_p = (pgd & g.pte_pfn_mask) + START_KERNEL_MAP\n",
      "pud_p = (pgd & g.pte_pfn_mask) + START_KERNEL_MAP - ctx.phys_base\n",
      f"{EARLY_PF}::test_rfc_with_relocated_kernel_livelocks_and_says_why"),
    m("early.rfc_cr3_check", "early_fault.py:early_make_pgtable_rfc", "the RFC declines when CR3 is not the early "
      "table (the merged code's check)", "early_fault.py", "    if physaddr >= ctx.maxmem:\n        return -1",
      "    if physaddr >= ctx.maxmem or ctx.cpu.regs.cr3 & ctx.pgt.pte_pfn_mask != ctx.pa_symbol(\"early_top_pgt\"):"
      "\n        return -1", DECISIONS),
    m("early.rfc_flush_pv", "early_fault.py:reset_early_page_tables", "the RFC's reset reloads CR3 through pv_ops "
      "(it called __native_flush_tlb())", "early_fault.py",
      "        native_flush_tlb(ctx.cpu)  # the RFC's __native_flush_tlb(): reload CR3",
      "        ctx.pv.mmu.flush_tlb_user()",
      equivalent="natively the pv op is native_flush_tlb: the same CR3 reload; only a non-native pv backend "
                 "could tell, and the RFC was never run on one"),
    m("early.rfc_pud_wrap", "head_64.py:_identity_map", "the RFC masks PUD[j+1] like the merged code",
      "head_64.py", "j + 1 if rfc else (j + 1) % g.ptrs_per_pud", "(j + 1) % g.ptrs_per_pud", DECISIONS),
    m("early.recursion_v39", "consts.py:V39", "v3.9 halts on the third entry, not at early_recursion_flag == 2",
      "consts.py", "recursion_halt=2, recursion_check_first=True,", "recursion_halt=3, recursion_check_first=True,",
      f"{EARLY_PF}::test_pool_through_page_offset_recurses_until_the_recursion_flag_halts"),
    m("early.recursion_61", "consts.py:CURRENT", "6.1 halts at early_recursion_flag 2 like v3.9", "consts.py",
      "recursion_halt=3, recursion_check_first=False,", "recursion_halt=2, recursion_check_first=False,",
      DECISIONS),
    m("early.cr2_v39_native", "consts.py:V39", "v3.9 reads CR2 natively (GET_CR2_INTO is the pv read_cr2 there)",
      "consts.py", "early_cr2_native=False,", "early_cr2_native=True,", DECISIONS),
    m("early.cr2_61_pv", "consts.py:CURRENT", "6.1 reads CR2 through pv_ops (do_early_exception: native_read_cr2)",
      "consts.py", "early_cr2_native=True,", "early_cr2_native=False,", DECISIONS),
    # ---- init.py: probe_page_size_mask, split_mem_range, init_mem_mapping ------------------------------
    m("imm.no_2m", "init.py:probe_page_size_mask", "2 MiB pages never allowed", "init.py",
      "    if pse:\n        st.page_size_mask |= PG_LEVEL_2M",
      "    if False:\n        st.page_size_mask |= PG_LEVEL_2M",
      f"{IMM}::test_final_map_uses_1g_pages_where_whole_gigabytes_are_ram"),
    m("imm.no_1g", "init.py:probe_page_size_mask", "1 GiB pages never allowed", "init.py",
      "if boot_cpu_has(cpu, X86Feature.GBPAGES) and (pse or not ctx.profile.gbpages_need_pse):", "if False:",
      f"{IMM}::test_final_map_uses_1g_pages_where_whole_gigabytes_are_ram"),
    m("imm.cr4_pse", "init.py:probe_page_size_mask", "CR4.PSE not set", "init.py",
      "    if pse:\n        set_in_cr4(ctx, int(Cr4.PSE))", "    if False:\n        set_in_cr4(ctx, int(Cr4.PSE))",
      f"{REAL}[midboot-qemu64-512m-init_mem_mapping]"),
    m("imm.no_global", "init.py:probe_page_size_mask", "_PAGE_GLOBAL not added to __supported_pte_mask with PGE",
      "init.py", "st.supported_pte_mask |= _PAGE_GLOBAL", "st.supported_pte_mask &= ~_PAGE_GLOBAL",
      f"{IMM}::test_final_map_uses_1g_pages_where_whole_gigabytes_are_ram"),
    m("imm.cr4_pge", "init.py:probe_page_size_mask", "CR4.PGE not set by probe_page_size_mask", "init.py",
      "        set_in_cr4(ctx, int(Cr4.PGE))\n", "",
      equivalent="head_64.S already set CR4.PGE unconditionally (a CPU without PGE triple-faults there)"),
    Mutant("imm.nx_kept", "init.py:probe_page_size_mask + setup.py:setup_arch_early", "NX never dropped from "
           "__supported_pte_mask on a CPU without NX (both places that drop it)",
           (Edit(K + "init.py", "    if not boot_cpu_has(cpu, X86Feature.NX):\n"
                 "        st.supported_pte_mask &= ~_PAGE_NX",
                 "    if False:\n        st.supported_pte_mask &= ~_PAGE_NX"),
            Edit(K + "setup.py", "    if not boot_cpu_has(ctx.cpu, X86Feature.NX):\n        st.supported_pte_mask &= ",
                 "    if False:\n        st.supported_pte_mask &= ")),
           (f"{EARLY_PF}::test_no_nx_cpu_gets_pmds_without_bit_63",)),
    m("imm.nx_probe_only", "init.py:probe_page_size_mask", "probe_page_size_mask does not drop NX (x86_configure_nx "
      "still does)", "init.py",
      "    if not boot_cpu_has(cpu, X86Feature.NX):\n        st.supported_pte_mask &= ~_PAGE_NX",
      "    if False:\n        st.supported_pte_mask &= ~_PAGE_NX",
      equivalent="x86_configure_nx in setup_arch already dropped NX; the source's probe_page_size_mask never "
                 "touches it"),
    m("imm.upgrade_2m_none", "init.py:split_mem_range", "adjust_range_page_size_mask never upgrades to 2 MiB",
      "init.py", "if mask & PG_LEVEL_2M and not m & PG_LEVEL_2M:", "if False:",
      f"{IMM}::test_split_mem_range_matches_the_kernels_five_ranges"),
    m("imm.upgrade_2m_always", "init.py:split_mem_range", "2 MiB upgrade without memblock_is_region_memory",
      "init.py", "                if st.memblock.is_region_memory(lo, hi - lo):\n                    m |= PG_LEVEL_2M",
      "                if True:\n                    m |= PG_LEVEL_2M",
      f"{IMM}::test_direct_map_respects_e820_holes_and_maps_the_isa_range"),
    m("imm.upgrade_1g_none", "init.py:split_mem_range", "adjust_range_page_size_mask never upgrades to 1 GiB",
      "init.py", "if mask & PG_LEVEL_1G and not m & PG_LEVEL_1G:", "if False:",
      f"{IMM}::test_split_mem_range_matches_the_kernels_five_ranges"),
    m("imm.upgrade_1g_always", "init.py:split_mem_range", "1 GiB upgrade without memblock_is_region_memory",
      "init.py", "                if st.memblock.is_region_memory(lo, hi - lo):\n                    m |= PG_LEVEL_1G",
      "                if True:\n                    m |= PG_LEVEL_1G",
      f"{IMM}::test_split_mem_range_matches_the_kernels_five_ranges"),
    m("imm.no_merge", "init.py:split_mem_range", "adjacent ranges of one page size not merged", "init.py",
      "if merged and merged[-1].end == r.start and merged[-1].mask == r.mask:", "if False:",
      f"{IMM}::test_split_mem_range_matches_the_kernels_five_ranges"),
    m("imm.merge_before_adjust", "init.py:split_mem_range", "6.1 merges ranges before "
      "adjust_range_page_size_mask and not after (3.9.0's order, fixed by 7de3d66b 'x86: Fix "
      "adjust_range_size_mask calling position')", "init.py",
      "return adjust(merge(mr)) if merges_first else merge(adjust(mr))", "return adjust(merge(mr))", REAL, DECISIONS),
    m("imm.no_isa_range", "init.py:init_mem_mapping", "the ISA range is not mapped first", "init.py",
      "init_memory_mapping(ctx, st, 0, ISA_END_ADDRESS)  # the ISA range", "pass  # the ISA range",
      f"{IMM}::test_direct_map_respects_e820_holes_and_maps_the_isa_range"),
    m("imm.real_end_align_v39", "consts.py:V39", "v3.9 finds real_end with PMD_SIZE alignment (3.9.0: PAGE_SIZE)",
      "consts.py", "step_grows_on_new_ram=True, real_end_pmd_aligned=False,",
      "step_grows_on_new_ram=True, real_end_pmd_aligned=True,", DECISIONS),
    m("imm.real_end_align_61", "consts.py:CURRENT", "6.1 finds real_end with PAGE_SIZE alignment", "consts.py",
      "real_end_pmd_aligned=True, clear_top_pgt_first=True,", "real_end_pmd_aligned=False, clear_top_pgt_first=True,",
      REAL, DECISIONS),
    m("imm.real_end_no_pmd", "init.py:init_mem_mapping", "real_end = the found block's start (no + PMD_SIZE)",
      "init.py", "real_end = addr + PMD_SIZE", "real_end = addr", REAL, DECISIONS),
    m("imm.no_tail_above_real_end", "init.py:init_mem_mapping", "[real_end, end) never mapped", "init.py",
      "    if real_end < end:\n        init_range_memory_mapping", "    if False:\n        init_range_memory_mapping",
      DECISIONS),
    m("imm.step_rule_v39", "consts.py:V39", "v3.9 grows the step when the total reaches it (6.1's rule)",
      "consts.py", "init_pgt_buf_pages=5, step_grows_on_new_ram=True,",
      "init_pgt_buf_pages=5, step_grows_on_new_ram=False,",
      DECISIONS),
    m("imm.step_rule_61", "consts.py:CURRENT", "6.1 grows the step when a round mapped more than all before "
      "(v3.9's rule)", "consts.py", "init_pgt_buf_pages=16, step_grows_on_new_ram=False,",
      "init_pgt_buf_pages=16, step_grows_on_new_ram=True,", REAL, DECISIONS),
    m("imm.step_shift_v39", "consts.py:V39", "v3.9 step grows <<8 (6.1's get_new_step_size)", "consts.py",
      "trim_kernel_pmds=False, global_flush_in_start_kernel=False, step_shift=5,",
      "trim_kernel_pmds=False, global_flush_in_start_kernel=False, step_shift=8,", DECISIONS),
    m("imm.step_shift_61", "consts.py:CURRENT", "6.1 step grows <<5 (v3.9)", "consts.py",
      "trim_kernel_pmds=True, global_flush_in_start_kernel=True, step_shift=8,",
      "trim_kernel_pmds=True, global_flush_in_start_kernel=True, step_shift=5,", REAL, DECISIONS),
    m("imm.step_never_grows", "init.py:init_mem_mapping", "the step never grows (2 MiB rounds all the way down)",
      "init.py", "            if new > mapped_total:\n                step <<= prof.step_shift",
      "            if False:\n                step <<= prof.step_shift", DECISIONS),
    m("imm.brk_overlap_ignored", "init.py:init_range_memory_mapping", "a range overlapping the BRK buffer still "
      "takes tables from BRK", "init.py", "st.can_use_brk_pgt = max(start, st.pgt_buf_end << PAGE_SHIFT) >= "
      "min(end, st.pgt_buf_top << PAGE_SHIFT)", "st.can_use_brk_pgt = True", REAL, DECISIONS),
    m("imm.min_pfn_frozen", "init.py:init_mem_mapping", "min_pfn_mapped not lowered after each round", "init.py",
      "        st.min_pfn_mapped = last_start >> PAGE_SHIFT\n", "", REAL, DECISIONS),
    m("imm.max_pfn_not_reset", "init.py:init_mem_mapping", "max_pfn_mapped not reset to 0 after the ISA range",
      "init.py", "    st.max_pfn_mapped = 0\n", "",
      equivalent="max_pfn_mapped is read only by alloc_low_pages, where min_pfn_mapped (real_end) >= 1 MiB already "
                 "makes [min, max) empty in the first round; from the first round on it is max(…, real_end)"),
    m("imm.no_load_cr3", "init.py:init_mem_mapping", "CR3 not switched to init_top_pgt", "init.py",
      "ctx.pv.mmu.write_cr3(PhysAddr(ctx.pa_symbol(\"init_top_pgt\")))  # load_cr3(swapper_pg_dir)", "pass",
      f"{IMM}::test_direct_map_respects_e820_holes_and_maps_the_isa_range"),
    # ---- init_64.py: phys_*_init, kernel_physical_mapping_init, cleanup_highmap -----------------------
    m("builders.pte_clear_ram", "init_64.py:phys_pte_init", "PTEs past end cleared even where e820 has RAM",
      "init_64.py", "            if not st.e820_any_mapped(addr & ~0xFFF, nxt):\n                t.set(SetOp.PTE",
      "            if True:\n                t.set(SetOp.PTE",
      f"{IMM}::test_direct_map_respects_e820_holes_and_maps_the_isa_range",
      BUILDERS),
    m("builders.pte_clear_never", "init_64.py:phys_pte_init", "PTEs past end never cleared", "init_64.py",
      "            if not st.e820_any_mapped(addr & ~0xFFF, nxt):\n                t.set(SetOp.PTE",
      "            if False:\n                t.set(SetOp.PTE", BUILDERS),
    m("builders.pte_overwrite", "init_64.py:phys_pte_init", "a present PTE is overwritten (source: kept, 'Xen may "
      "have set it up')", "init_64.py", "        elif not t.val(i):\n            n = t.zero_run",
      "        elif t.val(i):\n            t.set(SetOp.PTE, i, pfn_pte(ctx, st, addr & ~0xFFF, prot))\n"
      "        elif True:\n            n = t.zero_run", BUILDERS),
    m("builders.pmd_clear_ram", "init_64.py:phys_pmd_init", "PMDs past end cleared even where e820 has RAM",
      "init_64.py", "new_prot = prot\n        if addr >= end:\n            skip = st.ram_run(",
      "new_prot = prot\n        if addr >= end:\n            skip = 0 and st.ram_run(",
      f"{IMM}::test_direct_map_respects_e820_holes_and_maps_the_isa_range",
      BUILDERS),
    m("builders.pmd_clear_never", "init_64.py:phys_pmd_init", "PMDs past end never cleared", "init_64.py",
      "t.set_many(SetOp.PMD, i, mmu.make_entries(array(\"Q\", bytes(8 * n))))", "pass", BUILDERS),
    m("builders.pmd_no_descend", "init_64.py:phys_pmd_init", "a present PMD → PTE link is replaced by a new PTE "
      "page", "init_64.py",
      "                last = phys_pte_init(ctx, st, ctx.va(val & g.pte_pfn_mask), addr, end, prot)",
      "                pte_page = st.alloc_low_page(ctx, \"pte\")\n"
      "                last = phys_pte_init(ctx, st, pte_page, addr, end, prot)\n"
      "                pmd_populate_kernel(ctx, t.ptr(i), pte_page)",
      f"{IMM}::test_direct_map_respects_e820_holes_and_maps_the_isa_range", BUILDERS),
    m("builders.pmd_large_overwrite", "init_64.py:phys_pmd_init", "a present 2 MiB leaf is not kept when 2 MiB is "
      "allowed (source: kept as it is; here it is split)", "init_64.py",
      "        if val and val & _PAGE_PSE and mask & PG_LEVEL_2M:",
      "        if False:", BUILDERS),
    m("builders.pmd_split_prot", "init_64.py:phys_pmd_init", "a split 2 MiB leaf's PTEs get PAGE_KERNEL, not the "
      "large page's protection", "init_64.py",
      "new_prot = val & LARGE_FLAG_BITS  # split, keeping the large page's protection", "new_prot = prot", BUILDERS),
    m("builders.split_keeps_pse", "init_64.py", "pte_clrhuge forgotten: a split keeps PSE (the 4 KiB PAT bit)",
      "init_64.py", "LARGE_FLAG_BITS = 0x8000_0000_0000_0FFF & ~_PAGE_PSE", "LARGE_FLAG_BITS = 0x8000_0000_0000_0FFF",
      BUILDERS),
    m("builders.pud_clear_ram", "init_64.py:phys_pud_init", "PUDs past end cleared even where e820 has RAM",
      "init_64.py",
      "prot = __PAGE_KERNEL & st.default_kernel_pte_mask  # PAGE_KERNEL\n        if addr >= end:\n"
      "            skip = st.ram_run(",
      "prot = __PAGE_KERNEL & st.default_kernel_pte_mask  # PAGE_KERNEL\n        if addr >= end:\n"
      "            skip = 0 and st.ram_run(",
      f"{IMM}::test_final_map_uses_1g_pages_where_whole_gigabytes_are_ram",
      BUILDERS),
    m("builders.pud_clear_never", "init_64.py:phys_pud_init", "PUDs past end never cleared", "init_64.py",
      "t.set_many(SetOp.PUD, i, mmu.make_entries(array(\"Q\", bytes(8 * n))))", "pass", BUILDERS),
    m("builders.pud_no_descend", "init_64.py:phys_pud_init", "a present PUD → PMD link is replaced by a new PMD page",
      "init_64.py",
      "                last = phys_pmd_init(ctx, st, ctx.va(val & g.pte_pfn_mask), addr, end, mask, prot)",
      "                pmd_page = st.alloc_low_page(ctx, \"pmd\")\n"
      "                last = phys_pmd_init(ctx, st, pmd_page, addr, end, mask, prot)\n"
      "                pud_populate(ctx, t.ptr(i), pmd_page)",
      f"{IMM}::test_direct_map_respects_e820_holes_and_maps_the_isa_range", BUILDERS),
    m("builders.pud_large_overwrite", "init_64.py:phys_pud_init", "a present 1 GiB leaf is not kept when 1 GiB is "
      "allowed (source: kept as it is; here it is split)", "init_64.py",
      "        if val and val & _PAGE_PSE and mask & PG_LEVEL_1G:",
      "        if False:", BUILDERS),
    m("builders.pud_split_prot", "init_64.py:phys_pud_init", "a split 1 GiB leaf's PMDs get PAGE_KERNEL, not the "
      "large page's protection", "init_64.py", "            prot = val & LARGE_FLAG_BITS\n",
      "            prot = __PAGE_KERNEL\n", BUILDERS),
    m("builders.pgd_no_reuse", "init_64.py:kernel_physical_mapping_init", "a present pgd entry is replaced by a new "
      "PUD page", "init_64.py", "        val = _val(ctx, pgd)\n        if val:",
      "        val = _val(ctx, pgd)\n        if False:",
      f"{IMM}::test_direct_map_respects_e820_holes_and_maps_the_isa_range"),
    m("builders.table_flags", "init_64.py", "pmd_populate_kernel/pud_populate link with _KERNPG_TABLE (no US)",
      "init_64.py", "DIRECT_MAP_TABLE_FLAGS = _PAGE_TABLE", "DIRECT_MAP_TABLE_FLAGS = 0x063",
      f"{REAL}[midboot-qemu64-512m-init_mem_mapping]"),
    m("builders.top_flags_p4d", "init_64.py:top_populate", "6.1's p4d_populate links with _KERNPG_TABLE",
      "init_64.py", "mmu.set_p4d(VirtAddr(p4d_offset(ctx, pgd, vaddr)), mmu.make_entry(pa | _PAGE_TABLE))",
      "mmu.set_p4d(VirtAddr(p4d_offset(ctx, pgd, vaddr)), mmu.make_entry(pa | 0x063))",
      f"{REAL}[midboot-qemu64-512m-init_mem_mapping]"),
    m("builders.top_flags_pgd", "init_64.py:top_populate", "v3.9's pgd_populate links with _KERNPG_TABLE",
      "init_64.py", "    else:\n        mmu.set_pgd(pgd, mmu.make_entry(pa | _PAGE_TABLE))",
      "    else:\n        mmu.set_pgd(pgd, mmu.make_entry(pa | 0x063))",
      DECISIONS),
    m("builders.p4d_fold_v39", "init_64.py:top_populate", "v3.9 links the PUD page with set_p4d (it has no p4d "
      "level: pgd_populate → set_pgd)", "init_64.py", "    if ctx.profile.p4d_level:\n        mmu.set_p4d",
      "    if True:\n        mmu.set_p4d", DECISIONS),
    m("builders.p4d_fold_61", "init_64.py:top_populate", "6.1 (4-level) links the PUD page with set_pgd, not "
      "p4d_populate_init's set_p4d", "init_64.py", "    if ctx.profile.p4d_level:\n        mmu.set_p4d",
      "    if False:\n        mmu.set_p4d", DECISIONS),
    m("builders.no_pse_on_2m", "init_64.py:phys_pmd_init", "2 MiB leaves written without _PAGE_PSE", "init_64.py",
      "t.set_many(SetOp.PTE, i, pfn_ptes(ctx, st, base, size, n, prot | _PAGE_PSE))",
      "t.set_many(SetOp.PTE, i, pfn_ptes(ctx, st, base, size, n, prot))",
      f"{IMM}::test_final_map_uses_1g_pages_where_whole_gigabytes_are_ram"),
    m("builders.1g_not_global", "init_64.py:phys_pud_init", "1 GiB leaves without G", "init_64.py",
      "pfn_ptes(ctx, st, base, size, n, __PAGE_KERNEL_LARGE & st.default_kernel_pte_mask)",
      "pfn_ptes(ctx, st, base, size, n, __PAGE_KERNEL_LARGE & st.default_kernel_pte_mask & ~0x100)",
      f"{IMM}::test_final_map_uses_1g_pages_where_whole_gigabytes_are_ram"),
    Mutant("builders.no_massage_pgprot", "init_64.py:pfn_pte/pfn_ptes", "leaf flags not masked with "
           "__supported_pte_mask",
           (Edit(K + "init_64.py", "return ctx.pv.mmu.make_entry((pa | prot) & st.supported_pte_mask)",
                 "return ctx.pv.mmu.make_entry(pa | prot)"),
            Edit(K + "init_64.py", "mask, top = st.supported_pte_mask, base + step * n",
                 "mask, top = (1 << 64) - 1, base + step * n")),
           (f"{EARLY_PF}::test_no_nx_cpu_gets_pmds_without_bit_63",),
           equivalent="every prot the builders pass is already PAGE_KERNEL* & __default_kernel_pte_mask, a subset of "
           "__supported_pte_mask (6.1's PAGE_KERNEL; for v3.9, where massage_pgprot alone masked, the model masks "
           "both places and the two compose to the same value)"),
    m("builders.no_alloc_pte", "init_64.py:pmd_populate_kernel", "paravirt_alloc_pte not called", "init_64.py",
      "    ctx.pv.mmu.alloc_pte(Pfn(pa >> 12))\n", "",
      "tests/kernel/test_seams.py::test_every_direct_map_entry_was_written_through_pv_ops"),
    m("builders.no_alloc_pmd", "init_64.py:pud_populate", "paravirt_alloc_pmd not called", "init_64.py",
      "    ctx.pv.mmu.alloc_pmd(Pfn(pa >> 12))\n", "",
      "tests/kernel/test_seams.py::test_every_direct_map_entry_was_written_through_pv_ops"),
    m("builders.no_alloc_pud", "init_64.py:top_populate", "paravirt_alloc_pud not called", "init_64.py",
      "    mmu.alloc_pud(Pfn(pa >> 12))\n    if ctx.profile.p4d_level:", "    if ctx.profile.p4d_level:",
      "tests/kernel/test_seams.py::test_every_direct_map_entry_was_written_through_pv_ops"),
    m("highmap.end_rounding", "init_64.py:cleanup_highmap", "the PMD at roundup(_brk_end, 2 MiB) is kept (end "
      "without − 1)", "init_64.py", "end = ((brk_end + g.pmd_size - 1) & ~(g.pmd_size - 1)) - 1",
      "end = ((brk_end + g.pmd_size - 1) & ~(g.pmd_size - 1))", REAL_BYTES, DECISIONS),
    m("highmap.below_text_kept", "init_64.py:cleanup_highmap", "PMDs below _text are kept", "init_64.py",
      "if _val(ctx, pmd) and (vaddr < lay.text or vaddr > end):", "if _val(ctx, pmd) and vaddr > end:",
      REAL_BYTES, DECISIONS),
    m("highmap.not_called", "setup.py:setup_arch_early", "cleanup_highmap not called", "setup.py",
      "    cleanup_highmap(ctx, ctx.rd(lay[\"max_pfn_mapped\"]), st.brk_end)  # 0 natively", "    pass  # 0 natively",
      REAL_BYTES, DECISIONS),
    m("highmap.end_is_end", "setup.py:setup_arch_early", "cleanup_highmap keeps up to _end rather than _brk_end",
      "setup.py", "st.brk_end)  # 0 natively", "lay[\"_end\"])  # 0 natively",
      equivalent="BRK is the image's last section: roundup(_brk_end, 2 MiB) = roundup(_end, 2 MiB) unless BRK "
                 "spans a 2 MiB boundary beyond what is used (not so in either layout)"),
    m("table_run.zero_run_over_present", "table_run.py:TableRun.zero_run", "a run of new leaves runs over present "
      "entries", "table_run.py", "return (len(seg) - len(seg.lstrip(b\"\\0\"))) // self.size",
      "return len(seg) // self.size", BUILDERS),
    m("table_run.stale_after_sync", "table_run.py:TableRun.sync", "the cached entries survive a sync (a lower "
      "level's accesses come between)", "table_run.py",
      "        self.cache, self.cache_from, self.cache_end = b\"\", -1, -1",
      "        pass",
      equivalent="nothing between a sync and the next read writes an entry the loop reads again (lower levels "
                 "write other pages; the link to them is entry i, which the loop never reads again), so every "
                 "value read is the same; only the number of memory accesses differs (the goldens' TLB counts)"),
    m("context.pa_no_phys_base", "context.py:KernelContext.pa", "__pa of a kernel-image address ignores phys_base",
      "context.py", "return va - START_KERNEL_MAP + self.phys_base", "return va - START_KERNEL_MAP",
      f"{EARLY_PF}::test_relocated_kernel_merged_boots", DECISIONS),
    # ---- mm_state.py: alloc_low_pages -----------------------------------------------------------------
    m("alloc.brk_one_short", "mm_state.py:alloc_low_page", "the BRK buffer is declared full one page early",
      "mm_state.py", "if self.pgt_buf_end + 1 > self.pgt_buf_top or", "if self.pgt_buf_end + 2 > self.pgt_buf_top or",
      REAL, DECISIONS),
    m("alloc.brk_overlap_ignored", "mm_state.py:alloc_low_page", "can_use_brk_pgt ignored", "mm_state.py",
      " or not self.can_use_brk_pgt:", ":", REAL, DECISIONS),
    m("alloc.memblock_not_reserved", "mm_state.py:alloc_low_page", "a page taken from memblock is not reserved "
      "(the next allocation returns it again)", "mm_state.py", "            self.memblock.reserve(ret, PAGE_SIZE)\n",
      "", REAL, DECISIONS),
    m("alloc.not_cleared", "mm_state.py:alloc_low_page", "a table page is not cleared", "mm_state.py",
      "        ctx.memset(va, 0, PAGE_SIZE)  # clear_page(__va(pfn << PAGE_SHIFT))\n", "",
      equivalent="BRK is zeroed by clear_bss/the image and memblock hands out RAM the model never wrote"),
    # ---- setup.py / e820.py / memblock.py ---------------------------------------------------------------
    m("setup.no_e820_ext", "setup.py:parse_setup_data", "SETUP_E820_EXT setup data ignored", "setup.py",
      "        if kind != bp.SETUP_E820_EXT:\n            continue", "        if True:\n            continue",
      LOWMEM),
    m("setup.no_cmdline_mem", "setup.py:parse_early_param", "mem=/memmap= not applied", "setup.py",
      "for w in e820mod.parse_mem_options(table, raw):", "for w in e820mod.parse_mem_options(table, \"\"):",
      f"{REAL}[midboot-qemu64-4g-mem1500m-init_mem_mapping]"),
    m("setup.no_dmi_brk", "setup.py:dmi_setup", "dmi_setup's strings take no BRK space", "setup.py",
      "extend_brk(ctx, st, len(s) + 1, 4)", "extend_brk(ctx, st, 0, 4)", REAL),
    m("setup.page0_ram", "setup.py:trim_bios_range", "page 0 stays RAM in the kernel's e820", "setup.py",
      "    table.range_update(0, PAGE_SIZE, e820mod.E820_RAM, e820mod.E820_RESERVED)\n", "", LOWMEM),
    m("setup.bios_area_ram", "setup.py:trim_bios_range", "RAM reported in 640 KiB–1 MiB is kept", "setup.py",
      "    table.range_remove(e820mod.BIOS_BEGIN, e820mod.BIOS_END - e820mod.BIOS_BEGIN, e820mod.E820_RAM)\n", "",
      LOWMEM),
    m("setup.pgt_buf_unaligned", "setup.py:setup_arch_early", "the BRK page-table buffer is carved 8-byte "
      "aligned, not page aligned", "setup.py", "buf = extend_brk(ctx, st, pages * PAGE_SIZE, PAGE_SIZE)",
      "buf = extend_brk(ctx, st, pages * PAGE_SIZE, 8)", REAL),
    m("setup.no_early_trap_pf_init", "setup.py:early_trap_pf_init", "IDT[14] keeps the early handler after "
      "init_mem_mapping", "setup.py", "    write_gate(ctx, lay[\"idt_table\"], 14, lay[\"page_fault\"])\n", "",
      f"{IMM}::test_after_init_mem_mapping_the_early_handler_is_inert"),
    m("setup.pgt_buf_v39", "consts.py:V39", "v3.9's INIT_PGT_BUF_SIZE is 6 pages (3.12's), not 5", "consts.py",
      "init_pgt_buf_pages=5,", "init_pgt_buf_pages=6,", DECISIONS),
    m("setup.pgt_buf_61", "consts.py:CURRENT", "6.1's INIT_PGT_BUF_SIZE is 6 pages (no X86_5LEVEL × 4)",
      "consts.py", "init_pgt_buf_pages=16,", "init_pgt_buf_pages=6,", REAL),
    m("setup.brk_not_reserved", "setup.py:setup_arch_early", "the BRK area is not memblock-reserved", "setup.py",
      "    mb.reserve(ctx.pa(brk_start), ((st.brk_end + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)) - brk_start)\n", "",
      LOWMEM),
    Mutant("setup.kernel_not_reserved", "setup.py:setup_arch_early/early_reserve_memory", "the kernel image is not "
           "memblock-reserved",
           (Edit(K + "setup.py",
                 "mb.reserve(ctx.pa_symbol(\"_text\"), lay[\"__bss_stop\"] - lay.text)  # memblock_reserve",
                 "pass  # memblock_reserve"),
            Edit(K + "setup.py",
                 "    mb.reserve(ctx.pa_symbol(\"_text\"), lay[\"__bss_stop\"] - lay.text)\n    mb.reserve(0, ",
                 "    mb.reserve(0, ")),
           (LOWMEM,)),
    m("setup.initrd_not_reserved", "setup.py:reserve_initrd_range", "the ramdisk is not memblock-reserved",
      "setup.py", "        mb.reserve(rd_image, (rd_size + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1))", "        pass", LOWMEM),
    Mutant("setup.low64k_61_late", "setup.py:early_reserve_memory", "6.1 reserves [0, 64K) where v3.9's "
           "trim_low_memory_range does (after reserve_real_mode), not in early_reserve_memory",
           (Edit(K + "setup.py", "    mb.reserve(0, RESERVE_LOW)  # memblock_reserve(0, SZ_64K)\n", ""),
            Edit(K + "setup.py", "    if ctx.profile.bios_regions == \"v3.9\":\n        mb.reserve(0, RESERVE_LOW)",
                 "    if True:\n        mb.reserve(0, RESERVE_LOW)")),
           (f"{REAL_BYTES}::test_61_reserves_the_low_64k_before_the_dump",)),
    m("setup.no_trim_memory", "setup.py:setup_arch_early", "memblock keeps partial pages of RAM ranges", "setup.py",
      "    mb.trim_memory(PAGE_SIZE)  # memblock_trim_memory", "    pass  # memblock_trim_memory", LOWMEM),
    m("setup.bios_61_no_clamp", "setup.py:reserve_bios_regions", "6.1 trusts a base-memory size above 0x9f000",
      "setup.py", "start = base if BIOS_START_MIN <= base <= BIOS_START_MAX else BIOS_START_MAX", "start = base",
      LOWMEM),
    m("setup.bios_61_ignore_ebda", "setup.py:reserve_bios_regions", "6.1 ignores an EBDA below the base memory top",
      "setup.py", "        if BIOS_START_MIN <= ebda < start:\n            start = ebda",
      "        if False:\n            start = ebda", LOWMEM),
    m("setup.ebda_v39_fixup", "setup.py:reserve_bios_regions", "v3.9 ignores an EBDA in the top 64 KiB of "
      "conventional memory", "setup.py",
      "        if (start - ebda) & 0xFFFF_FFFF <= 0x10000:\n            start = ebda",
      "        if False:\n            start = ebda", LOWMEM),
    m("setup.ebda_v39_signed", "setup.py:reserve_bios_regions", "v3.9's lowmem - ebda_addr compared as a signed "
      "difference (head.c: both unsigned int)", "setup.py", "if (start - ebda) & 0xFFFF_FFFF <= 0x10000:",
      "if start - ebda <= 0x10000:", f"{LOWMEM}::test_v39_ebda_above_lowmem_is_not_taken"),
    m("setup.ebda_v39_no_ebda", "setup.py:reserve_bios_regions", "v3.9's no-EBDA quirk (reserve from 0x9f000) "
      "dropped", "setup.py", "        if ebda == 0 and start >= 0x9F000:\n            start = 0x9F000",
      "        if False:\n            start = 0x9F000", LOWMEM),
    m("setup.no_trampoline", "setup.py:setup_arch_early", "reserve_real_mode reserves nothing", "setup.py",
      "    if trampoline:\n        mb.reserve(trampoline, pages_rm * PAGE_SIZE)",
      "    if False:\n        mb.reserve(trampoline, pages_rm * PAGE_SIZE)", LOWMEM),
    m("setup.trampoline_61_size", "consts.py:CURRENT", "6.1's trampoline is 6 pages (v3.9's)", "consts.py",
      "realmode_pages=7,", "realmode_pages=6,", LOWMEM),
    m("setup.no_first_mb", "setup.py:setup_arch_early", "6.1 does not reserve the first 1 MiB", "setup.py",
      "        mb.reserve(0, 1 << 20)  # \"always reserve the first 1M of RAM\"", "        pass", LOWMEM),
    m("setup.reserve_low", "setup.py", "CONFIG_X86_RESERVE_LOW reserves 4 KiB, not 64 KiB", "setup.py",
      "RESERVE_LOW = 64 << 10", "RESERVE_LOW = 4 << 10", LOWMEM),
    m("e820.smaller_type_wins", "e820.py:E820Table.update_table", "on overlap the smaller type wins", "e820.py",
      "new_type = max(active, default=0)", "new_type = min(active, default=0)",
      f"{REAL}[midboot-qemu64-2g-memmap-init_mem_mapping]"),
    m("e820.no_adjacent_merge", "e820.py:E820Table.update_table", "adjacent entries of one type are not merged",
      "e820.py", "if out and out[-1].type == cur_type and out[-1].end == cur_start:", "if False:",
      equivalent="every point at one address is applied before the type is looked at, so a stretch of one type "
                 "never ends where another of the same type begins: the branch cannot be reached"),
    m("e820.end_of_ram_any_type", "e820.py:E820Table.end_of_ram_pfn", "max_pfn from the highest entry of any type",
      "e820.py", "for e in self.entries if e.type == E820_RAM), default=0)", "for e in self.entries), default=0)",
      REAL_BYTES),
    m("e820.mem_keeps_size", "e820.py:parse_mem_options", "mem=SIZE keeps SIZE + 1 GiB", "e820.py",
      "                table.range_remove(size, U64 - size, E820_RAM)\n                continue\n            for one",
      "                table.range_remove(size + (1 << 30), U64 - size, E820_RAM)\n                continue\n"
      "            for one", f"{REAL}[midboot-qemu64-4g-mem1500m-init_mem_mapping]"),
    m("e820.mem_all_types", "e820.py:parse_mem_options", "mem=SIZE removes every entry above SIZE, not only RAM",
      "e820.py", "                    raise ValueError(val)\n"
      "                table.range_remove(size, U64 - size, E820_RAM)",
      "                    raise ValueError(val)\n                table.range_remove(size, U64 - size, None)", LOWMEM),
    m("e820.mem_zero_applied", "e820.py:parse_mem_options", "mem=0 removes all RAM (parse_memopt: -EINVAL)",
      "e820.py", "                if size == 0:  # parse_memopt", "                if False:  # parse_memopt",
      f"{LOWMEM}::test_mem_zero_is_ignored"),
    m("e820.memmap_reserved_is_ram", "e820.py:parse_mem_options", "memmap=SIZE$ADDR adds RAM", "e820.py",
      "\"$\": E820_RESERVED", "\"$\": E820_RAM", f"{REAL}[midboot-qemu64-2g-memmap-init_mem_mapping]"),
    m("e820.memmap_at_is_reserved", "e820.py:parse_mem_options", "memmap=SIZE@ADDR adds reserved memory",
      "e820.py", "\"@\": E820_RAM", "\"@\": E820_RESERVED", LOWMEM),
    m("e820.memmap_acpi", "e820.py:parse_mem_options", "memmap=SIZE#ADDR adds reserved (not ACPI) memory",
      "e820.py", "\"#\": E820_ACPI", "\"#\": E820_RESERVED", LOWMEM),
    m("e820.memmap_plain_ignored", "e820.py:parse_mem_options", "memmap=SIZE (no @#$!) is ignored instead of acting "
      "as mem=", "e820.py", "                if not rest:\n                    table.range_remove(size, U64 - size, "
      "E820_RAM)", "                if not rest:\n                    table.range_remove(U64, 0, E820_RAM)", LOWMEM),
    m("e820.memparse_suffix", "e820.py:memparse", "K/M/G suffixes ignored", "e820.py",
      "        value <<= _SUFFIX[t[j].upper()]", "        value <<= 0", LOWMEM),
    m("memblock.bottom_up", "memblock.py:Memblock.find_in_range", "memblock finds the lowest fitting block "
      "(bottom-up) instead of the highest", "memblock.py", "        mem, res = self.memory, self.reserved\n",
      "        for ms, me in self.memory:\n"
      "            cand = (max(ms, start) + align - 1) & ~(align - 1)\n"
      "            while cand + size <= min(me, end):\n"
      "                clash = [e for s, e in self.reserved if s < cand + size and cand < e]\n"
      "                if not clash:\n"
      "                    return cand\n"
      "                cand = (max(clash) + align - 1) & ~(align - 1)\n"
      "        return 0\n"
      "        mem, res = self.memory, self.reserved\n", REAL, DECISIONS),
    m("memblock.region_union", "memblock.py:Memblock.is_region_memory", "memblock_is_region_memory true for a "
      "block touching memory at all", "memblock.py",
      "return i >= 0 and self.memory[i][0] <= base and base + size <= self.memory[i][1]",
      "return any(s < base + size and base < e for s, e in self.memory)",
      f"{IMM}::test_direct_map_respects_e820_holes_and_maps_the_isa_range"),
    # ---- early_ioremap.py ------------------------------------------------------------------------------
    m("ioremap.btmap_pmd", "consts.py:CURRENT", "6.1's bm_pte under level2_fixmap_pgt[504], not [505]",
      "consts.py", "btmap_pmd=505,", "btmap_pmd=504,", f"{REAL}[midboot-qemu64-512m-setup_arch]"),
    m("ioremap.walk_by_symbol", "early_ioremap.py:early_ioremap_pmd", "the btmap pmd found from init_top_pgt's "
      "symbol, not through __va(read_cr3_pa()) (no early faults)", "early_ioremap.py",
      "    base = ctx.va(ctx.pv.mmu.read_cr3() & ctx.pgt.pte_pfn_mask)  # __va(read_cr3_pa())",
      "    base = ctx.layout.top_pgt", f"{REAL}[midboot-qemu64-512m-setup_arch]"),
    m("ioremap.link_kernpg", "early_ioremap.py:early_ioremap_init", "bm_pte linked with _KERNPG_TABLE",
      "early_ioremap.py", "    pmd_populate_kernel(ctx, VirtAddr(pmd), bm_pte)",
      "    ctx.pv.mmu.set_pmd(VirtAddr(pmd), ctx.pa(bm_pte) | 0x063)", f"{REAL}[midboot-qemu64-512m-setup_arch]"),
    m("ioremap.unmap_kept", "early_ioremap.py:early_memunmap", "early_memunmap leaves the btmap PTEs in place",
      "early_ioremap.py", "        mmu.set_pte(VirtAddr(ctx.sym(\"bm_pte\") + 8 * ctx.pgt.pte_index(va + k * 4096)), "
      "mmu.make_entry(0))", "        pass", LOWMEM),
    # ---- microcode.py -----------------------------------------------------------------------------------
    m("ucode.v39_amd", "microcode.py:load_ucode_bsp", "v3.9 loads on AMD family >= 0x10 too", "microcode.py",
      "        if vendor is Vendor.INTEL and family >= 6:\n            load_ucode_vendor_bsp(ctx, Vendor.INTEL)",
      "        if vendor is Vendor.INTEL and family >= 6 or vendor is Vendor.AMD and family >= 0x10:\n"
      "            load_ucode_vendor_bsp(ctx, vendor)", "tests/kernel/test_cpu_identity.py"),
    m("ucode.intel_family", "microcode.py:load_ucode_bsp", "6.1 loads on Intel family 5", "microcode.py",
      "if not (vendor is Vendor.INTEL and family >= 6) and", "if not (vendor is Vendor.INTEL and family >= 5) and",
      "tests/kernel/test_cpu_identity.py"),
    m("ucode.amd_family", "microcode.py:load_ucode_bsp", "6.1 loads on AMD family 0xf", "microcode.py",
      "not (vendor is Vendor.AMD and family >= 0x10)", "not (vendor is Vendor.AMD and family >= 0xF)",
      "tests/kernel/test_cpu_identity.py"),
    m("ucode.hypervisor", "microcode.py:check_loader_disabled_bsp", "the hypervisor bit does not disable the 6.1 "
      "loader", "microcode.py", "    if boot_cpu_has(ctx.cpu, X86Feature.HYPERVISOR):", "    if False:",
      "tests/kernel/test_cpu_identity.py", REAL),
    m("ucode.dis_ucode_ldr", "microcode.py:check_loader_disabled_bsp", "dis_ucode_ldr on the command line ignored",
      "microcode.py", "    if cmdline_find_option_bool(ctx, \"dis_ucode_ldr\"):", "    if False:",
      "tests/kernel/test_cpu_identity.py"),
    m("ucode.ext_family", "cpufeature.py:x86_family", "the extended family is not added for base family 0xf",
      "cpufeature.py", "        family += (sig >> 20) & 0xFF", "        family += 0",
      "tests/kernel/test_cpu_identity.py"),
    # ---- boot_data.py ---------------------------------------------------------------------------------
    m("bootdata.ext_cmdline", "boot_data.py:copy_bootdata", "ext_cmd_line_ptr ignored", "boot_data.py",
      " | ctx.rd(lay[\"boot_params\"] + bp.EXT_CMD_LINE_PTR, 4) << 32", "", LOWMEM),
    m("bootdata.ext_ramdisk", "boot_data.py:ramdisk_range", "ext_ramdisk_image ignored (ramdisk read below 4 GiB)",
      "boot_data.py", "image = ctx.rd(b + bp.RAMDISK_IMAGE, 4) | ctx.rd(b + bp.EXT_RAMDISK_IMAGE, 4) << 32",
      "image = ctx.rd(b + bp.RAMDISK_IMAGE, 4)",
      f"{EARLY_PF}::test_ramdisk_above_4g_is_read_through_the_early_handler"),
    # ---- added with the 5-level, Xen PV, i386 and 6.1 cleanup_highmap work --------------------------------
    m("startup.fixup_top_511_61", "head_64.py:startup_64", "6.1's early_top_pgt[511] assignment without "
      "load_delta", "head_64.py",
      "\"level4_kernel_pgt\" if la57 else \"level3_kernel_pgt\") + _PAGE_TABLE + load_delta)",
      "\"level4_kernel_pgt\" if la57 else \"level3_kernel_pgt\") + _PAGE_TABLE)",
      f"{STARTUP}::test_relocated_kernel_sets_phys_base_and_fixes_the_high_mapping", DECISIONS),
    m("startup.fixup_l4_511", "head_64.py:startup_64", "5-level: level4_kernel_pgt[511] not fixed up by load_delta",
      "head_64.py", "addq(phys(\"level4_kernel_pgt\") + g.entry_size * (g.ptrs_per_p4d - 1), load_delta)",
      "addq(phys(\"level4_kernel_pgt\") + g.entry_size * (g.ptrs_per_p4d - 1), 0)",
      "tests/kernel/test_decompressor.py", DECISIONS),
    m("startup.ident_p4d_alias", "head_64.py:_identity_map", "5-level: p4d[(k+1) % 512] not pointed at the PUD page",
      "head_64.py", "ctx.wr(below + w * ((k + 1) % g.ptrs_per_p4d), pud + _KERNPG_TABLE)",
      "ctx.wr(below + w * ((k + 1) % g.ptrs_per_p4d), 0)",
      "tests/kernel/test_decompressor.py::test_5_level_switchover_identity_map_links_pgd_and_p4d_twice"),
    m("startup.la57_ignored", "head_64.py:check_la57_support", "check_la57_support ignores CR4.LA57 (4-level "
      "geometry on a 5-level CPU state)", "head_64.py",
      "if not (ctx.profile.la57 and native_read_cr4(ctx.cpu) & Cr4.LA57):", "if True:",
      "tests/kernel/test_decompressor.py", f"{REAL}[midboot-max-la57-12g-init_mem_mapping]"),
    m("startup.la57_page_offset", "head_64.py:check_la57_support", "5-level keeps the 4-level page_offset_base",
      "head_64.py", "ctx.page_offset, ctx.maxmem = ctx.profile.page_offset_l5, 1 << 52",
      "ctx.page_offset, ctx.maxmem = ctx.page_offset, 1 << 52", f"{REAL}[midboot-max-la57-12g-init_mem_mapping]",
      "tests/kernel/test_decompressor.py"),
    m("startup.la57_maxmem", "head_64.py:check_la57_support", "5-level keeps MAX_PHYSMEM_BITS 46", "head_64.py",
      "ctx.page_offset, ctx.maxmem = ctx.profile.page_offset_l5, 1 << 52",
      "ctx.page_offset, ctx.maxmem = ctx.profile.page_offset_l5, 1 << 46",
      "tests/kernel/test_decompressor.py::test_ram_above_64_tib_is_mapped"),
    m("tramp.ebda_ignored", "trampoline.py:find_trampoline_placement", "the EBDA does not lower the trampoline",
      "trampoline.py", "    if BIOS_START_MIN < ebda_start < bios_start:\n        bios_start = ebda_start",
      "    if False:\n        bios_start = ebda_start", "tests/kernel/test_decompressor.py"),
    m("tramp.no_clamp", "trampoline.py:find_trampoline_placement", "a BDA base-memory size outside "
      "[BIOS_START_MIN, BIOS_START_MAX] is trusted", "trampoline.py",
      "    if bios_start < BIOS_START_MIN or bios_start > BIOS_START_MAX:", "    if False:",
      "tests/kernel/test_decompressor.py"),
    m("tramp.efi_reads_bda", "trampoline.py:find_trampoline_placement", "an EFI boot still reads the BIOS data "
      "area", "trampoline.py", "not in (b\"EL32\", b\"EL64\"):", "not in ():", "tests/kernel/test_decompressor.py"),
    m("tramp.e820_ignored", "trampoline.py:find_trampoline_placement", "the e820 RAM entries do not lower the "
      "trampoline", "trampoline.py", "        if bios_start <= addr or kind != E820_RAM:\n            continue",
      "        if True:\n            continue", "tests/kernel/test_decompressor.py"),
    m("highmap.image_size_61", "consts.py:CURRENT", "6.1's cleanup_highmap walks 512 MiB (KERNEL_IMAGE_SIZE "
      "without RANDOMIZE_BASE), not 1 GiB", "consts.py", "kernel_image_size=1 << 30,", "kernel_image_size=512 << 20,",
      f"{REAL_BYTES}::test_level2_kernel_pgt_bytes_at_x86_64_start_kernel"),
    m("imm.gbpages_no_pse", "init.py:probe_page_size_mask", "6.1 allows 1 GiB pages on a CPU without PSE",
      "init.py", "(pse or not ctx.profile.gbpages_need_pse)", "True", DECISIONS, IMM),
    m("imm.pti_keeps_global", "init.py:probe_page_size_mask", "PTI does not drop _PAGE_GLOBAL from "
      "__default_kernel_pte_mask", "init.py",
      "st.default_kernel_pte_mask &= ~_PAGE_GLOBAL  # \"except", "pass  # \"except",
      f"{REAL}[midboot-qemu64-1g-pti-init_mem_mapping]", DECISIONS),
    m("early.recursion_check_first_61", "consts.py:CURRENT", "6.1 checks early_recursion_flag on entry (v3.9) "
      "instead of only for a fault nothing handled", "consts.py",
      "recursion_halt=3, recursion_check_first=False,", "recursion_halt=3, recursion_check_first=True,",
      EARLY_PF, DECISIONS),
    m("builders.no_alloc_pud_l5", "init_64.py:phys_p4d_init", "5-level: paravirt_alloc_pud not called before "
      "set_p4d", "init_64.py", "            mmu.alloc_pud(Pfn(pa >> 12))\n            mmu.set_p4d",
      "            mmu.set_p4d",
      "tests/kernel/test_seams.py::test_5_level_direct_map_pud_pages_are_announced_before_set_p4d"),
    m("xen.write_cr3_late_always", "paravirt/xen.py:XenMmuOps._write_cr3_late", "the fixed kernel starts with the "
      "full xen_write_cr3 (seed 004's bug, no xen_write_cr3_init)", "paravirt/xen.py",
      "return self.full or guest(self.ctx).write_cr3_late", "return True", "tests/xen/test_seed004.py"),
    m("xen.write_cr3_never_full", "paravirt/xen.py:XenMmuOps._write_cr3_late", "xen_post_allocator_init does not "
      "switch write_cr3 to the full op", "paravirt/xen.py",
      "return self.full or guest(self.ctx).write_cr3_late", "return guest(self.ctx).write_cr3_late",
      "tests/xen/test_seed004.py::test_write_cr3_after_post_allocator_init_also_loads_the_user_base"),
    m("xen.mask_rw_none", "xen/mmu.py:mask_rw_pte", "mask_rw_pte never drops _PAGE_RW (page-table pages mapped "
      "writable)", "xen/mmu.py", "        return pte & ~_PAGE_RW\n    return pte", "        return pte\n    return pte",
      "tests/xen/test_seed004.py::test_mask_rw_pte_write_protects_the_page_table_buffer"),
    m("xen.mask_rw_ioremap", "xen/mmu.py:mask_rw_pte", "early_ioremap's PTE page: the page being set up is made "
      "read-only too", "xen/mmu.py", "(early_ioremap and pfn != st.pgt_buf_end - 1)", "early_ioremap",
      "tests/xen/test_seed004.py::test_mask_rw_pte_write_protects_the_page_table_buffer"),
    m("xen.no_mark_pinned", "xen/enlighten.py:xen_post_allocator_init", "xen_mark_init_mm_pinned not called "
      "(init_mm's pages not marked PG_pinned)", "xen/enlighten.py", "    n = xen_mark_init_mm_pinned(ctx)",
      "    n = 0", "tests/xen/test_seed004.py::test_post_allocator_init_marks_init_mms_tables_pinned"),
    m("i386.pse_text_last_byte", "i386/init.py:kernel_physical_mapping_init", "a large page is executable only "
      "when its first byte is kernel text (the last byte not checked)", "i386/init.py",
      "text = is_kernel_text(ctx, address) or is_kernel_text(ctx, address2)",
      "text = is_kernel_text(ctx, address)", "tests/kernel/test_i386_builders.py",
      equivalent="is_kernel_text is PAGE_OFFSET <= addr <= __init_end and address <= address2 (lowmem ends "
                 "below 4 GiB, no wrap): whenever the last byte is text the first byte is too"),
    m("i386.no_pse", "i386/init.py:kernel_physical_mapping_init", "lowmem mapped with 4 KiB pages on a PSE CPU",
      "i386/init.py", "    pse = boot_cpu_has(ctx.cpu, X86Feature.PSE)\n    with ctx.running(\"kernel_physical",
      "    pse = False\n    with ctx.running(\"kernel_physical", "tests/kernel/test_i386_builders.py"),
    m("i386.setup_done_no_alias", "i386/paravirt.py:NativeInitOps.pagetable_setup_done", "PAE: pgd[0] not "
      "aliased to the first kernel pmd", "i386/paravirt.py",
      "                set_pgd(ctx, base, ctx.entry_val(ctx.rd(base + 8 * USER_PTRS_PER_PGD_PAE, 8)))",
      "                pass", "tests/kernel/test_i386_hooks.py"),
    m("i386.setup_start_no_zero_page", "i386/paravirt.py:NativeInitOps.pagetable_setup_start", "PAE: user pgd "
      "entries left as head.S wrote them (not __pa(empty_zero_page) | P)", "i386/paravirt.py",
      "                for i in range(USER_PTRS_PER_PGD_PAE):\n                    set_pgd(ctx, base + 8 * i, zero)",
      "                for i in range(0):\n                    set_pgd(ctx, base + 8 * i, zero)",
      "tests/kernel/test_i386_hooks.py"),
)
