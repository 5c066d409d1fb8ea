"""A real Linux kernel stopped mid-boot, as fixtures, and the model compared with it (issue 9).

``capture`` boots a Debian 6.1 kernel under ``qemu-system-x86_64`` (TCG, ``nokaslr``) with ``-S -gdb``, stops
it with gdb's hardware breakpoints at ``x86_64_start_kernel``, at the entry of ``init_mem_mapping`` and just
after it returns (``idt_setup_early_pf``), and records each instant through QMP: registers, every
page-table page reachable from CR3 (and from ``early_top_pgt``/``init_top_pgt``), ``next_early_pgt``,
``boot_params``, ``info tlb``. Symbol addresses come from the same kernel's ``/proc/kallsyms``
(``kallsyms``). The same run measures where the decompressor put its 5-level trampoline from QEMU's CPU
log of low memory, with the BIOS data area words it was placed from (``lowmem``). ``fixture`` reads such a
recording back, ``enumerate`` lists its leaves and table links with the ptdump engine, ``model`` turns a
fixture into ``earlymm boot`` arguments and runs the model, and ``compare`` says where the model's tables
(and trampoline) differ from the kernel's.
"""
