"""The simulated hypervisor under one 64-bit PV domain: its hypercalls and what it does with the guest's
faults (xen/arch/x86/mm.c ``do_mmu_update``, ``do_mmuext_op``, ``do_update_va_mapping``; traps.c
``do_page_fault``, ``propagate_page_fault``, ``show_page_walk``; x86_64/entry.S ``create_bounce_frame``
@ Xen 4.2; spec §5.1, §5.5).

Xen runs in ring 0 below a guest whose kernel runs in ring 3. It is the CPU's ``Delivery``: every fault
the guest takes comes here first. A write to a read-only L1 page is emulated (``ptwr``); anything else is
bounced to the handler the guest registered in its trap table, with CR2 in ``vcpu_info``; with no handler
the domain crashes with Xen's report. Hypercalls are method calls (the guest's ``syscall`` into the
hypercall page is not simulated); each is traced.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NoReturn

import numpy as np

from earlymm.hw.cpu import Cpu
from earlymm.hw.delivery import CpuPort, ExceptionFrame
from earlymm.hw.events import FaultDelivered, Iret, ListTrace
from earlymm.hw.faults import AccessEmulated, Fault, PageFault, SimulationError, describe
from earlymm.hw.memory import PhysMem
from earlymm.platform.xen.consts import (
    DOMID_SELF,
    LEVEL_TYPE,
    MMU_MACHPHYS_UPDATE,
    MMU_NORMAL_PT_UPDATE,
    MMU_PT_UPDATE_PRESERVE_AD,
    PGT_WRITABLE,
    UVMF_INVLPG,
    UVMF_TLB_FLUSH,
    VCPU_INFO_ARCH_CR2,
    MmuExt,
)
from earlymm.platform.xen.events import Hypercall, PtwrEmulated, TablePinned, XenConsole
from earlymm.platform.xen.frames import MachineFrames
from earlymm.platform.xen.mm import PageTypes

EINVAL, EPERM, ESRCH = -22, -1, -3
PFEC_WRITE, PFEC_USER, PFEC_PRESENT = 0x2, 0x4, 0x1
FLAT_KERNEL_CS = 0xE033  # FLAT_RING3_CS64: a 64-bit PV kernel runs in ring 3


class DomainCrash(SimulationError):
    outcome = "domain_crash"


@dataclass(frozen=True, slots=True)
class XenIdentity:
    """What Xen prints about itself and where the domain runs."""

    version: str = "4.2.0"
    domid: int = 7
    vcpu: int = 0
    pcpu: int = 3


class Xen:
    """One domain with one vCPU on a simulated Xen."""

    def __init__(self, mem: PhysMem, cpu: Cpu, frames: MachineFrames, trace: ListTrace, ident: XenIdentity) -> None:
        self.mem, self.cpu, self.frames, self.trace, self.ident = mem, cpu, frames, trace, ident
        self.types = PageTypes(frames, mem, cpu.features.maxphyaddr, self.printk,
                               lambda: cpu.flush_tlb(include_global=True), trace.emit)
        self.trap_table: dict[int, tuple[int, int]] = {}  # vector → (cs, handler address)
        self.kernel_root = 0  # mfn of the guest's kernel L4 (the vCPU's CR3)
        self.user_root = 0
        self.shared_info = 0  # machine address of the domain's shared_info page
        self.console: list[str] = []
        self.guest_kernel_mode = True
        self.guest_cr4 = 0x20  # the PV guest's virtual CR4 (PAE; Xen emulates its reads and writes)

    @property
    def domid(self) -> int:
        return self.ident.domid

    def printk(self, text: str) -> None:
        line = f"(XEN) {text}"
        self.console.append(line)
        self.trace.emit(XenConsole(line))

    def _trace(self, name: str, detail: str, calls: int, rc: int) -> None:
        self.trace.emit(Hypercall(name, detail, calls, rc))

    def _load_cr3(self, mfn: int) -> None:
        """Xen (ring 0) switches the vCPU to a new kernel base pointer."""
        cpu, cpl = self.cpu, self.cpu.regs.cpl
        cpu.regs.cpl = 0
        try:
            cpu.write_cr3(mfn << 12)
        finally:
            cpu.regs.cpl = cpl

    # -- hypercalls ---------------------------------------------------------------------------------------
    def mmu_update(self, reqs: Sequence[tuple[int, int]], dom: int = DOMID_SELF) -> tuple[int, int]:
        """``HYPERVISOR_mmu_update``: (rc, number of requests done). ``ptr`` is a machine address | command."""
        done, rc = 0, 0
        for ptr, val in reqs:
            rc = self._mmu_update_one(ptr, val)
            if rc:
                break
            done += 1
        self._trace("mmu_update", f"{done}/{len(reqs)} update(s) at {reqs[0][0] & ~0xFFF:#x}" if reqs else "0",
                    1, rc)
        return rc, done

    def mmu_update_each(self, base: int, vals: np.ndarray) -> int:
        """``len(vals)`` separate one-entry ``mmu_update`` calls on consecutive entries from machine address
        ``base`` (a guest loop of ``set_pte``); returns how many failed. A run into a page that is not a
        page table is one type check and one store, as the separate calls would each find the same."""
        d, mfn = self.domid, base >> 12
        n = len(vals)
        if (base & 0xFFF) + 8 * n <= 0x1000 and self.types._owned(mfn, d) and not self.types.level(mfn) \
                and self.types.get_page_type(mfn, PGT_WRITABLE, d) is None:
            self.mem.write(base, vals.astype("<u8").tobytes())
            self.types.put_page_type(mfn, d)
            failed = 0
        else:
            failed = sum(1 for i, v in enumerate(vals.tolist()) if self._mmu_update_one(base + 8 * i, int(v)))
        self._trace("mmu_update", f"{n} single update(s) from {base:#x}" + (f", {failed} refused" if failed else ""),
                    n, EINVAL if failed else 0)
        return failed

    def _mmu_update_one(self, ptr: int, val: int) -> int:
        d = self.domid
        cmd, mfn, at = ptr & 3, ptr >> 12, ptr & ~3
        if cmd == MMU_MACHPHYS_UPDATE:
            if not self.types._owned(mfn, d):
                return EINVAL
            self.frames.set_gpfn_from_mfn(mfn, val)  # type: ignore[arg-type]
            return 0
        if cmd not in (MMU_NORMAL_PT_UPDATE, MMU_PT_UPDATE_PRESERVE_AD):
            return EINVAL
        if not self.types._owned(mfn, d):
            self.printk(f"d{d} Could not get page for normal update (mfn {mfn:x})")
            return EINVAL
        level = self.types.level(mfn)
        if level:
            return EINVAL if self.types.mod_entry(mfn, (at & 0xFFF) >> 3, val, level, d) else 0  # type: ignore[arg-type]
        if self.types.get_page_type(mfn, PGT_WRITABLE, d) is not None:
            return EINVAL
        self.mem.write_u64(at, val)
        self.types.put_page_type(mfn, d)
        return 0

    def mmuext_op(self, ops: Sequence[tuple[MmuExt, int]]) -> int:
        """``HYPERVISOR_mmuext_op``: each op is (command, mfn or linear address)."""
        d, rc = self.domid, 0
        for cmd, arg in ops:
            rc = self._mmuext(cmd, arg, d)
            self._trace("mmuext_op", f"{cmd.name} {arg:#x}", 1, rc)
            if rc:
                break
        return rc

    def _mmuext(self, cmd: MmuExt, arg: int, d: int) -> int:
        t = self.types
        if MmuExt.PIN_L1_TABLE <= cmd <= MmuExt.PIN_L4_TABLE:
            level = int(cmd) + 1
            if not t._owned(arg, d):
                return EINVAL
            if t.info(arg).pinned:
                self.printk(f"d{d} Mfn {arg:x} already pinned")
                return EINVAL
            if t.get_page_type(arg, LEVEL_TYPE[level], d):
                self.printk(f"d{d} Error while pinning mfn {arg:x}")
                return EINVAL
            t.info(arg).pinned = True
            self.trace.emit(TablePinned(arg, self.frames.get_gpfn_from_mfn(arg), level, True))
            return 0
        if cmd is MmuExt.UNPIN_TABLE:
            pi = t.info(arg)
            if not t._owned(arg, d) or not pi.pinned:
                self.printk(f"d{d} Mfn {arg:x} not pinned")
                return EINVAL
            level = t.level(arg)
            pi.pinned = False
            t.put_page_type(arg, d)
            self.trace.emit(TablePinned(arg, self.frames.get_gpfn_from_mfn(arg), level, False))
            return 0
        if cmd in (MmuExt.NEW_BASEPTR, MmuExt.NEW_USER_BASEPTR):
            kernel = cmd is MmuExt.NEW_BASEPTR
            old = self.kernel_root if kernel else self.user_root
            if arg and (not t._owned(arg, d) or t.get_page_type(arg, LEVEL_TYPE[4], d)):
                self.printk(f"d{d} Error while installing new {'' if kernel else 'user '}baseptr {arg:x}")
                return EINVAL
            if old:
                t.put_page_type(old, d)
            if kernel:
                self.kernel_root = arg
                self._load_cr3(arg)
            else:
                self.user_root = arg
            return 0
        if cmd in (MmuExt.TLB_FLUSH_LOCAL, MmuExt.TLB_FLUSH_MULTI, MmuExt.TLB_FLUSH_ALL):
            self.cpu.flush_tlb(include_global=True)
            return 0
        if cmd in (MmuExt.INVLPG_LOCAL, MmuExt.INVLPG_MULTI, MmuExt.INVLPG_ALL):
            self.cpu.mmu.tlb.invlpg(arg, 0)
            return 0
        return EINVAL

    def guest_map_l1e(self, va: int) -> int | None:
        """Machine address of the L1 entry mapping ``va`` in the current kernel tables, if there is one."""
        table = self.kernel_root
        for shift in (39, 30, 21):
            e = self.mem.read_u64((table << 12) + 8 * ((va >> shift) & 511))
            if not e & 1 or e & 0x80:
                return None
            table = (e & self.types.addr_mask) >> 12
        return (table << 12) + 8 * ((va >> 12) & 511)

    def update_va_mapping(self, va: int, val: int, flags: int) -> int:
        """``HYPERVISOR_update_va_mapping``: replace the L1 entry that maps ``va`` (validated as any L1
        update), then flush as asked."""
        d, rc = self.domid, 0
        at = self.guest_map_l1e(va)
        if at is None:
            self.printk(f"d{d} Could not find L1 PTE for address {va:x}")
            rc = EINVAL
        elif self.types.mod_entry(at >> 12, (at & 0xFFF) >> 3, val, 1, d):  # type: ignore[arg-type]
            rc = EINVAL
        elif flags & UVMF_INVLPG:
            self.cpu.mmu.tlb.invlpg(va, 0)
        elif flags & UVMF_TLB_FLUSH:
            self.cpu.flush_tlb(include_global=True)
        self._trace("update_va_mapping", f"{va:#x} → {val:#x}", 1, rc)
        return rc

    def set_trap_table(self, entries: Sequence[tuple[int, int, int]]) -> int:
        """``HYPERVISOR_set_trap_table``: (vector, cs, address) per entry; a zero address clears it."""
        for vector, cs, address in entries:
            if address:
                self.trap_table[vector] = (cs, address)
            else:
                self.trap_table.pop(vector, None)
        self._trace("set_trap_table", ", ".join(str(v) for v, _c, a in entries if a) or "cleared", 1, 0)
        return 0

    def memory_op_memory_map(self) -> tuple[int, list[tuple[int, int, int]]]:
        """``XENMEM_memory_map``: a domU the toolstack gave no e820 gets -ENOSYS (Xen 4.2)."""
        self._trace("memory_op", "XENMEM_memory_map", 1, -38)
        return -38, []

    def memory_op_machphys_mapping(self) -> int:
        """``XENMEM_machphys_mapping``: how many entries the m2p has (its read-only window's size)."""
        self._trace("memory_op", "XENMEM_machphys_mapping", 1, 0)
        return self.frames.nr_frames

    # -- faults -------------------------------------------------------------------------------------------
    def deliver(self, cpu: CpuPort, fault: Fault) -> None:
        cpu.check_progress(fault)
        if isinstance(fault, PageFault):
            if self._ptwr(fault):
                raise AccessEmulated()
            # propagate_page_fault: the error code as the guest expects it (kernel mode: U/S clear)
            ec = fault.error_code & ~PFEC_USER if self.guest_kernel_mode else fault.error_code | PFEC_USER
            self._set_guest_cr2(fault.cr2)
            handler = self.trap_table.get(14)
            if handler is None:
                self.printk(f"d{self.domid}:v{self.ident.vcpu}: unhandled page fault (ec={ec:04X})")
                self.show_page_walk(fault.cr2)
                self.domain_crash_synchronous(f"unhandled page fault at {fault.cr2:#x} (ec={ec:04X})")
            self._bounce(cpu, 14, ec, handler)
            return
        handler = self.trap_table.get(fault.vector)
        if handler is None:
            self.printk(f"d{self.domid}:v{self.ident.vcpu}: unhandled exception {fault.vector} ({describe(fault)})")
            self.domain_crash_synchronous(f"unhandled {describe(fault)}")
        self._bounce(cpu, fault.vector, fault.error_code, handler)

    def _set_guest_cr2(self, cr2: int) -> None:
        self.cpu.regs.cr2 = cr2
        if self.shared_info:
            self.mem.write_u64(self.shared_info + VCPU_INFO_ARCH_CR2, cr2)

    def _ptwr(self, fault: PageFault) -> bool:
        """``ptwr_do_page_fault``: a kernel-mode write to a present, read-only mapping of one of the
        domain's L1 pages is emulated — an 8-byte store, validated like an ``mmu_update`` of that entry."""
        if fault.error_code & (PFEC_WRITE | PFEC_PRESENT) != PFEC_WRITE | PFEC_PRESENT or not self.guest_kernel_mode:
            return False
        pending = self.cpu.pending_store
        res = self.cpu.mmu.probe(fault.cr2, 0)
        if pending is None or pending[0] != fault.cr2 or pending[1] != 8 or fault.cr2 & 7 or not res.ok:
            return False
        mfn = res.pa >> 12
        if self.types.level(mfn) != 1 or not self.types._owned(mfn, self.domid):
            return False
        index = (res.pa & 0xFFF) >> 3
        if self.types.mod_entry(mfn, index, pending[2], 1, self.domid):  # type: ignore[arg-type]
            return False  # the emulation failed: the fault goes to the guest
        self.trace.emit(PtwrEmulated(fault.cr2, mfn, index, pending[2]))
        return True

    def _bounce(self, cpu: CpuPort, vector: int, ec: int, handler: tuple[int, int]) -> None:
        """``create_bounce_frame``: RCX, R11, [error code], RIP, CS, RFLAGS, RSP, SS on the guest kernel
        stack (written as the guest would, so a stack the guest cannot write crashes the domain), then the
        handler; its ``iret`` hypercall returns to the interrupted access, which is retried."""
        r = cpu.regs
        cs, address = handler
        entry = cpu.code.get(address)
        slots = [0, 0] + ([ec] if vector in (8, 10, 11, 12, 13, 14, 17) else []) + \
            [r.rip, FLAT_KERNEL_CS, r.rflags, r.rsp, 0xE02B]
        sp = (r.rsp & ~0xF) - 8 * len(slots)
        for i, v in enumerate(slots):
            res = cpu.mmu.translate(sp + 8 * i, 1, True, False)
            if not res.ok:
                self.domain_crash_synchronous(f"the bounce frame for vector {vector} could not be written at "
                                              f"{sp + 8 * i:#x}")
            cpu.mem.write_u64(res.pa, v)
        if entry is None:
            self.domain_crash_synchronous(f"trap table entry {vector} points at {address:#x}, where no guest "
                                          "code was installed")
        saved = r.rsp
        r.rsp = sp
        cpu.depth += 1
        cpu.trace.emit(FaultDelivered(vector, entry[0], cpu.depth))
        try:
            entry[1](ExceptionFrame(vector, ec, r.rip, cs, sp + 8 * (3 if vector == 14 else 2), cpu.depth))
        finally:
            cpu.depth -= 1
        r.rsp = saved
        cpu.trace.emit(Iret(vector, cpu.depth))

    def show_page_walk(self, addr: int) -> None:
        """``show_page_walk`` (x86_64/traps.c): each level's entry and the pfn the m2p gives for its mfn."""
        self.printk(f"Pagetable walk from {addr:016x}:")
        if (addr >> 47) not in (0, 0x1FFFF):
            return
        mfn = self.cpu.regs.cr3 >> 12
        for level, shift in ((4, 39), (3, 30), (2, 21), (1, 12)):
            idx = (addr >> shift) & 511
            e = self.mem.read_u64((mfn << 12) + 8 * idx)
            mfn = (e & self.types.addr_mask) >> 12
            pfn = self.frames.get_gpfn_from_mfn(mfn)
            pse = e & 0x80 and level in (2, 3)
            self.printk(f" L{level}[{idx:#05x}] = {e:016x} {pfn:016x}{' (PSE)' if pse else ''}")
            if not e & 1 or pse or not self.frames.valid(mfn):
                return

    @property
    def build_name(self) -> str:
        """The build in Xen's banner lines (``x86_64``; the 32-bit builds say theirs)."""
        return "x86_64"

    def domain_crash_synchronous(self, why: str) -> NoReturn:
        ident = self.ident
        self.printk("domain_crash_sync called from entry.S")
        self.printk(f"Domain {ident.domid} (vcpu#{ident.vcpu}) crashed on cpu#{ident.pcpu}:")
        self.printk(f"----[ Xen-{ident.version} {self.build_name} debug=n Not tainted ]----")
        raise DomainCrash(f"Xen crashed domain {ident.domid}: {why}", list(self.trace.recent))
