"""Xen 4.17 with its dom0 built and started: the hypervisor's frame state, the m2p and the vCPU at
``startup_xen``, for the guest model to run on.

Model of the state ``dom0_construct_pv`` (xen/arch/x86/pv/dom0_build.c @ RELEASE-4.17.7) leaves behind
for the hypercalls that follow: every frame of the builder's tables typed as its level with one reference
(``mark_pv_pt_pages_rdonly``: ``PGT_validated | 1``; the L4 also pinned and the vCPU's ``guest_table``),
each page the builder mapped writable holding one ``PGT_writable_page`` reference (``get_page_and_type``
in the mapping loop), dom0 owning its frames and ``shared_info`` (``share_xen_page_with_guest``), and the
m2p in the 2 MiB heap chunks ``paging_init`` took, mapped read-only to guests at
``RO_MPT_VIRT_START`` (L4 slot 256, which Xen writes into every guest L4 it validates).

The hypercalls themselves are ``hypervisor.Xen``'s (``do_mmu_update``, ``do_update_va_mapping``,
``do_mmuext_op``, ``ptwr`` emulation of direct writes to L1 pages), written after Xen 4.2; the model takes
their type rules as unchanged in 4.17 for the operations the 6.1 guest makes here (pins, base pointers,
entry updates; the captures agree), with one addition for the hardware domain (``Dom0PageTypes``: I/O
frames in L1 entries).

Differences: of Xen's L4 slots 256–271 only the m2p slot is given to validated L4s (the builder's L4
also keeps its linear slot 258); the m2p's L3/L2 pages are taken from the heap after the build (the
real ones are allocated at boot); general page reference counts, grant and I/O mappings are not modelled.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from earlymm.arch.modes import Features
from earlymm.hw.cpu import Cpu
from earlymm.hw.events import ListTrace
from earlymm.hw.memory import Region, RegionType
from earlymm.hw.tlb import Tlb
from earlymm.platform.xen.consts import INVALID_M2P_ENTRY, LEVEL_TYPE, PGT_WRITABLE, XEN_FIRST_SLOT
from earlymm.platform.xen.dom0_build import Dom0
from earlymm.platform.xen.frames import NO_OWNER, MachineFrames
from earlymm.platform.xen.hypervisor import Xen, XenIdentity
from earlymm.platform.xen.mm import PageTypes

PAGE = 4096
M2P_PER_CHUNK = (2 << 20) // 8  # entries in one 2 MiB chunk: the mfns of one GiB
_P, _RW, _US, _A, _PSE = 0x1, 0x2, 0x4, 0x20, 0x80
_NX = 1 << 63
ADDR = 0x000F_FFFF_FFFF_F000
CR0_PV, CR4_PV, EFER_PV = 0x8005_003B, 0x660, 0xD01  # the vCPU's registers at startup_xen (the captures')
DOM0 = 0
DOMID_IO = 0x7FF1
LOW_MB_FRAMES = 0x100


class Dom0PageTypes(PageTypes):
    """``get_page_from_l1e`` for the hardware domain: an L1 entry may name an I/O frame — one past the
    host's RAM, or one ``arch_init_memory`` gave to ``dom_io`` (the first MiB) — if the domain has
    ``iomem`` access (dom0 has it to all of them here); no type reference is taken for it."""

    def get_page_from_entry(self, e: int, level: int, d: int, table: int) -> str | None:
        mfn = (e & self.addr_mask) >> 12
        if level == 1 and e & _P and d == DOM0 and (
                not self.frames.valid(mfn) or int(self.frames.owner[mfn]) == DOMID_IO):
            return None
        return super().get_page_from_entry(e, level, d, table)


@dataclass
class ChunkedM2p(MachineFrames):
    """The m2p as Xen 4.17 keeps it: ``chunks[g]`` is the mfn of the 2 MiB chunk holding the entries of
    the mfns of GiB ``g`` (``paging_init`` skips GiBs without RAM)."""

    chunks: dict[int, int] = field(default_factory=dict)

    def _entry(self, mfn: int) -> int | None:
        chunk = self.chunks.get(mfn // M2P_PER_CHUNK) if self.valid(mfn) else None
        return None if chunk is None else (chunk << 12) + 8 * (mfn % M2P_PER_CHUNK)

    def get_gpfn_from_mfn(self, mfn: int) -> int:
        at = self._entry(mfn)
        return INVALID_M2P_ENTRY if at is None else self.mem.read_u64(at)

    def set_gpfn_from_mfn(self, mfn: int, pfn: int) -> None:
        at = self._entry(mfn)
        if at is not None:
            self.mem.write_u64(at, pfn)


@dataclass
class Dom0Machine:
    """Xen 4.17 and its dom0 at the guest's first instruction."""

    dom0: Dom0
    e820: list[Region]  # Xen's e820: what XENMEM_machine_memory_map gives dom0
    max_pages: int  # d->max_pages: what XENMEM_maximum_reservation answers
    cpu: Cpu
    xen: Xen
    frames: ChunkedM2p
    trace: ListTrace

    def machine_memory_map(self) -> list[Region]:
        """``XENMEM_machine_memory_map`` (dom0 only): the host's map as Xen keeps it."""
        return list(self.e820)

    def maximum_reservation(self) -> int:
        """``XENMEM_maximum_reservation`` for DOMID_SELF."""
        return self.max_pages


