"""Page types, their counts, and the validation of page tables (xen/arch/x86/mm.c @ Xen 4.2; spec §5.1).

Every frame has one current type (none, writable, L1–L4) and a count of references of that type. A frame
becomes an Ln table only while nothing holds it as another type — in particular no writable mapping of it
exists in any validated table (each such mapping holds a "writable" type reference). Taking the first Ln
reference validates the frame's entries (``alloc_lN_table``), which takes references on what they point
to; dropping the last one releases them again (``free_lN_table``: Xen devalidates at once, in
``__put_page_type``). Pinning holds one extra reference; a CR3 (base pointer) holds one.

Entries are checked (``get_page_from_lNe``) and adjusted for a 64-bit PV guest, whose kernel runs in ring
3: every present entry gets ``_PAGE_USER``, and an L1 entry without it also ``_PAGE_GUEST_KERNEL``
(``adjust_guest_lNe``). Messages are Xen's ``MEM_LOG`` texts; the ``file:line`` prefix of ``gdprintk`` is
left out (the model has no Xen line numbers).

Differences: general page reference counts are not modelled (only type counts), nor grant or I/O
mappings; flag checks are reduced to reserved address bits and superpages (``allowsuperpage`` off).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from earlymm.arch.addr import Mfn
from earlymm.hw.events import Event
from earlymm.hw.memory import PhysMem
from earlymm.platform.xen.consts import (
    _PAGE_GUEST_KERNEL,
    LEVEL_TYPE,
    PAGE_SIZE,
    PGT_NONE,
    PGT_PINNED,
    PGT_VALIDATED,
    PGT_WRITABLE,
    XEN_FIRST_SLOT,
    XEN_LAST_SLOT,
)
from earlymm.platform.xen.events import TableValidated
from earlymm.platform.xen.frames import MachineFrames

_P, _RW, _US, _PSE = 0x1, 0x2, 0x4, 0x80
PT_LEVEL = {t: lvl for lvl, t in LEVEL_TYPE.items()}


@dataclass
class PageInfo:
    type: int = PGT_NONE
    count: int = 0
    pinned: bool = False


class PageTypes:
    """The type state of every frame a domain's page tables touch, and the checks on their entries. The
    entry width and Xen's private slots are the 64-bit ones here; ``x86_32.py`` overrides the hooks below
    (``entry_size``, ``entries``, ``write_entries``, ``xen_slots``) for 2-level and PAE tables."""

    entry_size = 8

    def __init__(self, frames: MachineFrames, mem: PhysMem, maxphyaddr: int, log: Callable[[str], None],
                 flush_tlb: Callable[[], None], emit: Callable[[Event], None]) -> None:
        self.frames = frames
        self.emit = emit
        self.mem = mem
        self.addr_mask = ((1 << maxphyaddr) - 1) & ~(PAGE_SIZE - 1)
        self.log = log
        self.flush_tlb = flush_tlb
        self.pages: dict[int, PageInfo] = {}
        self.xen_l4_slots: dict[int, int] = {}  # what Xen puts in slots 256–271 of every guest L4

    # -- type_info ----------------------------------------------------------------------------------------
    def info(self, mfn: int) -> PageInfo:
        pi = self.pages.get(mfn)
        if pi is None:
            pi = self.pages[mfn] = PageInfo()
        return pi

    def type_info(self, mfn: int) -> int:
        pi = self.pages.get(mfn) or PageInfo()
        flags = (PGT_PINNED if pi.pinned else 0) | (PGT_VALIDATED if pi.count and pi.type in PT_LEVEL else 0)
        return pi.type | flags | pi.count

    def level(self, mfn: int) -> int:
        """The table level the frame is validated as (0: not a page table now)."""
        pi = self.pages.get(mfn)
        return PT_LEVEL.get(pi.type, 0) if pi is not None and pi.count else 0

    def get_page_type(self, mfn: int, t: int, d: int) -> str | None:
        """``get_page_type``: one more reference of type ``t``; the first of a table type validates it."""
        pi = self.info(mfn)
        if pi.count and pi.type != t:
            return self._mem_log(d, f"Bad type (saw {self.type_info(mfn):016x} != exp {t:016x}) for mfn "
                                    f"{mfn:x} (pfn {self.frames.get_gpfn_from_mfn(mfn):x})")
        if not pi.count:
            if pi.type != t and t in PT_LEVEL:
                # The frame may still be writable through a stale TLB entry: Xen flushes on the type change.
                self.flush_tlb()
            pi.type = t
            if t in PT_LEVEL:
                pi.count = 1  # held while validating, so a self-reference sees the type
                err = self.alloc_table(mfn, PT_LEVEL[t], d)
                pi.count = 0
                if err:
                    pi.type = PGT_NONE
                    return err
        pi.count += 1
        return None

    def put_page_type(self, mfn: int, d: int) -> None:
        pi = self.info(mfn)
        pi.count -= 1
        assert pi.count >= 0, f"type count of mfn {mfn:x} below zero"
        if not pi.count and pi.type in PT_LEVEL:
            level = PT_LEVEL[pi.type]
            pi.type = PGT_NONE
            self.free_table(mfn, level, d)

    def _mem_log(self, d: int, text: str) -> str:
        self.log(f"d{d} {text}")
        return text

    # -- entries --------------------------------------------------------------------------------------------
    def adjust(self, e: int, level: int) -> int:
        """``adjust_guest_lNe`` for a 64-bit PV guest (its kernel runs in ring 3)."""
        if not e & _P:
            return e
        if level == 1 and not e & _US:
            return e | _US | _PAGE_GUEST_KERNEL
        return e | _US

    def _owned(self, mfn: int, d: int) -> bool:
        return self.frames.valid(mfn) and int(self.frames.owner[mfn]) == d

    def get_page_from_entry(self, e: int, level: int, d: int, table: int) -> str | None:
        """``get_page_from_l1e`` … ``get_page_from_l4e``: check a present entry and take its references."""
        if not e & _P:
            return None
        mfn = (e & self.addr_mask) >> 12
        if e & 0x000F_FFFF_FFFF_F000 & ~self.addr_mask:
            return self._mem_log(d, f"Bad L{level} flags {e & ~self.addr_mask:x}")
        if level == 1:
            if not self._owned(mfn, d):
                if not self.frames.valid(mfn):
                    return self._mem_log(d, f"Non-privileged ({d}) attempt to map I/O space {mfn:08x}")
                return self._mem_log(d, f"Error getting mfn {mfn:x} (pfn {self.frames.get_gpfn_from_mfn(mfn):x}) "
                                        f"from L1 entry {e:016x} for l1e_owner={d}, pg_owner={d}")
            if e & _RW and self.get_page_type(mfn, PGT_WRITABLE, d):
                return self._mem_log(d, f"Error getting mfn {mfn:x} (pfn {self.frames.get_gpfn_from_mfn(mfn):x}) "
                                        f"from L1 entry {e:016x} for l1e_owner={d}, pg_owner={d}")
            return None
        if level in (2, 3) and e & _PSE:
            return self._mem_log(d, "Attempt to map superpage without allowsuperpage flag in hypervisor")
        if not self._owned(mfn, d):
            return self._mem_log(d, f"Error getting mfn {mfn:x} (pfn {self.frames.get_gpfn_from_mfn(mfn):x}) "
                                    f"from L{level} entry {e:016x} for l{level}e_owner={d}, pg_owner={d}")
        if self._linear(e, level, mfn):
            return None
        return self.get_page_type(mfn, LEVEL_TYPE[level - 1], d)

    def _linear(self, e: int, level: int, mfn: int) -> bool:
        """A read-only entry naming a table of its own level (a linear page table, ``get_lN_linear_pagetable``):
        allowed, with no type reference taken."""
        pi = self.pages.get(mfn)
        return not e & _RW and pi is not None and pi.count > 0 and pi.type == LEVEL_TYPE[level]

    def put_page_from_entry(self, e: int, level: int, d: int) -> None:
        if not e & _P:
            return
        mfn = (e & self.addr_mask) >> 12
        if level == 1:
            if e & _RW and self._owned(mfn, d):
                self.put_page_type(mfn, d)
            return
        if not self._owned(mfn, d) or (e & _PSE and level in (2, 3)):
            return
        pi = self.pages.get(mfn)
        if pi is not None and pi.type == LEVEL_TYPE[level - 1] and pi.count:
            self.put_page_type(mfn, d)

    # -- tables ---------------------------------------------------------------------------------------------
    def entries(self, mfn: int) -> np.ndarray:
        ents: np.ndarray = np.frombuffer(self.mem.read(mfn << 12, PAGE_SIZE), dtype="<u8").copy()
        return ents

    def guest_slot(self, level: int, i: int, mfn: int = 0) -> bool:
        """Whether entry ``i`` of the level-``level`` table at ``mfn`` is the guest's (not Xen's)."""
        return level != 4 or not XEN_FIRST_SLOT <= i <= XEN_LAST_SLOT

    def alloc_table(self, mfn: int, level: int, d: int) -> str | None:
        """``alloc_lN_table``: check every guest entry; adjust it in place; an L4 gets Xen's own slots."""
        ents = self.entries(mfn)
        taken: list[int] = []
        for i in np.flatnonzero(ents & _P).tolist():
            if not self.guest_slot(level, i, mfn):
                continue
            e = int(ents[i])
            err = self.get_page_from_entry(e, level, d, mfn)
            if err:
                for j in reversed(taken):
                    self.put_page_from_entry(int(ents[j]), level, d)
                return self._mem_log(d, f"Failure in alloc_l{level}_table: entry {i}")
            taken.append(i)
            ents[i] = self.adjust(e, level)
        self.xen_slots(mfn, level, ents)
        self.write_entries(mfn, ents)
        self.emit(TableValidated(mfn, self.frames.get_gpfn_from_mfn(mfn), level, len(taken)))
        return None

    def xen_slots(self, mfn: int, level: int, ents: np.ndarray) -> None:
        """Xen's own entries in a newly validated table (64-bit: slots 256–271 of an L4)."""
        if level == 4:
            for slot in range(XEN_FIRST_SLOT, XEN_LAST_SLOT + 1):
                ents[slot] = self.xen_l4_slots.get(slot, 0)

    def write_entries(self, mfn: int, ents: np.ndarray) -> None:
        self.mem.write(mfn << 12, ents.tobytes())

    def free_table(self, mfn: int, level: int, d: int) -> None:
        ents = self.entries(mfn)
        for i in np.flatnonzero(ents & _P).tolist():
            if self.guest_slot(level, i, mfn):
                self.put_page_from_entry(int(ents[i]), level, d)

    def mod_entry(self, table: Mfn, index: int, new: int, level: int, d: int) -> str | None:
        """``mod_lN_entry``: validate the new entry, write it (adjusted), release the old one."""
        if not self.guest_slot(level, index, table):
            return self._mem_log(d, f"Illegal L4 update attempt in Xen-private area {index}")
        at = (table << 12) + self.entry_size * index
        old = self.mem.read_int(at, self.entry_size)
        new = self.adjust(new, level)
        same_target = (old ^ new) & (self.addr_mask | _P) == 0 and not (new & ~old & _RW)
        if not same_target or (level in (2, 3) and (old ^ new) & _PSE):
            err = self.get_page_from_entry(new, level, d, table)
            if err:
                return err
            self.mem.write_int(at, self.entry_size, new)
            self.put_page_from_entry(old, level, d)
            return None
        self.mem.write_int(at, self.entry_size, new)
        if level == 1 and old & _RW and not new & _RW and old & _P:
            self.put_page_from_entry(old, level, d)  # dropping write access releases the writable type
        return None
