"""``earlymm boot --pv xen``: the options of the Xen PV boot and how they are checked (issue 11).

A PV domU has no boot loader, BIOS or e820 of its own: the native loader's options mean nothing there,
and Xen's options mean nothing on bare metal. Either way the answer is one line and exit 2.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from earlymm.cli.common import Parser, UsageError, size_text
from earlymm.kernel.xen.guest_bugs import GUEST_BUGS
from earlymm.tools.argtypes import int_range

if TYPE_CHECKING:  # the Xen model is loaded only for a --pv xen boot
    from earlymm.arch.cpuid import CpuIdentity
    from earlymm.arch.modes import Features
    from earlymm.platform.xen.domain import DomainConfig

XEN_DEFAULT_MEM = 1 << 30
# native-only options and their defaults: given with --pv xen they are refused
NATIVE_ONLY: dict[str, tuple[str, Any]] = {
    "e820": ("--e820", None), "kernel_at": ("--kernel-at", 0x100_0000), "kernel_symbols": ("--kernel-symbols", None),
    "boot_params_at": ("--boot-params-at", 0x1_4000), "ramdisk": ("--ramdisk", None),
    "cmdline_at": ("--cmdline-at", 0x2_0000), "variant": ("--variant", "merged"),
    "pool_access": ("--pool-access", "high-map"), "pool": ("--pool", 64), "force_nx": ("--force-nx", False),
    "paging": ("--paging", 4), "decompressor": ("--decompressor", None), "loader_paging": ("--loader-paging", 4),
    "no_la57": ("--no-la57", False), "bda_base": ("--bda-base", None), "ebda": ("--ebda", None),
    "efi_loader": ("--efi-loader", None), "hypervisor": ("--hypervisor", False),
}
XEN_ONLY: dict[str, tuple[str, Any]] = {
    "xen_write_cr3": ("--xen-write-cr3", None), "xen_domid": ("--xen-domid", None),
    "xen_pcpu": ("--xen-pcpu", None), "xen_seed": ("--xen-seed", None), "xen_version": ("--xen-version", None),
    "xen_guest_bug": ("--xen-guest-bug", None), "kernel_image": ("--kernel-image", None),
    "dom0_mem": ("--dom0-mem", None), "dom0_initrd": ("--dom0-initrd", None),
}
XEN417_ONLY = ("kernel_image", "dom0_mem", "dom0_initrd")
# what a Xen 4.17 dom0 boot takes besides its own options (issue 12): the host's memory and the command line
XEN417_ALLOWED = {"e820", "kernel_symbols"}


def add_xen_options(p: Parser) -> None:
    p.add_argument("--pv", choices=("native", "xen"), default="native",
                   help="paravirt backend: native (bare metal, the default) or xen (a 64-bit PV domU on a "
                        "simulated Xen 4.2: the kernel enters at startup_xen on the domain builder's tables; with "
                        "--arch i386 a 32-bit domU of 2.6.23's Xen guest on Xen 3.1, 2-level or --pae)")
    p.add_argument("--xen-write-cr3", choices=("early", "late"),
                   help="which write_cr3 Xen's pv_ops start with: early = xen_write_cr3_init (seed 004's fix, the "
                        "default); late = xen_write_cr3, the kernel before the fix, which reads page->private "
                        "before the vmemmap exists")
    p.add_argument("--xen-domid", type=int_range(1, 0x7FEF, "--xen-domid"),
                   help="the domain's id (default 7, seed 004's)")
    p.add_argument("--xen-pcpu", type=int_range(0, 4095, "--xen-pcpu"),
                   help="the physical CPU the vCPU runs on, as Xen reports it (default 3, seed 004's)")
    p.add_argument("--xen-seed", type=int_range(0, 2**32 - 1, "--xen-seed"),
                   help="seed of the shuffle of the domain's machine frames (default 2013)")
    p.add_argument("--xen-version", choices=("4.2", "4.17"),
                   help="the hypervisor modelled: 4.2 (4.2.0, seed 004's domU, the default) or 4.17 (Debian's 4.17.7 "
                        "building --kernel-image as its PV dom0 on the host of --mem/--e820)")
    p.add_argument("--kernel-image", metavar="FILE",
                   help="Xen 4.17: the dom0 kernel, a bzImage (gzip or xz payload) or vmlinux with Xen ELF notes")
    p.add_argument("--dom0-mem", metavar="SPEC",
                   help="Xen 4.17: Xen's dom0_mem=[min:AMT,][max:AMT,][AMT] (default: all but 1/16, at most 128 MiB)")
    p.add_argument("--dom0-initrd", metavar="FILE", help="Xen 4.17: dom0's initrd module (only its size matters)")
    p.add_argument("--xen-guest-bug", choices=sorted(GUEST_BUGS),
                   help="boot a guest with a bug of the class Xen catches: " + "; ".join(
                       f"{k}: {v}" for k, v in sorted(GUEST_BUGS.items())))


def refuse_native_options(args: argparse.Namespace) -> None:
    """A Xen PV domain (either architecture) has no boot loader, BIOS or e820 of its own, and no HTML view."""
    given = [flag for dest, (flag, default) in NATIVE_ONLY.items() if getattr(args, dest) != default]
    if given:
        raise UsageError(f"{given[0]} means nothing for a Xen PV domain (no boot loader, BIOS or e820 of its own; "
                         "the domain builder places the kernel)")
    if getattr(args, "html", None) is not None:
        raise UsageError("--html draws native boots; a --pv xen boot is reported as text or --json")


def check_combination(args: argparse.Namespace) -> None:
    """One line, exit 2, for options the chosen backend cannot use."""
    if args.pv == "xen" and args.xen_version == "4.17":
        given = [flag for dest, (flag, default) in NATIVE_ONLY.items()
                 if dest not in XEN417_ALLOWED and getattr(args, dest) != default]
        given += [XEN_ONLY[d][0] for d in ("xen_write_cr3", "xen_guest_bug", "xen_domid", "xen_pcpu", "xen_seed")
                  if getattr(args, d) is not None]
        if given:
            raise UsageError(f"{given[0]} is not an option of the Xen 4.17 dom0 boot")
        if getattr(args, "html", None) is not None:
            raise UsageError("--html draws native boots; a --pv xen boot is reported as text or --json")
        if args.profile not in (None, "current"):
            raise UsageError("--xen-version 4.17 boots the kernel of --kernel-image (--profile current)")
        return
    if args.pv == "xen":
        given = [XEN_ONLY[d][0] for d in XEN417_ONLY if getattr(args, d) is not None]
        if given:
            raise UsageError(f"{given[0]} needs --xen-version 4.17")
        refuse_native_options(args)
        if args.profile not in (None, "v3.9"):
            raise UsageError("--pv xen models the v3.9 kernel of seed 004 (--profile v3.9)")
        if args.mem is not None and args.mem < 64 << 20:
            raise UsageError(f"--mem {size_text(args.mem)}: a Xen PV domain needs at least 64 MiB for the builder's "
                             "initial mapping")
        if args.mem is not None and args.mem > 1 << 40:
            raise UsageError(f"--mem {size_text(args.mem)}: the model's Xen hosts domains of at most 1 TiB")
        return
    given = [flag for dest, (flag, default) in XEN_ONLY.items() if getattr(args, dest) != default]
    if given:
        raise UsageError(f"{given[0]} needs --pv xen")


def domain_config(args: argparse.Namespace, features: Features, identity: CpuIdentity) -> DomainConfig:
    from earlymm.platform.xen.domain import DomainConfig
    from earlymm.platform.xen.hypervisor import XenIdentity

    mem = args.mem if args.mem is not None else XEN_DEFAULT_MEM
    ident = XenIdentity(version="4.2.0", domid=7 if args.xen_domid is None else args.xen_domid,
                        pcpu=3 if args.xen_pcpu is None else args.xen_pcpu)
    return DomainConfig(nr_pages=mem >> 12, cmdline=args.cmdline, seed=2013 if args.xen_seed is None else args.xen_seed,
                        ident=ident, features=features, identity=identity)
