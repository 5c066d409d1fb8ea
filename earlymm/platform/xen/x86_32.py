"""Xen built for 32-bit x86 under a 32-bit PV guest: 2-level tables on the non-PAE build (``x86_32``), PAE
tables on the PAE build (``x86_32p``) — the hypervisors a 2.6.23 i386 Xen guest ran on (xen/arch/x86/mm.c,
include/asm-x86/x86_32/page*.h, public/arch-x86/xen-x86_32.h @ Xen 3.1; spec §5.1, §5.6).

What differs from the 64-bit model (``mm.py``, ``hypervisor.py``), and is overridden here:
* entries are 4 bytes (2-level, 1024 per table) or 8 bytes (PAE, 512; the L3 has 4);
* the guest kernel runs in ring 1: entries are not adjusted (no ``_PAGE_USER`` forced);
* Xen's private area starts at HYPERVISOR_VIRT_START (0xFC000000 / 0xF5800000): its slots are the top of
  the 2-level L2, or the top of the PAE L2 that L3 slot 3 names — that L2 carries ``PGT_pae_xen_l2`` and
  may not appear in a second L3 ("PAE L3 3rd slot is shared", ``create_pae_xen_mappings``); slot 3 of a
  validated L3 cannot be updated;
* a present PAE L3 entry allows only P, PWT, PCD (and the ignored bits): its RW and US are reserved;
* the base pointer is an L2 (2-level) or an L3 (PAE); pinning a level the build does not have is ignored
  with success ("Ignore pinning of invalid paging levels"): 2.6.23 pins with MMUEXT_PIN_L3_TABLE even
  without PAE, which a 2-level Xen silently skips;
* ptwr emulation takes 4-byte stores too: a PAE guest's ``set_pte`` writes the high word, then the low one;
  a 4-byte store is merged with the rest of the entry (``ptwr_emulated_update``), and an upper-half store
  that makes an invalid present entry is kept with P cleared ("fixing up invalid PAE PTE").
Differences: the m2p the guest reads is a 4-byte copy of the frame table's m2p, written when the domain is
populated (the model's guests issue no MMU_MACHPHYS_UPDATE on it otherwise).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from earlymm.arch.addr import Mfn
from earlymm.hw.cpu import Cpu
from earlymm.hw.events import Event, ListTrace
from earlymm.hw.faults import PageFault
from earlymm.hw.memory import PhysMem
from earlymm.platform.xen.consts import (
    LEVEL_TYPE,
    MMU_MACHPHYS_UPDATE,
    MMU_NORMAL_PT_UPDATE,
    MMU_PT_UPDATE_PRESERVE_AD,
    PGT_L2,
    PGT_WRITABLE,
    UVMF_INVLPG,
    UVMF_TLB_FLUSH,
    MmuExt,
)
from earlymm.platform.xen.events import PtwrEmulated
from earlymm.platform.xen.frames import MachineFrames
from earlymm.platform.xen.hypervisor import EINVAL, PFEC_PRESENT, PFEC_WRITE, Xen, XenIdentity
from earlymm.platform.xen.mm import PageTypes

_P, _RW, _PWT, _PCD = 0x1, 0x2, 0x8, 0x10
L3_ALLOWED = _P | _PWT | _PCD | 0xE00  # PAE PDPTE: P, PWT, PCD and the ignored bits 11:9 (spec §1.3)


@dataclass(frozen=True, slots=True)
class Build32:
    """Which 32-bit Xen: ``pae`` False is x86_32 (CONFIG_PAGING_LEVELS 2), True is x86_32p (3)."""

    pae: bool

    @property
    def name(self) -> str:
        return "x86_32p" if self.pae else "x86_32"

    @property
    def paging_levels(self) -> int:
        return 3 if self.pae else 2

    @property
    def hypervisor_virt_start(self) -> int:
        """HYPERVISOR_VIRT_START = MACH2PHYS_VIRT_START (xen-x86_32.h): Xen's area up to 4 GiB."""
        return 0xF580_0000 if self.pae else 0xFC00_0000

    @property
    def entry_size(self) -> int:
        return 8 if self.pae else 4

    @property
    def l2_shift(self) -> int:
        return 21 if self.pae else 22

    @property
    def first_xen_l2_slot(self) -> int:
        """The first L2 slot of Xen's area (in the L2 of L3 slot 3 with PAE)."""
        return (self.hypervisor_virt_start >> self.l2_shift) & (511 if self.pae else 1023)


