"""Is a Xen PV dom0 fixture self-consistent? Checks that hold on any honest capture of a real Xen.

Each check returns a list of problems (empty when all is well), so a test can show all of them at once
and ``python -m earlymm.tools.xencap check`` can print them. The expectations come from the capture's
independent sources — QEMU's ``info tlb`` and ``gva2gpa``, the kernel's kallsyms, ``start_info``, Xen's
console — and from Xen's own rules (xen/arch/x86/mm.c: a frame used as a page table may not be mapped
writable anywhere; every entry names a frame the domain owns or may map), never from a model.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from earlymm.tools.midboot.bootinfo import E820Entry
from earlymm.tools.midboot.enumerate import qemu_tlb_lines
from earlymm.tools.xencap.fixture import XenFixture, XenStop
from earlymm.tools.xencap.guest import XEN_SLOTS, GuestView
from earlymm.tools.xencap.p2m import IDENTITY_FRAME_BIT
from earlymm.tools.xencap.record import FLAT_KERNEL_CS64, tlb_digest
from earlymm.tools.xencap.startinfo import SIZE as START_INFO_SIZE
from earlymm.tools.xencap.startinfo import Sif
from earlymm.tools.xencap.startofday import StartOfDay

PAGE = 4096
RW = 1 << 1
MIB = 1 << 20


def stop_view(fx: XenFixture, stop: XenStop) -> GuestView:
    return GuestView(stop.memory(), stop.regs, fx.features, stop.p2m, stop.start_info.shared_info >> 12)


@dataclass(frozen=True)
class StopFigures:
    """What a stop looks like, for reports (and for comparing with a model)."""

    table_pages: int
    levels: dict[str, int]
    leaves: int
    leaf_sizes: dict[int, int]
    leaf_kinds: dict[str, int]
    l4_slots: list[int]
    tables_mapped: int  # table pages that some leaf maps (read-only, by Xen's rule)

    def to_json(self) -> dict[str, object]:
        return {"table_pages": self.table_pages, "levels": self.levels, "leaves": self.leaves,
                "leaf_sizes": {str(k): v for k, v in self.leaf_sizes.items()}, "leaf_kinds": self.leaf_kinds,
                "l4_slots": self.l4_slots, "tables_mapped": self.tables_mapped}


def _sorted(values: Iterable[int]) -> npt.NDArray[np.int64]:
    return np.array(sorted(values), dtype=np.int64)


def _span(arr: npt.NDArray[np.int64], lo: int, n: int) -> tuple[int, int]:
    """Indices [a, b) of the values of sorted ``arr`` in [lo, lo + n): bounded work for any leaf size."""
    return int(np.searchsorted(arr, lo)), int(np.searchsorted(arr, lo + n))


def _spans(arr: npt.NDArray[np.int64], lo: npt.NDArray[np.int64],
           n: npt.NDArray[np.int64]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """``_span`` for every leaf at once."""
    return np.searchsorted(arr, lo), np.searchsorted(arr, lo + n)


def covered(frames: npt.NDArray[np.int64], view: GuestView) -> npt.NDArray[np.bool_]:
    """Which of the sorted ``frames`` some leaf maps."""
    mfns, n, _flags = view.leaf_arrays()
    a, b = _spans(frames, mfns, n)
    diff = np.zeros(len(frames) + 1, dtype=np.int64)  # each leaf marks frames[a:b]
    keep = b > a
    np.add.at(diff, a[keep], 1)
    np.add.at(diff, b[keep], -1)
    return np.asarray(np.cumsum(diff[:-1]) > 0, dtype=np.bool_)


def figures(view: GuestView) -> StopFigures:
    tables = _sorted(view.table_mfns)
    mapped = covered(tables, view)
    return StopFigures(len(tables), dict(sorted(Counter(view.level_of().values()).items())), len(view.leaves),
                       dict(Counter(lf.size for lf in view.leaves)), dict(Counter(lf.kind for lf in view.leaves)),
                       sorted({(lk.va >> 39) & 511 for lk in view.links if lk.level == "PML4E"}), int(mapped.sum()))


def check_stop_context(fx: XenFixture, stop: XenStop) -> list[str]:
    """The vCPU is dom0's kernel at the symbol: RIP from kallsyms, Xen's 64-bit guest-kernel CS, CPL 3."""
    bad = []
    if int(stop.info["rip"], 16) != fx.symbol(stop.name):
        bad.append(f"{stop.name}: RIP {stop.info['rip']} is not {stop.name} ({fx.symbol(stop.name):#x})")
    if int(stop.info["cs"], 16) != FLAT_KERNEL_CS64 or stop.info["cpl"] != 3:
        bad.append(f"{stop.name}: CS {stop.info['cs']} CPL {stop.info['cpl']} is not a PV guest kernel's")
    return bad


def check_tables(stop: XenStop, view: GuestView) -> list[str]:
    """Every link points at a recorded table page, every recorded page is reachable, nothing unreadable,
    and the recorded root still carries Xen's slots (it is a real PV L4, which Xen fills in)."""
    bad = [f"{stop.name}: {n.kind} {n.start:#x}: {n.detail}" for n in view.en.notes]
    recorded = set(stop.pages)
    if view.table_mfns - recorded:
        bad.append(f"{stop.name}: tables not recorded: {sorted(map(hex, view.table_mfns - recorded))[:5]}")
    if recorded - view.table_mfns:
        bad.append(f"{stop.name}: recorded pages nothing links: {sorted(map(hex, recorded - view.table_mfns))[:5]}")
    root = stop.tables.get(view.root)
    if root is None:
        bad.append(f"{stop.name}: CR3 {stop.cr3:#x} is not a recorded page")
    elif not any(root[i] & 1 for i in XEN_SLOTS):
        bad.append(f"{stop.name}: the root has no present entry in Xen's slots 256-271")
    return bad


