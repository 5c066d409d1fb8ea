"""A PV guest's page tables in the guest's terms: machine frames, walked without Xen's slots, seen
through the p2m.

Under Xen PV the CPU runs on the guest's own tables, so CR3 and every entry hold machine addresses.
Xen writes its own entries into every 64-bit PV L4 it validates: PML4 slots 256–271
(0xffff800000000000–0xffff87ffffffffff, HYPERVISOR_VIRT_START..END in xen/include/public/arch-x86/
xen-x86_64.h) map the hypervisor, its direct map of all host memory and the read-only m2p. They are
Xen's, not the guest's, so the walk here treats them as empty (the recorded L4 keeps them verbatim).
Leaves and links are then listed with the midboot enumerator and their machine frames turned into the
guest's pfns through the p2m at the same instant.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from earlymm.arch.modes import Features
from earlymm.hw.memory import Buffer, FrameSource
from earlymm.tools.midboot.enumerate import Enumeration, Leaf, Link, enumerate_space
from earlymm.tools.xencap.p2m import IDENTITY_FRAME_BIT, P2m

XEN_SLOTS = range(256, 272)
HYPERVISOR_VIRT_START = 0xFFFF_8000_0000_0000
HYPERVISOR_VIRT_END = 0xFFFF_8800_0000_0000
ADDR_MASK = 0x000F_FFFF_FFFF_F000  # an entry's address field (bits 51:12)


class WithoutXenSlots:
    """A ``FrameSource`` that shows the root L4 with Xen's slots 256–271 cleared (a copy; the source
    keeps the real page)."""

    def __init__(self, source: FrameSource, root_pfn: int) -> None:
        self.source, self.root_pfn = source, root_pfn

    def frame(self, pfn: int) -> Buffer | None:
        page = self.source.frame(pfn)
        if page is None or pfn != self.root_pfn:
            return page
        out = bytearray(page)
        out[XEN_SLOTS.start * 8:XEN_SLOTS.stop * 8] = bytes(8 * len(XEN_SLOTS))
        return bytes(out)

    def ranges(self) -> list[tuple[int, int]]:
        return self.source.ranges()


def guest_space(source: FrameSource, regs: tuple[int, int, int, int], features: Features) -> Enumeration:
    """Leaves and links reachable from CR3 = ``regs[1]`` outside Xen's slots (machine addresses)."""
    root = regs[1] & ADDR_MASK
    return enumerate_space(WithoutXenSlots(source, root >> 12), regs, features, root=root)


@dataclass(frozen=True, slots=True)
class GuestLeaf:
    """A leaf in the guest's terms: ``pfn`` is ``None`` for a machine frame the p2m does not give the
    guest (``kind`` then says what it is: ``identity``, ``shared_info`` or ``foreign``)."""

    va: int
    mfn: int
    pfn: int | None
    kind: str  # ram, identity, shared_info, unknown
    size: int
    flags: int


@dataclass(frozen=True, slots=True)
class GuestLink:
    level: str
    va: int
    span: int
    flags: int
    table_mfn: int
    table_pfn: int | None


class FrameNames:
    """mfn → (pfn, kind) for one instant: the guest's RAM through the p2m, 1:1 identity frames, and
    the shared_info frame Xen lets the guest map."""

    def __init__(self, p2m: P2m, shared_info_mfn: int | None = None) -> None:
        self.m2p = p2m.m2p()
        self.p2m = p2m
        self.shared_info_mfn = shared_info_mfn

    def name(self, mfn: int) -> tuple[int | None, str]:
        pfn = self.m2p.get(mfn)
        if pfn is not None:
            return pfn, "ram"
        if mfn == self.shared_info_mfn:
            return None, "shared_info"
        # set_phys_range_identity marks e820 holes and I/O pfn = mfn; a pfn beyond the list is identity
        # too (__pfn_to_mfn in arch/x86/include/asm/xen/page.h)
        if mfn >= len(self.p2m) or int(self.p2m.values[mfn]) == IDENTITY_FRAME_BIT | mfn:
            return mfn, "identity"
        return None, "unknown"


class GuestView:
    """One instant of a PV guest's address space: the enumeration from CR3 without Xen's slots, and its
    leaves and links in the guest's terms. What a model comparison and the fixture checks both use."""

    def __init__(self, source: FrameSource, regs: tuple[int, int, int, int], features: Features, p2m: P2m,
                 shared_info_mfn: int | None = None) -> None:
        self.regs = regs
        self.en = guest_space(source, regs, features)
        self.names = FrameNames(p2m, shared_info_mfn)
        self.leaves = guest_leaves(self.en, self.names)
        self.links = guest_links(self.en, self.names)
        self._vas = [lf.va for lf in self.leaves]  # the enumerator lists leaves in VA order

    @property
    def root(self) -> int:
        return self.regs[1] & ADDR_MASK

    @property
    def table_mfns(self) -> set[int]:
        return {t >> 12 for t in self.en.tables}

    def leaf_arrays(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.uint64]]:
        """Every leaf's first mfn, number of 4 KiB frames and flags, as arrays (in the leaves' order)."""
        return (np.fromiter((lf.mfn for lf in self.leaves), np.int64, len(self.leaves)),
                np.fromiter((lf.size >> 12 for lf in self.leaves), np.int64, len(self.leaves)),
                np.fromiter((lf.flags for lf in self.leaves), np.uint64, len(self.leaves)))

    def leaf_at(self, va: int) -> GuestLeaf | None:
        """The leaf mapping ``va``, if any."""
        i = bisect_right(self._vas, va) - 1
        if i >= 0 and va < self.leaves[i].va + self.leaves[i].size:
            return self.leaves[i]
        return None

    def translate(self, va: int) -> int | None:
        """The machine address ``va`` maps to, through the recorded tables."""
        lf = self.leaf_at(va)
        return None if lf is None else (lf.mfn << 12) + (va - lf.va)

    def level_of(self) -> dict[int, str]:
        """mfn → ``L4``/``L3``/``L2``/``L1`` for every table page (Xen's names for the levels)."""
        out = {self.root >> 12: "L4"}
        for lk in self.links:
            out.setdefault(lk.table_mfn, LINK_TARGET[lk.level])
        return out


LINK_TARGET = {"PML4E": "L3", "PDPTE": "L2", "PDE": "L1"}


def guest_leaves(en: Enumeration, names: FrameNames) -> list[GuestLeaf]:
    out = []
    for lf in en.leaves:
        base = lf.pa >> 12
        pfn, kind = names.name(base)
        out.append(GuestLeaf(lf.va, base, pfn, kind, lf.size, lf.flags))
    return out


def guest_links(en: Enumeration, names: FrameNames) -> list[GuestLink]:
    return [GuestLink(lk.level, lk.va, lk.span, lk.flags, lk.table >> 12, names.name(lk.table >> 12)[0])
            for lk in en.links]


__all__ = ["XEN_SLOTS", "Enumeration", "FrameNames", "GuestLeaf", "GuestLink", "GuestView", "Leaf", "Link",
           "WithoutXenSlots", "guest_leaves", "guest_links", "guest_space"]