class PageTypes32(PageTypes):
    """Page types and entry validation for 2-level and PAE tables."""

    def __init__(self, frames: MachineFrames, mem: PhysMem, build: Build32, log: Callable[[str], None],
                 flush_tlb: Callable[[], None], emit: Callable[[Event], None]) -> None:
        super().__init__(frames, mem, 36 if build.pae else 32, log, flush_tlb, emit)
        self.build = build
        self.entry_size = build.entry_size
        self.pae_xen_l2: set[int] = set()  # L2 frames typed PGT_pae_xen_l2 (slot 3 of an L3)
        self.xen_l2_slots: dict[int, int] = {}  # Xen's own entries in every top-level (or pae_xen) L2

    def entries(self, mfn: int) -> np.ndarray:
        dtype = "<u8" if self.build.pae else "<u4"
        return np.frombuffer(self.mem.read(mfn << 12, 4096), dtype=dtype).astype(np.uint64)

    def write_entries(self, mfn: int, ents: np.ndarray) -> None:
        self.mem.write(mfn << 12, ents.astype("<u8" if self.build.pae else "<u4").tobytes())

    def adjust(self, e: int, level: int) -> int:
        return e  # a ring-1 kernel reaches supervisor pages: nothing to add

    def guest_slot(self, level: int, i: int, mfn: int = 0) -> bool:
        if level != 2 or (self.build.pae and mfn not in self.pae_xen_l2):
            return True
        return i < self.build.first_xen_l2_slot

    def xen_slots(self, mfn: int, level: int, ents: np.ndarray) -> None:
        if level == 2 and (not self.build.pae or mfn in self.pae_xen_l2):
            for slot in range(self.build.first_xen_l2_slot, len(ents)):
                ents[slot] = self.xen_l2_slots.get(slot, 0)

    def get_page_from_entry(self, e: int, level: int, d: int, table: int) -> str | None:
        if level == 3 and e & _P and e & ~self.addr_mask & ~L3_ALLOWED:
            return self._mem_log(d, f"Bad L3 flags {e & ~self.addr_mask & ~L3_ALLOWED:x}")
        return super().get_page_from_entry(e, level, d, table)

    def alloc_table(self, mfn: int, level: int, d: int) -> str | None:
        """``alloc_l3_table`` (PAE): slot 3's L2 is taken as ``PGT_pae_xen_l2``, which only an L2 no other
        table holds can become; then the common check of every entry."""
        if level == 3:
            e3 = int(self.entries(mfn)[3])
            if not e3 & _P:
                return self._mem_log(d, "PAE L3 3rd slot is empty: Xen's mappings need it")
            l2 = (e3 & self.addr_mask) >> 12
            pi = self.pages.get(l2)
            if pi is not None and pi.count and pi.type == PGT_L2:
                return self._mem_log(d, "PAE L3 3rd slot is shared" if l2 in self.pae_xen_l2 else
                                     f"Bad type (saw {self.type_info(l2):016x} != exp pae_xen_l2) for mfn {l2:x}")
            self.pae_xen_l2.add(l2)
            err = super().alloc_table(mfn, level, d)
            if err:
                self.pae_xen_l2.discard(l2)
            return err
        return super().alloc_table(mfn, level, d)

    def put_page_type(self, mfn: int, d: int) -> None:
        super().put_page_type(mfn, d)
        if not self.info(mfn).count:
            self.pae_xen_l2.discard(mfn)

    def mod_entry(self, table: Mfn, index: int, new: int, level: int, d: int) -> str | None:
        if level == 3 and index >= 3:
            return self._mem_log(d, "Illegal L3 update attempt in Xen-private area (slot 3)")
        return super().mod_entry(table, index, new, level, d)


