"""``earlymm boot --arch i386 [--pae] [--pv native|xen]``: Linux 2.6.21's i386 early boot (seed 002), on a PC
or — ``--pv xen`` — as a 32-bit PV domU of a simulated Xen 3.1 with 2.6.23's Xen guest hooks.

The same conventions as the x86-64 boot — the timeline, ``--until``, ``--save-core`` (here a 32-bit
QEMU-format core), ``--json``, ``--trace`` — with the options that mean something for this kernel. An
option of the x86-64 boot path is refused in one line (exit 2), never silently ignored.
"""

from __future__ import annotations

import argparse
import sys

from earlymm.arch.modes import Features
from earlymm.cli.boot_args import cpu_identity, e820_arg, given, parse_until, print_report, ramdisk_arg, write_core
from earlymm.cli.boot_xen_args import XEN417_ONLY, check_combination, refuse_native_options
from earlymm.cli.common import UsageError, size_text
from earlymm.cli.trace_writes_args import trace_writes
from earlymm.images import WriteError
from earlymm.images.safe_write import check_target
from earlymm.kernel.i386.boot import boot
from earlymm.kernel.i386.consts import I386_PROFILES, LOAD_PHYSICAL_ADDR
from earlymm.kernel.i386.context import I386Config
from earlymm.kernel.i386.layout import DEFAULT_IMAGE_SIZE
from earlymm.kernel.phases import I386_PHASES, I386_XEN_PHASES
from earlymm.platform.pc import MachineConfig
from earlymm.platform.xen.domain32 import Domain32Config
from earlymm.platform.xen.hypervisor import XenIdentity
from earlymm.tools.boot_progress import BootProgress
from earlymm.tools.boot_report_i386 import render_text, save_core, to_json

XEN_DEFAULT_MEM, XEN_MIN_MEM, XEN_MAX_MEM = 256 << 20, 32 << 20, 2 << 30
MAX_MEM_I386 = 64 << 30  # a 2.6.21 PAE kernel addresses 36 bits; without PAE it uses 4 GiB of it

# options of the x86-64 path (their defaults are marked: boot_args.given tells them from given values)
X86_64_ONLY = ("kernel_at", "kernel_symbols", "pool", "variant", "pool_access", "force_nx", "no_gbpages", "paging",
               "decompressor", "loader_paging", "no_la57", "efi_loader", "html")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_xen_options(args: argparse.Namespace) -> None:
    """``--pv xen``: a 32-bit PV domU — no boot loader, BIOS or e820; none of the x86-64 guest's options."""
    refuse_native_options(args)
    for dest in ("xen_write_cr3", "xen_guest_bug", "xen_version", *XEN417_ONLY):
        if getattr(args, dest, None) is not None:
            raise UsageError(f"{_flag(dest)} belongs to the x86-64 Xen guest (v3.9, seed 004); --arch i386 --pv xen "
                             "runs 2.6.23's i386 Xen guest on Xen 3.1")
    if args.mem is not None and not XEN_MIN_MEM <= args.mem <= XEN_MAX_MEM:
        raise UsageError(f"--mem {size_text(args.mem)}: the model's 32-bit Xen hosts i386 domains of "
                         f"{size_text(XEN_MIN_MEM)} to {size_text(XEN_MAX_MEM)} (its host stays below 4 GiB)")


def check_options(args: argparse.Namespace) -> None:
    """Refuse what means nothing for a 2.6.21 i386 kernel."""
    if args.pv == "xen":
        check_xen_options(args)
    else:
        check_combination(args)  # the Xen-only options need --pv xen
    for name in X86_64_ONLY:
        if given(getattr(args, name)):
            why = {"kernel_at": f"2.6.21's head.S runs where it was linked: the kernel is loaded at "
                                f"{LOAD_PHYSICAL_ADDR:#x}",
                   "paging": "i386 paging is 2-level, or PAE with --pae"}.get(name, "it belongs to the x86-64 boot")
            raise UsageError(f"{_flag(name)} means nothing with --arch i386 ({why})")
    if args.profile is not None and args.profile not in I386_PROFILES:
        raise UsageError(f"--profile {args.profile} is an x86-64 kernel; --arch i386 models "
                         f"{', '.join(I386_PROFILES)}")
    if args.mem is not None and args.mem < 4 << 20:
        raise UsageError(f"--mem: {args.mem} bytes is smaller than the kernel")
    if args.mem is not None and args.mem > MAX_MEM_I386:
        raise UsageError(f"--mem {size_text(args.mem)}: a 2.6.21 i386 kernel addresses at most "
                         f"{size_text(MAX_MEM_I386)} (PAE's 36-bit physical addresses)")


