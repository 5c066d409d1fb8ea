"""Machine frames and who owns them: the hypervisor's frame table and its machine-to-phys table.

Model of Xen's ``frame_table`` ownership and ``machine_to_phys_mapping`` (xen/arch/x86/mm.c,
asm-x86/mm.h @ Xen 4.2; spec §5.1). A domain's pseudo-physical frames are backed by machine frames in a
shuffled order — never the identity, so a pfn used where an mfn belongs (the Xen PV bug class) lands on
the wrong frame and is caught. The m2p lives in machine memory (frames Xen owns) because the guest reads
it through its read-only mapping at ``MACH2PHYS_VIRT_START``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from earlymm.arch.addr import Mfn, Pfn
from earlymm.hw.memory import PhysMem
from earlymm.platform.xen.consts import DOMID_XEN, INVALID_M2P_ENTRY, PAGE_SHIFT, PAGE_SIZE

NO_OWNER = -1


@dataclass
class MachineFrames:
    """The host's frames: ``owner[mfn]`` (a domain id, ``DOMID_XEN`` or ``NO_OWNER``) and the m2p."""

    mem: PhysMem
    nr_frames: int
    m2p_base: int  # machine address of the m2p table (8 bytes per mfn)
    owner: np.ndarray

    @classmethod
    def create(cls, mem: PhysMem, host_bytes: int, xen_bytes: int) -> MachineFrames:
        """A host of ``host_bytes``: Xen keeps the first ``xen_bytes`` (its image, heap and the m2p at their
        end); the rest is free for domains. Every m2p entry starts invalid."""
        nr = host_bytes >> PAGE_SHIFT
        m2p_bytes = (nr * 8 + (2 << 20) - 1) & ~((2 << 20) - 1)
        if m2p_bytes + (2 << 20) > xen_bytes:
            raise ValueError(f"{xen_bytes >> 20} MiB for Xen cannot hold the m2p of {host_bytes >> 20} MiB of RAM")
        owner = np.full(nr, NO_OWNER, dtype=np.int32)
        owner[: xen_bytes >> PAGE_SHIFT] = DOMID_XEN
        m2p_base = xen_bytes - m2p_bytes
        mem.fill(m2p_base, nr * 8, 0xFF)
        return cls(mem, nr, m2p_base, owner)

    def valid(self, mfn: int) -> bool:
        """``mfn_valid``: a frame of host RAM."""
        return 0 <= mfn < self.nr_frames

    def get_gpfn_from_mfn(self, mfn: int) -> int:
        return self.mem.read_u64(self.m2p_base + 8 * mfn) if self.valid(mfn) else INVALID_M2P_ENTRY

    def set_gpfn_from_mfn(self, mfn: Mfn, pfn: int) -> None:
        self.mem.write_u64(self.m2p_base + 8 * mfn, pfn)

    def populate(self, domid: int, nr_pages: int, seed: int) -> np.ndarray:
        """``populate_physmap`` for a new domain: ``nr_pages`` free frames in a shuffled order; returns the
        p2m (pfn → mfn) and records ownership and the m2p."""
        free = np.flatnonzero(self.owner == NO_OWNER)
        if len(free) < nr_pages:
            raise ValueError(f"the host has {len(free) * PAGE_SIZE >> 20} MiB free for a "
                             f"{nr_pages * PAGE_SIZE >> 20} MiB domain")
        rng = np.random.default_rng(seed)
        p2m = rng.permutation(free)[:nr_pages].astype(np.uint64)
        self.owner[p2m.astype(np.int64)] = domid
        order = np.argsort(p2m)
        mfns, pfns = p2m[order].astype(np.int64), order.astype(np.uint64)
        for pg in np.unique(mfns // 512).tolist():  # rewrite only the m2p pages that change
            sel = (mfns >= pg * 512) & (mfns < (pg + 1) * 512)
            page = np.frombuffer(self.mem.read(self.m2p_base + pg * PAGE_SIZE, PAGE_SIZE), dtype="<u8").copy()
            page[mfns[sel] - pg * 512] = pfns[sel]
            self.mem.write(self.m2p_base + pg * PAGE_SIZE, page.tobytes())
        return p2m

    def pfn_of(self, mfn: Mfn) -> Pfn:
        return Pfn(self.get_gpfn_from_mfn(mfn))