class Xen32(Xen):
    """One 32-bit PV domain with one vCPU (kernel in ring 1) on a 32-bit Xen."""

    def __init__(self, mem: PhysMem, cpu: Cpu, frames: MachineFrames, trace: ListTrace, ident: XenIdentity,
                 build: Build32) -> None:
        super().__init__(mem, cpu, frames, trace, ident)
        self.build = build
        self.types: PageTypes32 = PageTypes32(frames, mem, build, self.printk,
                                              lambda: cpu.flush_tlb(include_global=True), trace.emit)
        self.guest_cr4 = 0x20 if build.pae else 0
        self.m2p32 = 0  # machine address of the guest-visible 4-byte m2p

    @property
    def top_level(self) -> int:
        return self.build.paging_levels

    def _mmu_update_one(self, ptr: int, val: int) -> int:
        d, w = self.domid, self.build.entry_size
        cmd, mfn, at = ptr & 3, ptr >> 12, ptr & ~3
        if cmd == MMU_MACHPHYS_UPDATE:
            if not self.types._owned(mfn, d):
                return EINVAL
            self.frames.set_gpfn_from_mfn(mfn, val)  # type: ignore[arg-type]
            self.mem.write_int(self.m2p32 + 4 * mfn, 4, val & 0xFFFF_FFFF)
            return 0
        if cmd not in (MMU_NORMAL_PT_UPDATE, MMU_PT_UPDATE_PRESERVE_AD) or at % w:
            return EINVAL
        if not self.types._owned(mfn, d):
            self.printk(f"d{d} Could not get page for normal update (mfn {mfn:x})")
            return EINVAL
        level = self.types.level(mfn)
        if level:
            return EINVAL if self.types.mod_entry(mfn, (at & 0xFFF) // w, val, level, d) else 0  # type: ignore[arg-type]
        if self.types.get_page_type(mfn, PGT_WRITABLE, d) is not None:
            return EINVAL
        self.mem.write_int(at, w, val)
        self.types.put_page_type(mfn, d)
        return 0

    def mmu_update_each(self, base: int, vals: np.ndarray) -> int:
        """``len(vals)`` one-entry ``mmu_update`` calls on consecutive entries from machine address ``base``
        (within one page), each validated; returns how many were refused."""
        w, n = self.build.entry_size, len(vals)
        failed = sum(1 for i, v in enumerate(vals.tolist()) if self._mmu_update_one(base + w * i, int(v)))
        refused = f", {failed} refused" if failed else ""
        self._trace("mmu_update", f"{n} single update(s) from {base & ~3:#x}{refused}", n, EINVAL if failed else 0)
        return failed

    def update_va_mapping(self, va: int, val: int, flags: int) -> int:
        """``HYPERVISOR_update_va_mapping`` with 4- or 8-byte L1 entries."""
        d, rc, w = self.domid, 0, self.build.entry_size
        at = self.guest_map_l1e(va)
        if at is None:
            self.printk(f"d{d} Could not find L1 PTE for address {va:x}")
            rc = EINVAL
        elif self.types.mod_entry(at >> 12, (at & 0xFFF) // w, val, 1, d):  # type: ignore[arg-type]
            rc = EINVAL
        elif flags & UVMF_INVLPG:
            self.cpu.mmu.tlb.invlpg(va, 0)
        elif flags & UVMF_TLB_FLUSH:
            self.cpu.flush_tlb(include_global=True)
        self._trace("update_va_mapping", f"{va:#x} → {val:#x}", 1, rc)
        return rc

    def _mmuext(self, cmd: MmuExt, arg: int, d: int) -> int:
        if MmuExt.PIN_L1_TABLE <= cmd <= MmuExt.PIN_L4_TABLE and int(cmd) > self.build.paging_levels - 1:
            return 0  # pin_page: "Ignore pinning of invalid paging levels."
        if cmd is MmuExt.NEW_BASEPTR:
            t, old = self.types, self.kernel_root
            if not t._owned(arg, d) or t.get_page_type(arg, LEVEL_TYPE[self.top_level], d):
                self.printk(f"d{d} Error while installing new baseptr {arg:x}")
                return EINVAL
            if old:
                t.put_page_type(old, d)
            self.kernel_root = arg
            self._load_cr3(arg)
            return 0
        if cmd is MmuExt.NEW_USER_BASEPTR:
            return EINVAL  # a 64-bit guest's op
        return super()._mmuext(cmd, arg, d)

    def guest_map_l1e(self, va: int) -> int | None:
        b, t = self.build, self.types
        table, w = self.kernel_root, b.entry_size
        walk = ((30, 3), (21, 511)) if b.pae else ((22, 1023),)
        for shift, mask in walk:
            e = self.mem.read_int((table << 12) + w * ((va >> shift) & mask), w)
            if not e & 1 or (shift != 30 and e & 0x80):
                return None
            table = (e & t.addr_mask) >> 12
        return (table << 12) + w * ((va >> 12) & (511 if b.pae else 1023))

    def _ptwr(self, fault: PageFault) -> bool:
        """``ptwr_do_page_fault`` / ``ptwr_emulated_update`` for 4- and 8-byte stores (see the module)."""
        if fault.error_code & (PFEC_WRITE | PFEC_PRESENT) != PFEC_WRITE | PFEC_PRESENT or not self.guest_kernel_mode:
            return False
        pending, w = self.cpu.pending_store, self.build.entry_size
        res = self.cpu.mmu.probe(fault.cr2, 0)
        if pending is None or pending[0] != fault.cr2 or pending[1] not in (4, w) or fault.cr2 % pending[1] \
                or not res.ok:
            return False
        mfn, d = res.pa >> 12, self.domid
        if self.types.level(mfn) != 1 or not self.types._owned(mfn, d):
            return False
        index, offset = (res.pa & 0xFFF) // w, res.pa % w
        val = pending[2]
        if pending[1] != w:  # a sub-word store: merge it with the rest of the entry
            full = self.mem.read_int(res.pa - offset, w)
            keep = full & ~(0xFFFF_FFFF << (8 * offset))
            val = keep | (val & 0xFFFF_FFFF) << (8 * offset)
        err = self.types.mod_entry(mfn, index, val, 1, d)  # type: ignore[arg-type]
        if err and w == 8 and pending[1] == 4 and offset == 4 and val & _P:
            self.printk(f"d{d} ptwr_emulate: fixing up invalid PAE PTE {val:016x}")
            err = self.types.mod_entry(mfn, index, val & ~_P, 1, d)  # type: ignore[arg-type]
        if err:
            return False
        self.trace.emit(PtwrEmulated(fault.cr2, mfn, index, val))
        return True

    def show_page_walk(self, addr: int) -> None:
        """``show_page_walk`` (x86_32/traps.c): each level's entry and the pfn of its mfn."""
        b = self.build
        self.printk(f"Pagetable walk from {addr:08x}:")
        mfn, w = self.cpu.regs.cr3 >> 12, b.entry_size
        walk = ((3, 30, 3), (2, 21, 511), (1, 12, 511)) if b.pae else ((2, 22, 1023), (1, 12, 1023))
        for level, shift, mask in walk:
            e = self.mem.read_int((mfn << 12) + w * ((addr >> shift) & mask), w)
            mfn = (e & self.types.addr_mask) >> 12
            self.printk(f" L{level} = {e:0{2 * w}x} {self.frames.get_gpfn_from_mfn(mfn) & 0xFFFF_FFFF:08x}")
            if not e & 1 or not self.frames.valid(mfn):
                return

    @property
    def build_name(self) -> str:
        return self.build.name
