"""``earlymm boot --pv xen --xen-version 4.17 --kernel-image FILE``: Xen 4.17 builds a real kernel as its
PV dom0 (issue 12) and the vCPU stops at the kernel's first instruction (``--until xen_start_kernel``).

The host is ``--mem`` (QEMU 7.2's ``pc`` map) or ``--e820 FILE``; ``--dom0-mem`` is Xen's ``dom0_mem=``;
``--dom0-initrd FILE`` the second multiboot module. The report prints Xen's console (the start-of-day
block) and what the guest sees at the stop: registers, the tables in guest terms.

With ``--kernel-symbols FILE`` (the kernel's kallsyms or System.map) the 6.1 guest runs on: ``--until
setup_arch`` (the default then) stops at the entry of ``init_mem_mapping``, after
``xen_setup_kernel_pagetable``, ``xen_memory_setup`` and ``cleanup_highmap``; ``--until init_mem_mapping``
after it (the direct map in 4 KiB pages, ``load_cr3``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from typing import Any

from earlymm.arch.modes import Features
from earlymm.cli.boot_args import write_core
from earlymm.cli.common import UsageError
from earlymm.hw.faults import SimulationError
from earlymm.hw.memory import Region
from earlymm.images import write_qemu_core
from earlymm.images.cpustate import GPR_NAMES, SEGMENT_NAMES, CpuState, Segment
from earlymm.images.pvkernel import KernelImageError, load_pv_kernel
from earlymm.kernel.xen61.boot import STOPS
from earlymm.platform.xen.dom0_build import Dom0, Dom0Builder
from earlymm.platform.xen.heap import qemu_pc_e820
from earlymm.tools.midboot.kallsyms import KallsymsError
from earlymm.tools.midboot.kallsyms import parse as parse_kallsyms
from earlymm.tools.xencap.guest import GuestView
from earlymm.tools.xencap.model61 import ModelStop, run_dom0
from earlymm.tools.xencap.p2m import P2m

DEFAULT_HOST = 4 << 30
FLAT_KERNEL_CS, FLAT_KERNEL_SS = 0xE033, 0xE02B
CR0, CR4_PV, EFER = 0x8005_003B, 0x660, 0xD01  # what a 64-bit PV vCPU runs with (the fixtures' registers)


def build(args: argparse.Namespace, features: Features, e820: list[Region] | None) -> Dom0:
    """``e820``: the host's map from ``--e820`` (read by the caller), else QEMU's ``pc`` map of ``--mem``."""
    if not args.kernel_image:
        raise UsageError("--xen-version 4.17 builds a real kernel: give --kernel-image FILE (a bzImage or vmlinux)")
    try:
        kernel = load_pv_kernel(args.kernel_image)
    except KernelImageError as e:
        raise UsageError(f"--kernel-image {args.kernel_image}: {e}") from None
    initrd_len = 0
    if args.dom0_initrd:
        try:
            initrd_len = os.stat(args.dom0_initrd).st_size
        except OSError as e:
            raise UsageError(f"--dom0-initrd {args.dom0_initrd}: {e.strerror}") from None
    try:
        host = e820 if e820 is not None else qemu_pc_e820(args.mem if args.mem is not None else DEFAULT_HOST)
        return Dom0Builder(kernel, host, args.dom0_mem or "", initrd_len, args.cmdline,
                           features.gbpages).build()
    except ValueError as e:
        raise UsageError(str(e)) from None


def vcpu(d: Dom0) -> CpuState:
    gprs = [0] * len(GPR_NAMES)
    gprs[GPR_NAMES.index("rsi")] = d.vstartinfo_start
    gprs[GPR_NAMES.index("rsp")] = d.vstack_end
    segs = [Segment() for _ in SEGMENT_NAMES]
    segs[SEGMENT_NAMES.index("cs")] = Segment(FLAT_KERNEL_CS, 0xFFFFFFFF, 0xA0FB00)
    segs[SEGMENT_NAMES.index("ss")] = Segment(FLAT_KERNEL_SS, 0xFFFFFFFF, 0xC0F300)
    return CpuState(tuple(gprs), d.entry, 0x202, tuple(segs), CR0, 0, d.cr3, CR4_PV)


def view(d: Dom0, features: Features) -> GuestView:
    return GuestView(d.mem, (CR0, d.cr3, CR4_PV, EFER), features, P2m(d.p2m, d.vphysmap_start), d.shared_info >> 12)


def summary(d: Dom0, gv: GuestView) -> dict[str, Any]:
    levels = Counter(gv.level_of().values())
    return {"stop": "xen_start_kernel", "rip": f"{d.entry:#x}", "cr3": f"{d.cr3:#x}", "rsp": f"{d.vstack_end:#x}",
            "rsi": f"{d.vstartinfo_start:#x}", "nr_pages": d.nr_pages, "table_pages": len(gv.table_mfns),
            "levels": dict(sorted(levels.items())), "leaves": len(gv.leaves),
            "leaf_sizes": {str(k): v for k, v in sorted(Counter(lf.size for lf in gv.leaves).items())},
            "p2m": {"va": f"{d.vphysmap_start:#x}", "size": d.nr_pages}}


def kernel_symbols(path: str) -> dict[str, int]:
    try:
        with open(path, encoding="utf-8") as f:
            return dict(parse_kallsyms(f.read()).addresses)
    except (OSError, UnicodeDecodeError, KallsymsError) as e:
        raise UsageError(f"cannot read kernel symbols {path}: {e}") from None


def stop_of(args: argparse.Namespace) -> str:
    until = args.until or ("setup_arch" if args.kernel_symbols else "xen_start_kernel")
    if until not in STOPS:
        raise UsageError(f"--until {until}: not a stop of the Xen 4.17 dom0 boot (one of: {', '.join(STOPS)})")
    if until != "xen_start_kernel" and not args.kernel_symbols:
        raise UsageError(f"--until {until} runs the 6.1 guest: give --kernel-symbols FILE (the kernel's kallsyms or "
                         "System.map)")
    return until


def run_guest(args: argparse.Namespace, d: Dom0, features: Features, e820: list[Region] | None,
              until: str) -> ModelStop:
    host = e820 if e820 is not None else qemu_pc_e820(args.mem if args.mem is not None else DEFAULT_HOST)
    try:
        return run_dom0(d, host, features, kernel_symbols(args.kernel_symbols), until)
    except ValueError as e:
        raise UsageError(f"--kernel-symbols {args.kernel_symbols}: {e}") from None


def main_xen417(args: argparse.Namespace, features: Features, e820: list[Region] | None) -> int:
    until = stop_of(args)
    d = build(args, features, e820)
    if until != "xen_start_kernel":
        try:
            model = run_guest(args, d, features, e820, until)
        except SimulationError as e:  # a BUG() in the guest or Xen crashing it: the outcome, in one line
            sys.stderr.write(f"earlymm: the dom0 kernel did not reach --until {until}: {e}\n")
            return 1
        return report_guest(args, d, model)
    gv = view(d, features)
    if args.save_core is not None:
        frames = [(m, d.mem.read(m << 12, 4096)) for m in sorted(gv.table_mfns)]
        write_core(args.save_core, lambda: write_qemu_core(args.save_core, frames, [vcpu(d)]))
    s = summary(d, gv)
    if args.json:
        json.dump({"xen_version": "4.17", "console": [f"(XEN) {ln}" for ln in d.console], **s}, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0
    out = [f"(XEN) {ln}" for ln in d.console]
    out.append(f"== stopped at xen_start_kernel (the guest's first instruction, {s['rip']}): CR3 {s['cr3']} "
               f"RSP {s['rsp']} RSI {s['rsi']} (start_info)")
    out.append(f"   the builder's tables: {s['table_pages']} pages {s['levels']}, {s['leaves']} leaves "
               f"{s['leaf_sizes']}; p2m at {s['p2m']['va']} ({d.nr_pages} entries)")
    sys.stdout.write("\n".join(out) + "\n")
    return 0


def report_guest(args: argparse.Namespace, d: Dom0, model: ModelStop) -> int:
    """The stop inside the 6.1 guest: registers, the tables in guest terms, the kernel's variables."""
    gv = model.view()
    g = model.guest
    if args.save_core is not None:
        cpu = vcpu(d)
        rip = g.syms.get("init_mem_mapping" if model.until == "setup_arch" else "idt_setup_early_pf", d.entry)
        state = CpuState(cpu.gprs, rip, cpu.rflags, cpu.segments, model.regs[0], 0, model.regs[1], model.regs[2])
        write_core(args.save_core, lambda: write_qemu_core(args.save_core, model.table_frames(), [state]))
    levels = Counter(gv.level_of().values())
    variables = {k: f"{v:#x}" for k, v in model.variables().items()}
    at = "the entry of init_mem_mapping" if model.until == "setup_arch" else "init_mem_mapping's return"
    s: dict[str, Any] = {"stop": model.until, "at": at, "cr3": f"{model.regs[1]:#x}",
         "table_pages": len(gv.table_mfns), "levels": dict(sorted(levels.items())), "leaves": len(gv.leaves),
         "leaf_sizes": {str(k): v for k, v in sorted(Counter(lf.size for lf in gv.leaves).items())},
         "variables": variables,
         "e820": [[f"{a:#x}", f"{b:#x}", {1: "usable", 2: "reserved"}.get(t, str(t))] for a, b, t in g.e820],
         "notes": g.notes}
    if args.json:
        json.dump({"xen_version": "4.17", "console": [f"(XEN) {ln}" for ln in d.console] + g.m.xen.console, **s},
                  sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0
    out = [f"(XEN) {ln}" for ln in d.console] + g.m.xen.console
    out += [f"   {n}" for n in g.notes]
    out.append(f"== stopped at {at} (--until {model.until}): CR3 {s['cr3']} (init_top_pgt)")
    out.append(f"   tables: {s['table_pages']} pages {s['levels']}, {s['leaves']} leaves {s['leaf_sizes']}")
    out.append("   " + " ".join(f"{k}={v}" for k, v in variables.items()))
    sys.stdout.write("\n".join(out) + "\n")
    return 0