def check_root(fx: XenFixture, stop: XenStop, view: GuestView) -> list[str]:
    """CR3 is the page the guest knows as its top table — the builder's ``pt_base`` at the first
    instruction, ``init_top_pgt`` after ``xen_setup_kernel_pagetable`` — both through the recorded
    tables and by QEMU's own ``gva2gpa``."""
    sym, va = (("pt_base", stop.start_info.pt_base) if stop.name == "xen_start_kernel"
               else ("init_top_pgt", fx.symbol("init_top_pgt")))
    bad = []
    if view.translate(va) != view.root:
        got = view.translate(va)
        bad.append(f"{stop.name}: {sym} {va:#x} maps {got if got is None else hex(got)}, not CR3 {view.root:#x}")
    if stop.roots.get(sym) != view.root:
        bad.append(f"{stop.name}: QEMU's gva2gpa puts {sym} at {stop.roots.get(sym)}, not CR3 {view.root:#x}")
    return bad


def _may_map(view: GuestView, mfn: int, n: int, ram: npt.NDArray[np.int64], e820: list[E820Entry]) -> bool:
    """Frames [mfn, mfn + n) are all dom0's RAM, all 1:1 identity frames, or the shared_info page."""
    a, b = _span(ram, mfn, n)
    if b - a == n:
        return True
    if b > a:
        return False  # partly RAM, partly not
    if n == 1 and mfn == view.names.shared_info_mfn:
        return True
    p2m = view.names.p2m.values
    if mfn >= len(p2m):  # past the list: identity, unless dom0's map calls it RAM (balloon space)
        return not any(e.kind == "usable" and e.start < (mfn + n) * PAGE and mfn * PAGE < e.end for e in e820)
    if mfn + n > len(p2m):
        return False
    want = np.arange(mfn, mfn + n, dtype=np.uint64) | np.uint64(IDENTITY_FRAME_BIT)
    return bool((p2m[mfn:mfn + n] == want).all())


