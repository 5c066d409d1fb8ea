"""``earlymm boot``: run Linux x86-64's early boot on the simulated machine."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from earlymm.arch.cpuid import Vendor
from earlymm.arch.modes import Features
from earlymm.cli.boot_args import (
    MAX_MEM_4LEVEL,
    MAX_MEM_5LEVEL,
    DefaultInt,
    DefaultStr,
    cpu_identity,
    e820_arg,
    parse_until,
    print_report,
    ramdisk_arg,
    read_e820,
    write_core,
)
from earlymm.cli.boot_xen_args import add_xen_options, check_combination, domain_config
from earlymm.cli.common import Parser, UsageError, hexint, size_arg, size_text
from earlymm.cli.trace_writes_args import TraceWrites, add_trace_writes_options, trace_writes
from earlymm.images.safe_write import SYMLINK_POLICY, WriteError, check_target
from earlymm.kernel.boot import BootResult, boot
from earlymm.kernel.consts import PROFILES
from earlymm.kernel.context import KernelConfig, PoolAccess, Variant
from earlymm.kernel.i386.consts import I386_PROFILES
from earlymm.kernel.phases import X86_64_PHASES, XEN_PV_PHASES, Phase
from earlymm.platform.pc import MachineConfig
from earlymm.tools.argtypes import int_range
from earlymm.tools.boot_report import render_text, to_json

if TYPE_CHECKING:  # what only some runs use is imported where they use it (start-up time)
    from earlymm.tools.html import BootRecorder

def add_parser(sub: argparse._SubParsersAction[Parser]) -> None:
    p = sub.add_parser("boot", help="run Linux x86-64's early boot on the simulated machine",
                       description="Run startup_64 → x86_64_start_kernel → setup_arch/init_mem_mapping on the "
                                   "CPU model and tell the story of the page tables; with --arch i386, 2.6.21's "
                                   "startup_32 → setup_arch → paging_init with the paravirt page-table hooks.")
    p.add_argument("--arch", choices=("x86-64", "i386"), default="x86-64",
                   help="the kernel's architecture (default x86-64; i386: Linux 2.6.21, seed 002)")
    p.add_argument("--pae", action="store_true", help="i386: a PAE kernel (CONFIG_X86_PAE, HIGHMEM64G)")
    p.add_argument("--no-pse", action="store_true", help="i386: a CPU without PSE (no large pages)")
    mem = p.add_mutually_exclusive_group()
    mem.add_argument("--mem", type=size_arg, help="RAM size (4G, 64T …); a PC layout with a hole at 3-4 GiB")
    mem.add_argument("--e820", help="e820 map file: 'START END TYPE' per line (END exclusive; ram, reserved, "
                                    "acpi, nvs, unusable), or a kernel log (dmesg: its BIOS-e820:/user: lines), or "
                                    "/sys/firmware/memmap (the directory, or 'grep -r . /sys/firmware/memmap' text)")
    p.add_argument("--kernel-at", type=hexint, default=DefaultInt(0x100_0000),
                   help="physical load address (2 MiB aligned)")
    p.add_argument("--image-size", type=size_arg, help="kernel image size _end - _text (default 24M)")
    p.add_argument("--kernel-symbols", metavar="FILE",
                   help="lay the image out as a real nokaslr build: its /proc/kallsyms (or System.map) text gives "
                        "the address of every table and variable the model uses, and _end - _text its size")
    p.add_argument("--boot-params-at", type=hexint, default=0x1_4000)
    p.add_argument("--ramdisk", help="ADDR:SIZE (default: 16M near the top of RAM below 2 GiB)")
    p.add_argument("--cmdline", default="root=/dev/sda1 ro console=ttyS0 earlyprintk=serial")
    p.add_argument("--cmdline-at", type=hexint, default=0x2_0000)
    p.add_argument("--profile", choices=sorted(PROFILES) + sorted(I386_PROFILES), default=None,
                   help="kernel generation to model (default v3.9; current when 5-level options are given; "
                        "2.6.21 for --arch i386)")
    p.add_argument("--pool", type=int_range(1, 4096, "--pool"), default=DefaultInt(64),
                   help="EARLY_DYNAMIC_PAGE_TABLES, 1..4096 (default 64)")
    p.add_argument("--variant", choices=[v.value for v in Variant], default=DefaultStr("merged"))
    p.add_argument("--pool-access", choices=[v.value for v in PoolAccess], default=DefaultStr("high-map"))
    p.add_argument("--no-nx", action="store_true", help="a CPU without NX (early_pmd_flags lose bit 63)")
    p.add_argument("--force-nx", action="store_true", help="set bit 63 in early_pmd_flags even without NX")
    p.add_argument("--no-gbpages", action="store_true", help="a CPU without 1 GiB pages")
    p.add_argument("--no-pge", action="store_true", help="a CPU without global pages")
    p.add_argument("--cpu-vendor", choices=[v.value for v in Vendor], default="intel",
                   help="CPUID vendor string: GenuineIntel or AuthenticAMD (default intel)")
    p.add_argument("--cpu-family", type=hexint, help="CPU family (default 6 for intel, 0x17 for amd)")
    p.add_argument("--cpu-model", type=hexint, help="CPU model (default 0x3a for intel, 0x1 for amd)")
    p.add_argument("--cpu-stepping", type=hexint, help="CPU stepping (default 9 for intel, 2 for amd)")
    p.add_argument("--hypervisor", action="store_true",
                   help="set the hypervisor bit CPUID.1:ECX[31] (the CPU says it runs under a hypervisor)")
    p.add_argument("--paging", type=int, choices=(4, 5), default=DefaultInt(4),
                   help="5: a kernel with 5-level support (CONFIG_X86_5LEVEL, current profile) on a CPU with LA57; the "
                        "decompressor switches to 5-level paging first (default 4: no decompressor stage)")
    p.add_argument("--decompressor", choices=("v4.14", "rfc", "merged"),
                   help="the decompressor's 4↔5-level switch to run: v4.14 (inside the image), rfc (seed 003: 0x7c00 "
                        "and 0x7000), merged (6.1: a trampoline placed from the BDA/EBDA/e820); default merged with "
                        "--paging 5")
    p.add_argument("--loader-paging", type=int, choices=(4, 5), default=DefaultInt(4),
                   help="the paging mode the boot loader hands over in (5 needs a CPU with LA57)")
    p.add_argument("--no-la57", action="store_true", help="a CPU without 5-level paging (CPUID.7.0:ECX[16] clear)")
    p.add_argument("--bda-base", type=hexint, metavar="KIB",
                   help="BIOS data area 0x413: base memory in KiB (default: from the e820 map, as SeaBIOS)")
    p.add_argument("--ebda", type=hexint, metavar="SEG", help="BIOS data area 0x40e: the EBDA segment")
    p.add_argument("--efi-loader", choices=("EL32", "EL64"),
                   help="boot_params' EFI loader signature: an EFI boot (the BDA is then not trusted)")
    p.add_argument("--until", help="stop after: decompressor, startup_64, x86_64_start_kernel, setup_arch, "
                                   "init_mem_mapping, end; i386: startup_32, setup_arch, pagetable_setup_start, "
                                   "pagetable_init, paging_init, end (with --pv xen: xen_start_kernel for "
                                   "startup_32)")
    p.add_argument("--save-core", metavar="FILE",
                   help="write the machine as a QEMU-format ELF core at the end of the run (gzip-compressed if FILE "
                        "ends in .gz). FILE must be a new or regular file: devices, FIFOs, sockets and directories "
                        f"are refused, and {SYMLINK_POLICY}; it is replaced atomically, and on any error (a "
                        "full disk) nothing is left")
    p.add_argument("--html", metavar="FILE",
                   help="also write one self-contained HTML page: the timeline (phases, CR3 switches, each early #PF, "
                        "pool pages in use), the tables at each event, a zoomable address-space map and a page-table "
                        f"tree explorer (FILE: a new or regular file, replaced atomically; {SYMLINK_POLICY})")
    p.add_argument("--trace", action="store_true", help="print every event")
    p.add_argument("--progress", action="store_true",
                   help="report progress on stderr even when it is not a terminal (a terminal gets it anyway)")
    p.add_argument("--json", action="store_true")
    add_xen_options(p)
    add_trace_writes_options(p)
    p.set_defaults(func=main)


def machine_config(args: argparse.Namespace) -> MachineConfig:
    e820 = e820_arg(args)
    rd_at, rd_size = ramdisk_arg(args)
    la57 = (args.paging == 5 or args.loader_paging == 5 or args.decompressor is not None) and not args.no_la57
    feats = Features(nx=not args.no_nx, gbpages=not args.no_gbpages, pge=not args.no_pge, la57=la57, pks=False)
    for name, value, top in (("--bda-base", args.bda_base, 0xFFFF), ("--ebda", args.ebda, 0xFFFF)):
        if value is not None and not 0 <= value <= top:
            raise UsageError(f"{name} {value:#x}: the BIOS data area holds a 16-bit word (0..0xffff)")
    return MachineConfig(e820=tuple(e820), kernel_at=args.kernel_at, boot_params_at=args.boot_params_at,
                         cmdline=args.cmdline, cmdline_at=args.cmdline_at, ramdisk_at=rd_at, ramdisk_size=rd_size,
                         features=feats, identity=cpu_identity(args), loader_paging=args.loader_paging,
                         bda_base_kib=args.bda_base, ebda_segment=args.ebda, efi_loader=args.efi_loader or "")


def read_kernel_symbols(path: str, image_size: int | None) -> dict[str, int]:
    """``--kernel-symbols``: name → address from /proc/kallsyms or System.map text."""
    if image_size is not None:
        raise UsageError("--kernel-symbols gives the image size (_end - _text): drop --image-size")
    from earlymm.tools.midboot.kallsyms import KallsymsError
    from earlymm.tools.midboot.kallsyms import parse as parse_kallsyms

    try:
        with open(path, encoding="utf-8") as f:
            return dict(parse_kallsyms(f.read()).addresses)
    except (OSError, UnicodeDecodeError, KallsymsError) as e:
        raise UsageError(f"cannot read kernel symbols {path}: {e}") from None


def configure(args: argparse.Namespace) -> tuple[MachineConfig, KernelConfig, Phase | None]:
    """The machine, the kernel and where to stop, from parsed x86-64 ``earlymm boot`` arguments (``UsageError``
    on bad input). ``earlymm matrix`` runs its configurations through here, so its commands reproduce."""
    until = parse_until(args.until, X86_64_PHASES, "x86-64") if args.until else None
    if args.kernel_at % (2 << 20):
        raise UsageError(f"--kernel-at {args.kernel_at:#x} is not 2 MiB aligned (startup_64 would spin in "
                         "bad_address; the simulated loader refuses it)")
    if args.mem is not None and args.mem < 4 << 20:
        raise UsageError(f"--mem: {args.mem} bytes is smaller than the kernel")
    five = resolve_profile(args)
    return machine_config(args), kernel_config(args, five), until


def image_size(args: argparse.Namespace) -> int:
    return args.image_size if args.image_size is not None else 24 << 20


def main(args: argparse.Namespace) -> int:
    if args.arch == "i386":
        from earlymm.cli.boot_i386 import main_i386

        return main_i386(args)
    for flag, given_flag in (("--pae", args.pae), ("--no-pse", args.no_pse)):
        if given_flag:
            raise UsageError(f"{flag} is an option of the i386 boot: give --arch i386")
    if args.profile in I386_PROFILES:
        raise UsageError(f"--profile {args.profile} is an i386 kernel: give --arch i386")
    check_combination(args)
    for path, what in ((args.save_core, "core"), (args.html, "HTML file")):
        if path is not None:
            try:
                check_target(path, what)  # before the boot: a bad path should not cost a run
            except WriteError as e:
                raise UsageError(str(e)) from None
    if args.pv == "xen" and args.xen_version == "4.17":
        from earlymm.cli.boot_xen417 import main_xen417

        if trace_writes(args, "xen-pv") is not None:
            raise UsageError("--trace-writes follows the Xen 4.2 model's boot; --xen-version 4.17 does not have it yet")

        return main_xen417(args, Features(nx=not args.no_nx, gbpages=not args.no_gbpages, pge=not args.no_pge,
                                          la57=False, pks=False), read_e820(args.e820) if args.e820 else None)
    if args.pv == "xen":
        until = parse_until(args.until, XEN_PV_PHASES, "Xen PV x86-64") if args.until else None
        tw = trace_writes(args, "xen-pv")
        return report(args, run_xen(args, until, tw), tw=tw)
    machine, kernel, until = configure(args)
    tw = trace_writes(args, "x86-64")
    progress = None
    if args.progress or sys.stderr.isatty():
        from earlymm.tools.boot_progress import BootProgress

        ram = sum(r.end - r.start for r in machine.ram())
        progress = BootProgress(sys.stderr, ram, tty=sys.stderr.isatty())
    recorder = None
    if args.html is not None:
        from earlymm.tools.html import BootRecorder

        recorder = BootRecorder()
    listeners = ([progress.on_event] if progress else []) + ([recorder.on_event] if recorder else [])
    try:
        result = boot(machine, kernel, until=until, trace=True, image_size=image_size(args), listeners=listeners,
                      pv=recorder.attach if recorder else None, instrument=tw.tracer.attach if tw else None)
    except ValueError as e:
        raise UsageError(str(e)) from None
    finally:
        if progress:
            progress.close()
    return report(args, result, recorder, tw)


def resolve_profile(args: argparse.Namespace) -> bool:
    """Default and check ``--profile`` against the paging options; True when the boot is 5-level capable."""
    five: bool = args.paging == 5 or args.loader_paging == 5 or args.decompressor is not None
    if args.profile is None:
        args.profile = "current" if five else "v3.9"
    if five and args.profile != "current":
        raise UsageError("5-level paging and the decompressor stage need --profile current (v3.9 is 4-level only)")
    if args.mem is not None and args.mem > MAX_MEM_5LEVEL:
        raise UsageError(f"--mem {size_text(args.mem)}: even 5-level paging maps at most {size_text(MAX_MEM_5LEVEL)} "
                         "of RAM (MAXMEM = 2^52)")
    if args.mem is not None and args.mem > MAX_MEM_4LEVEL and not five:
        raise UsageError(f"--mem {size_text(args.mem)}: 4-level paging maps at most {size_text(MAX_MEM_4LEVEL)} of "
                         "RAM (MAXMEM = 2^46, MAX_PHYSMEM_BITS 46), and the boot model runs 4-level paging")
    return five


def kernel_config(args: argparse.Namespace, five: bool) -> KernelConfig:
    """The native kernel the options describe (after :func:`resolve_profile`)."""
    symbols = read_kernel_symbols(args.kernel_symbols, args.image_size) if args.kernel_symbols else None
    return KernelConfig(PROFILES[args.profile], Variant(args.variant), PoolAccess(args.pool_access), args.pool,
                        force_nx=args.force_nx, symbols=symbols,
                        decompressor=args.decompressor or ("merged" if five else None))


def run_xen(args: argparse.Namespace, until: Phase | None, tw: TraceWrites | None = None) -> BootResult:
    """The Xen PV boot (``--pv xen``): the domain's options, the v3.9 kernel, the chosen write_cr3."""
    feats = Features(nx=not args.no_nx, gbpages=not args.no_gbpages, pge=not args.no_pge, la57=False, pks=False)
    from earlymm.kernel.boot_xen import boot_xen

    dom = domain_config(args, feats, cpu_identity(args))
    kernel = KernelConfig(PROFILES["v3.9"])
    try:
        return boot_xen(dom, kernel, write_cr3_late=args.xen_write_cr3 == "late", until=until, trace=True,
                        image_size=image_size(args), bug=args.xen_guest_bug or "",
                        instrument=tw.tracer.attach if tw else None)
    except ValueError as e:
        raise UsageError(str(e)) from None


def report(args: argparse.Namespace, result: BootResult, recorder: BootRecorder | None = None,
           tw: TraceWrites | None = None) -> int:
    """Save the core if asked, then print the story (text or JSON, with the table writes when traced); exit 1
    for a crash."""
    if tw is not None:
        tw.check()
    if args.save_core is not None:
        from earlymm.tools.boot_report import save_core

        path = args.save_core
        write_core(path, lambda: save_core(result, path))
    if recorder is not None:
        from earlymm.tools.html import write_boot_html

        try:
            write_boot_html(args.html, result, recorder)
        except WriteError as e:
            raise UsageError(str(e)) from None
    return print_report(args, result, result.outcome.crashed, tw, to_json, render_text)