def machine_config_i386(args: argparse.Namespace) -> MachineConfig:
    e820 = e820_arg(args, MAX_MEM_I386, "the 64 GiB a 2.6.21 PAE kernel can address", "63G")
    rd_at, rd_size = ramdisk_arg(args)
    feats = Features(nx=not args.no_nx, gbpages=False, pse=not args.no_pse, pge=not args.no_pge, la57=False,
                     pks=False)
    for name, value in (("--bda-base", args.bda_base), ("--ebda", args.ebda)):
        if value is not None and not 0 <= value <= 0xFFFF:
            raise UsageError(f"{name} {value:#x}: the BIOS data area holds a 16-bit word (0..0xffff)")
    return MachineConfig(e820=tuple(e820), kernel_at=LOAD_PHYSICAL_ADDR, boot_params_at=args.boot_params_at,
                         cmdline=args.cmdline, cmdline_at=args.cmdline_at, ramdisk_at=rd_at, ramdisk_size=rd_size,
                         features=feats, identity=cpu_identity(args), bda_base_kib=args.bda_base,
                         ebda_segment=args.ebda)


def domain_config_i386(args: argparse.Namespace) -> Domain32Config:
    """The 32-bit domain: its memory, command line, the shuffle of its machine frames, where Xen runs it."""
    feats = Features(nx=not args.no_nx, gbpages=False, pse=not args.no_pse, pge=not args.no_pge, la57=False,
                     pks=False)
    ident = XenIdentity(version="3.1.0", domid=1 if args.xen_domid is None else args.xen_domid, vcpu=0,
                        pcpu=0 if args.xen_pcpu is None else args.xen_pcpu)
    return Domain32Config(nr_pages=(args.mem if args.mem is not None else XEN_DEFAULT_MEM) >> 12, cmdline=args.cmdline,
                          seed=2007 if args.xen_seed is None else args.xen_seed, ident=ident, features=feats,
                          identity=cpu_identity(args))


def main_i386(args: argparse.Namespace) -> int:
    check_options(args)
    phases = I386_XEN_PHASES if args.pv == "xen" else I386_PHASES
    until = parse_until(args.until, phases, "i386 --pv xen" if args.pv == "xen" else "i386") if args.until else None
    if args.save_core is not None:
        try:
            check_target(args.save_core, "core")
        except WriteError as e:
            raise UsageError(str(e)) from None
    machine = domain_config_i386(args) if args.pv == "xen" else machine_config_i386(args)
    config = I386Config(I386_PROFILES[args.profile or "2.6.21"], pae=args.pae, pv=args.pv or "native",
                        image_size=args.image_size if args.image_size is not None else DEFAULT_IMAGE_SIZE)
    tw = trace_writes(args, "i386")
    progress = None
    if args.progress or sys.stderr.isatty():
        ram = machine.nr_pages << 12 if isinstance(machine, Domain32Config) else \
            sum(r.end - r.start for r in machine.ram())
        progress = BootProgress(sys.stderr, ram, tty=sys.stderr.isatty())
    try:
        result = boot(machine, config, until=until, trace=True, listeners=[progress.on_event] if progress else [],
                      instrument=tw.tracer.attach if tw else None)
    except ValueError as e:
        raise UsageError(str(e)) from None
    finally:
        if progress:
            progress.close()
    if tw is not None:
        tw.check()
    if args.save_core is not None:
        path = args.save_core
        write_core(path, lambda: save_core(result, path))
    return print_report(args, result, result.outcome.crashed, tw, to_json, render_text)