def check_leaves(fx: XenFixture, stop: XenStop, view: GuestView) -> list[str]:
    """Every leaf maps frames the guest may map: its own RAM (mfns the p2m gives its pfns), 1:1 identity
    frames the p2m marks (or pfns past the list that are not RAM in dom0's map), or Xen's shared_info."""
    bad = []
    e820 = [E820Entry(int(a, 16), int(b, 16), k) for a, b, k in fx.meta["machine"]["dom0_e820"]]
    ram = _sorted(view.names.m2p)
    mfns, n, _flags = view.leaf_arrays()
    a, b = _spans(ram, mfns, n)
    for i in np.flatnonzero(b - a != n):  # not all RAM: the few identity and shared_info leaves
        lf = view.leaves[int(i)]
        if not _may_map(view, lf.mfn, lf.size // PAGE, ram, e820):
            bad.append(f"{stop.name}: leaf {lf.va:#x} ({lf.size >> 10} KiB) maps mfn {lf.mfn:#x}, which is not all "
                       "dom0's RAM, identity frames or shared_info")
            if len(bad) >= 20:
                break
    return bad


def check_read_only(stop: XenStop, view: GuestView) -> list[str]:
    """Xen's rule: a page-table frame is never mapped writable, and it is the domain's own RAM."""
    bad = []
    tables = _sorted(view.table_mfns)
    mfns, n, flags = view.leaf_arrays()
    a, b = _spans(tables, mfns, n)
    for i in np.flatnonzero((b > a) & ((flags & np.uint64(RW)) != 0))[:20]:
        bad.append(f"{stop.name}: leaf {view.leaves[int(i)].va:#x} maps table frame {int(tables[a[i]]):#x} writable")
    bad += [f"{stop.name}: table frame {int(m):#x} is not dom0's RAM" for m in tables
            if view.names.name(int(m))[1] != "ram"]
    return bad[:20]


def check_p2m(fx: XenFixture, stop: XenStop, view: GuestView) -> list[str]:
    """The list is where the guest says (start_info, then xen_p2m_addr), mapped by the recorded tables
    where QEMU's gva2gpa puts it, on dom0's own frames, and it gives no two pfns one mfn."""
    bad = []  # (two pfns on one mfn: FrameNames raised P2mError when the view was built)
    v = stop.variables
    want_va, want_size = ((stop.start_info.mfn_list, stop.start_info.nr_pages) if not v["xen_p2m_addr"]
                          else (v["xen_p2m_addr"], v["xen_p2m_size"]))
    if (stop.p2m.va, len(stop.p2m)) != (want_va, want_size):
        bad.append(f"{stop.name}: p2m at {stop.p2m.va:#x}+{len(stop.p2m)}, the guest says {want_va:#x}+{want_size}")
    first = stop.info["p2m"].get("first_page_maddr")
    if view.translate(stop.p2m.va) != (None if first is None else int(first, 16)):
        bad.append(f"{stop.name}: the tables put the p2m at {view.translate(stop.p2m.va)}, QEMU at {first}")
    for off in range(0, len(stop.p2m) * 8, PAGE):
        ma = view.translate(stop.p2m.va + off)
        if ma is None or view.names.name(ma >> 12)[1] != "ram":
            bad.append(f"{stop.name}: p2m page {stop.p2m.va + off:#x} is not mapped on dom0's RAM ({ma})")
            break
    if len(stop.p2m) < stop.start_info.nr_pages:
        bad.append(f"{stop.name}: p2m has {len(stop.p2m)} entries, fewer than nr_pages {stop.start_info.nr_pages}")
    return bad


def check_tlb(stop: XenStop, view: GuestView) -> list[str]:
    """The enumerator, listing the recorded tables, prints exactly what QEMU's ``info tlb`` printed for
    the guest's part of the address space (compared by line count and SHA-256)."""
    lines = qemu_tlb_lines(view.en.leaves)
    if (len(lines), tlb_digest(lines)) != (stop.info["tlb_lines"], stop.info["tlb_sha256"]):
        return [f"{stop.name}: enumerator {len(lines)} lines / {tlb_digest(lines)[:12]}, QEMU "
                f"{stop.info['tlb_lines']} / {stop.info['tlb_sha256'][:12]}"]
    return []


def check_stop(fx: XenFixture, stop: XenStop, view: GuestView | None = None) -> list[str]:
    view = view or stop_view(fx, stop)
    return (check_stop_context(fx, stop) + check_tables(stop, view) + check_root(fx, stop, view)
            + check_leaves(fx, stop, view) + check_read_only(stop, view) + check_p2m(fx, stop, view)
            + check_tlb(stop, view))


def check_start_of_day(fx: XenFixture) -> list[str]:
    """Xen's block against ``start_info``, the p2m and RSI at the guest's first instruction, the
    kernel's symbols, and the layout rules of the builder (xen/include/public/xen.h: one region from the
    kernel to the stack, 4 KiB-aligned pieces, ending on a 4 MiB boundary with at least 512 KiB spare)."""
    sod: StartOfDay = fx.start_of_day
    first = fx.stop("xen_start_kernel")
    si, p2m = first.start_info, first.p2m
    bad = []
    if fx.meta.get("start_of_day") != sod.to_json():
        bad.append("meta.json's start_of_day is not what the console says")
    if "\n".join(sod.lines) not in "\n".join(ln.removeprefix("(XEN) ") for ln in
                                             fx.console[:first.console_bytes].split("\n")):
        bad.append("the start-of-day block was not on the console yet at xen_start_kernel")
    virt, phys = sod.virtual, sod.physical
    want = {"Start info": (int(first.info["registers"]["RSI"], 16),
                           int(first.info["registers"]["RSI"], 16) + START_INFO_SIZE + si.console_info_size),
            "Page tables": (si.pt_base, si.pt_base + si.nr_pt_frames * PAGE),
            "Phys-Mach map": (si.mfn_list, si.mfn_list + si.nr_pages * 8)}
    bad += [f"{k}: Xen printed {virt[k][0]:#x}->{virt[k][1]:#x}, the guest got {w[0]:#x}->{w[1]:#x}"
            for k, w in want.items() if virt.get(k) != w]
    if sod.entry != fx.symbol("startup_xen"):
        bad.append(f"ENTRY ADDRESS {sod.entry:#x} is not startup_xen {fx.symbol('startup_xen'):#x}")
    if virt["Loaded kernel"][0] != fx.symbol("_text"):
        bad.append(f"Loaded kernel starts at {virt['Loaded kernel'][0]:#x}, not _text")
    total = virt["TOTAL"]
    if total[1] % (4 * MIB) or total[1] - virt["Boot stack"][1] < MIB // 2:
        bad.append(f"TOTAL ends at {total[1]:#x}: not 4 MiB-aligned with 512 KiB to spare after the stack")
    pieces = [virt[k] for k in ("Loaded kernel", "Start info", "Page tables", "Boot stack")]
    if any(a[1] > b[0] for a, b in itertools.pairwise(pieces)) or any(p[0] % PAGE for p in pieces):
        bad.append("the virtual pieces are not in order or not page-aligned")
    alloc = phys["Dom0 alloc."]
    region = (total[1] - total[0]) // PAGE
    mfns = [int(m) for m in p2m.values[:region]]
    if mfns != list(range(alloc[0] // PAGE, alloc[0] // PAGE + region)):
        bad.append(f"pfns 0..{region:#x} (the initial region) are not Dom0 alloc.'s first frames in order")
    if si.flags & Sif.MOD_START_PFN and "Init. ramdisk" in phys:
        rd = phys["Init. ramdisk"]
        if int(p2m.values[si.mod_start]) != rd[0] // PAGE or rd[1] - rd[0] != si.mod_len:
            bad.append(f"the initrd at pfn {si.mod_start:#x} is not the Init. ramdisk Xen printed")
        initrd_pages = -(-si.mod_len // PAGE)
    else:
        initrd_pages = 0
    if sod.to_be_allocated is not None and \
            sod.to_be_allocated != si.nr_pages - (alloc[1] - alloc[0]) // PAGE - initrd_pages:
        bad.append(f"{sod.to_be_allocated} pages to be allocated is not nr_pages - Dom0 alloc. - initrd")
    return bad


def builder_table_order(fx: XenFixture) -> list[str]:
    """The levels of the builder's page-table frames in VA order (``Page tables:`` / pt_base)."""
    first = fx.stop("xen_start_kernel")
    view = stop_view(fx, first)
    levels = view.level_of()
    out = []
    for i in range(first.start_info.nr_pt_frames):
        ma = view.translate(first.start_info.pt_base + i * PAGE)
        out.append("?" if ma is None else levels.get(ma >> 12, "not a table"))
    return out


def check_console(fx: XenFixture) -> list[str]:
    sizes = [s.console_bytes for s in fx.stops]
    bad = []
    if sizes != sorted(sizes) or sizes[-1] > len(fx.console.encode()):
        bad.append(f"console sizes at the stops {sizes} do not grow within the {len(fx.console.encode())} saved")
    return bad


def check_fixture(fx: XenFixture) -> list[str]:
    bad = check_start_of_day(fx) + check_console(fx)
    for stop in fx.stops:
        bad += check_stop(fx, stop)
    return bad


def identity_pfns(stop: XenStop) -> list[int]:
    """pfns the p2m marks 1:1 (e820 holes and I/O that ``xen_memory_setup`` set aside)."""
    v = stop.p2m.values
    return [int(p) for p in ((v & IDENTITY_FRAME_BIT) != 0).nonzero()[0] if int(v[p]) != (1 << 64) - 1]
