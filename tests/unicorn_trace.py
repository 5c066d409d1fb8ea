"""Unicorn with the page-table pool behind MMIO callbacks: every read and write QEMU's walker makes.

``UnicornMmu`` (tests/unicorn_harness.py) shows what a walk *ended* with: fault, error code, CR2, the
physical address, the table bytes afterwards. To see what QEMU read at *each level* — in particular
whether a level that reads an entry an earlier level of the same walk already used sees the A bit that
use stored — the pool here is mapped with ``mmio_map``: QEMU 5.0's ``handle_mmu_fault`` reads each
64-bit entry with ``x86_ldq_phys`` (two 4-byte MMIO reads, low half first) and stores A/D with
``x86_stl_phys_notdirty`` (one 4-byte write of the low half), and both reach the callbacks below in
program order. The pool's contents live in ``backing``; the walk of the access itself is told apart
from the fetch of the harness instruction by a code hook on that instruction (the instruction is
fetched, through root entry ``HARNESS_INDEX``, before it runs; its own access is walked after).

A fetch from the pool (MMIO) cannot execute: it stops in the FETCH_PROT hook like the RAM pool's, after
QEMU has walked the target a few more times (read-only repeats, with every A already set).
"""

from __future__ import annotations

from dataclasses import dataclass

from unicorn import UC_HOOK_CODE, UC_MEM_WRITE, Uc

from tests.unicorn_harness import HARNESS_VA, KIND_OFFSET, SUP_CODE_VA, USER_CODE_VA, UcOutcome, UnicornMmu


@dataclass(frozen=True, slots=True)
class TableRead:
    addr: int
    value: int  # the 64-bit entry as QEMU read it


@dataclass(frozen=True, slots=True)
class TableWrite:
    addr: int  # of the entry (8-byte aligned)
    old: int  # the 64-bit entry just before the store
    new: int  # … and after it


@dataclass
class WalkTrace:
    """What QEMU's walker did in the pool for one access, in order (data accesses left out)."""

    events: list[TableRead | TableWrite]

    @property
    def reads(self) -> list[TableRead]:
        return [e for e in self.events if isinstance(e, TableRead)]

    @property
    def writes(self) -> list[TableWrite]:
        return [e for e in self.events if isinstance(e, TableWrite)]


class TracingUnicornMmu(UnicornMmu):
    """``UnicornMmu`` whose pool is MMIO: ``access`` also leaves the walk's ``trace``."""

    def _map_pool(self) -> None:
        self.backing = bytearray(self.pool_size)
        self._raw: list[tuple[str, int, int, int]] = []  # (r/w, pool offset, size, value)
        self._mark = 0
        self._insn = -1
        self.trace = WalkTrace([])
        uc = self.uc
        uc.mmio_map(self.pool_base, self.pool_size, self._mmio_read, None, self._mmio_write, None)
        uc.hook_add(UC_HOOK_CODE, self._on_code, None, HARNESS_VA, HARNESS_VA + 0x1FFF)

    # -- MMIO and hooks -------------------------------------------------------------------------------
    def _mmio_read(self, uc: Uc, offset: int, size: int, _ud: object) -> int:
        v = int.from_bytes(self.backing[offset:offset + size], "little")
        self._raw.append(("r", offset, size, v))
        return v

    def _mmio_write(self, uc: Uc, offset: int, size: int, value: int, _ud: object) -> None:
        self._raw.append(("w", offset, size, value))
        self.backing[offset:offset + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")

    def _on_code(self, uc: Uc, address: int, size: int, _ud: object) -> None:
        if address == self._insn:
            self._mark = len(self._raw)

    def _on_mem(self, uc: Uc, access: int, address: int, size: int, value: int, _ud: object) -> None:
        off = address - self.pool_base
        if self._write_byte is None and access == UC_MEM_WRITE and 0 <= off < self.pool_size:
            self._write_byte = self.backing[off]  # the base class would read the MMIO range through uc
            self._events.append(("mem", address))
            return
        super()._on_mem(uc, access, address, size, value, _ud)

    # -- memory -----------------------------------------------------------------------------------------
    def write_pool(self, data: bytes) -> None:
        self.backing[:] = data

    def read_pool(self) -> bytes:
        return bytes(self.backing)

    def write(self, pa: int, data: bytes) -> None:
        off = pa - self.pool_base
        if 0 <= off < self.pool_size:
            self.backing[off:off + len(data)] = data
        else:
            super().write(pa, data)

    def read(self, pa: int, size: int) -> bytes:
        off = pa - self.pool_base
        if 0 <= off < self.pool_size:
            return bytes(self.backing[off:off + size])
        return super().read(pa, size)

    # -- one access -------------------------------------------------------------------------------------
    def access(self, *, cr0: int, cr4: int, efer: int, cr3: int, va: int, kind: int, user: bool,
               ac: bool = False, pkru: int | None = None, al: int = 0) -> UcOutcome:
        self._insn = (USER_CODE_VA if user else SUP_CODE_VA) + KIND_OFFSET[kind]
        before = bytes(self.backing)
        self._raw = []
        self._mark = 0
        out = super().access(cr0=cr0, cr4=cr4, efer=efer, cr3=cr3, va=va, kind=kind, user=user, ac=ac,
                             pkru=pkru, al=al)
        self.trace = self._decode(self._raw[self._mark:], before)
        return out

    def _decode(self, raw: list[tuple[str, int, int, int]], before: bytes) -> WalkTrace:
        """4-byte halves into 64-bit entry reads; stores into (old, new) entries; byte-sized accesses
        (the instruction's own data access) dropped. ``before`` is the pool as the walk found it."""
        mem = bytearray(before)
        events: list[TableRead | TableWrite] = []
        i = 0
        while i < len(raw):
            op, off, size, value = raw[i]
            i += 1
            if size != 4:
                if op == "w":
                    mem[off:off + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
                continue
            base = off & ~7
            if op == "r":
                if off & 7 == 0 and i < len(raw) and raw[i][:3] == ("r", off + 4, 4):
                    value |= raw[i][3] << 32
                    i += 1
                else:
                    raise AssertionError(f"unexpected MMIO read pattern at pool offset {off:#x}: {raw[i - 1:i + 1]}")
                events.append(TableRead(self.pool_base + base, value))
                continue
            old = int.from_bytes(mem[base:base + 8], "little")
            shift = 8 * (off - base)
            new = (old & ~(0xFFFF_FFFF << shift)) | (value << shift)
            mem[base:base + 8] = new.to_bytes(8, "little")
            events.append(TableWrite(self.pool_base + base, old, new))
        return WalkTrace(events)