def _m2p(d: Dom0, nr_frames: int) -> ChunkedM2p:
    owner = np.full(nr_frames, NO_OWNER, dtype=np.int32)
    mfns = d.p2m[d.p2m < (1 << 62)].astype(np.int64)
    owner[mfns] = DOM0
    owner[d.shared_info >> 12] = DOM0  # share_xen_page_with_guest(shared_info, d, SHARE_rw)
    low = owner[:LOW_MB_FRAMES]
    low[low == NO_OWNER] = DOMID_IO  # arch_init_memory: the first MiB is shared with dom_io
    chunks = dict(zip(d.host.m2p_slots, d.host.m2p_chunks, strict=True))
    frames = ChunkedM2p(d.mem, nr_frames, chunks[min(chunks)] << 12 if chunks else 0, owner, chunks)
    pfns = np.flatnonzero(d.p2m < (1 << 62))
    for g, chunk in chunks.items():
        table = np.full(M2P_PER_CHUNK, INVALID_M2P_ENTRY, dtype=np.uint64)
        sel = (mfns >= g * M2P_PER_CHUNK) & (mfns < (g + 1) * M2P_PER_CHUNK)
        table[mfns[sel] - g * M2P_PER_CHUNK] = pfns[sel].astype(np.uint64)
        d.mem.write(chunk << 12, table.astype("<u8").tobytes())
    return frames


def _m2p_slot(d: Dom0, frames: ChunkedM2p) -> int:
    """The read-only m2p window: an L3 and an L2 of 2 MiB user-readable, no-execute superpages."""
    l3, l2 = d.heap.alloc(0), d.heap.alloc(0)
    ents = np.zeros(512, dtype=np.uint64)
    for g, chunk in frames.chunks.items():
        if g < 512:
            ents[g] = (chunk << 12) | _P | _US | _A | _PSE | _NX
    d.mem.write(l2 << 12, ents.astype("<u8").tobytes())
    d.mem.write(l3 << 12, ((l2 << 12) | _P | _US | _A).to_bytes(8, "little") + bytes(PAGE - 8))
    return (l3 << 12) | _P | _US | _A


def _type_builder_tables(xen: Xen, root: int) -> None:
    """``mark_pv_pt_pages_rdonly`` and the mapping loop's ``get_page_and_type(PGT_writable_page)``."""
    t, mem = xen.types, xen.mem

    def table(mfn: int, level: int) -> None:
        pi = t.info(mfn)
        pi.type, pi.count = LEVEL_TYPE[level], 1
        ents = np.frombuffer(mem.read(mfn << 12, PAGE), dtype="<u8")
        for i in np.flatnonzero(ents & _P).tolist():
            if level == 4 and not t.guest_slot(4, i):
                continue
            e = int(ents[i])
            if level > 1 and not (level in (2, 3) and e & _PSE):
                table((e & ADDR) >> 12, level - 1)
            elif level == 1 and e & _RW:
                target = t.info((e & ADDR) >> 12)
                if not target.count:
                    target.type, target.count = PGT_WRITABLE, 1

    table(root, 4)
    pi = t.info(root)
    pi.count, pi.pinned = 2, True


def start_dom0(d: Dom0, e820: list[Region], features: Features, *, trace: ListTrace | None = None) -> Dom0Machine:
    """Xen's state after ``dom0_construct_pv``; the vCPU in ring 3 on the builder's L4 at the entry."""
    trace = trace if trace is not None else ListTrace(enabled=False)
    nr_frames = max(int(r.end) for r in e820 if r.kind is RegionType.RAM) >> 12
    frames = _m2p(d, max(nr_frames, d.host.max_page))
    slot = _m2p_slot(d, frames)
    d.mem.write_u64(d.cr3 + 8 * XEN_FIRST_SLOT, slot)
    cpu = Cpu(d.mem, features, trace=trace, tlb=Tlb())
    xen = Xen(d.mem, cpu, frames, trace, XenIdentity(version="4.17.7", domid=DOM0, vcpu=0, pcpu=0))
    cpu.delivery = xen
    xen.types = Dom0PageTypes(frames, d.mem, features.maxphyaddr, xen.printk,
                              lambda: cpu.flush_tlb(include_global=True), trace.emit)
    xen.types.xen_l4_slots = {XEN_FIRST_SLOT: slot}
    xen.shared_info = d.shared_info
    _type_builder_tables(xen, d.cr3 >> 12)
    cpu.write_cr4(CR4_PV)
    cpu.write_efer(EFER_PV & ~0x400 if features.nx else EFER_PV & ~0xC00)  # LMA follows from CR0.PG
    cpu.write_cr0(CR0_PV)  # Xen already runs in long mode: CR3 takes a 52-bit address only from here
    cpu.regs.cs_l = True
    cpu.write_cr3(d.cr3)
    xen.kernel_root = d.cr3 >> 12
    cpu.regs.cpl = 3  # a 64-bit PV kernel runs in ring 3
    cpu.regs.rsp, cpu.regs.rip = d.vstack_end, d.entry
    return Dom0Machine(d, list(e820), d.max_pages, cpu, xen, frames, trace)
