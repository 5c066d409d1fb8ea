"""Unicorn 2.1.x (QEMU 5.0's TCG softmmu) as an independent x86 MMU oracle.

The harness makes Unicorn walk *our* page tables with QEMU's walker (``handle_mmu_fault``) and reports,
for one access: the exception vector (14 #PF, 13 #GP, or none), CR2, the #PF error code, the physical
address the access reached, and — by reading the table pool back — every A/D bit QEMU wrote.

How (see /work/shared/notes/unicorn-as-oracle.md):

* Physical memory: a *harness* region high in the 40-bit space (code, GDT, stack, the harness's own
  page tables) and a *pool* region where the page tables under test live. Everything else is
  unmapped, so a successful data access ends in an ``*_UNMAPPED`` hook (or ``MEM_READ``/``MEM_WRITE``
  for the pool), and a successful fetch in ``FETCH_UNMAPPED`` or ``FETCH_PROT`` (the pool is mapped
  without execute permission) — all of which receive the *physical* address in Unicorn 2.1.x.
* The harness is reachable from every forest through root entry 511 (VA ``0xffffff8000000000``, the
  same in 4- and 5-level paging), with A/D pre-set so QEMU never writes to it.
* Ring 3 is entered once by a real ``iretq`` through a GDT with DPL-3 segments; that CPU context and a
  ring-0 one are saved and one of them is restored before every access (a fault handled in a hook
  leaves the CPU in a state where the next fault would become #DF). The TLB is flushed every time.
* The #PF error code has no API: QEMU keeps it in ``CPUX86State.error_code``, 16 bytes before
  ``dr[0]``; the offset of ``dr[0]`` in a ``context_save()`` blob is found with markers in DR0–DR7, and
  the error code is checked against a known fault at start-up.
* PKRU is loaded by executing ``wrpkru`` (there is no register id for it).
"""

from __future__ import annotations

import contextlib
import struct
from dataclasses import dataclass

from unicorn import (
    UC_ARCH_X86,
    UC_CTL_IO_WRITE,
    UC_CTL_TLB_FLUSH,
    UC_HOOK_INTR,
    UC_HOOK_MEM_FETCH_PROT,
    UC_HOOK_MEM_READ,
    UC_HOOK_MEM_UNMAPPED,
    UC_HOOK_MEM_WRITE,
    UC_MEM_WRITE,
    UC_MODE_64,
    UC_PROT_ALL,
    UC_PROT_READ,
    UC_PROT_WRITE,
    Uc,
    UcError,
)
from unicorn.x86_const import (
    UC_CPU_X86_ICELAKE_SERVER,
    UC_X86_REG_CR0,
    UC_X86_REG_CR2,
    UC_X86_REG_CR3,
    UC_X86_REG_CR4,
    UC_X86_REG_CS,
    UC_X86_REG_DR0,
    UC_X86_REG_EFLAGS,
    UC_X86_REG_GDTR,
    UC_X86_REG_MSR,
    UC_X86_REG_RAX,
    UC_X86_REG_RCX,
    UC_X86_REG_RDI,
    UC_X86_REG_RDX,
    UC_X86_REG_RIP,
    UC_X86_REG_RSP,
)

MAXPHYADDR = 40  # every Unicorn 2.1 x86 model
MSR_EFER = 0xC000_0080
CR0_BASE = 0x8000_0011  # PG | ET | PE
CR0_WP = 1 << 16
CR4_BASE = 0x5_0220  # OSXSAVE | FSGSBASE | OSFXSR | PAE (what Unicorn's 64-bit mode starts with, + PAE)
CR4_LA57 = 1 << 12
CR4_PKE = 1 << 22
EFER_BASE = 0x500  # LME | LMA
EFER_NXE = 1 << 11
EFLAGS_AC = 1 << 18
CR2_SENTINEL = 0xC2C2_C2C2_C000

HARNESS_PA = 0xFF_FF00_0000
HARNESS_VA = 0xFFFF_FF80_0000_0000
HARNESS_INDEX = 511  # root entry (and PML4 entry in 5-level paging) that leads to the harness
HARNESS_SIZE = 0x10_0000

# Harness frames (offsets from HARNESS_PA) and their virtual pages (offsets from HARNESS_VA).
CODE, GDT, STACK, H_PML4, H_PDPT, H_PD, H_PT, BOOT_ROOT = (0x1000 * i for i in range(8))
SUP_CODE_VA = HARNESS_VA + 0x0000  # the code frame as a supervisor page (H_PT[0], US=0)
USER_CODE_VA = HARNESS_VA + 0x1000  # the same frame as a user page (H_PT[1], US=1)
GDT_VA = HARNESS_VA + 0x2000
STACK_VA = HARNESS_VA + 0x3000

# Code frame layout.
OFF_WRPKRU = 0x00  # wrpkru
OFF_READ = 0x10  # mov al, [rdi]
OFF_WRITE = 0x20  # mov [rdi], al
OFF_FETCH = 0x30  # jmp rdi
OFF_IRET = 0x40  # iretq
INSN_LEN = {OFF_WRPKRU: 3, OFF_READ: 2, OFF_WRITE: 2, OFF_FETCH: 2, OFF_IRET: 2}
KIND_OFFSET = (OFF_READ, OFF_WRITE, OFF_FETCH)

P, RW, US, A, D = 1, 2, 4, 0x20, 0x40
TABLE = P | RW | US | A | D  # D too: a table entry reached as a leaf through an alias must not change

USER_CS, USER_SS = 0x18 | 3, 0x20 | 3
GDT_ENTRIES = (
    0,
    0x00AF_9A00_0000_FFFF,  # 0x08 ring-0 64-bit code
    0x00CF_9200_0000_FFFF,  # 0x10 ring-0 data
    0x00AF_FA00_0000_FFFF,  # 0x18 ring-3 64-bit code
    0x00CF_F200_0000_FFFF,  # 0x20 ring-3 data
)


def _code_frame() -> bytes:
    code = bytearray(b"\x90" * 0x1000)  # nop

    def put(off: int, hexbytes: str) -> None:
        b = bytes.fromhex(hexbytes)
        code[off:off + len(b)] = b

    put(OFF_WRPKRU, "0f01ef")
    put(OFF_READ, "8a07")
    put(OFF_WRITE, "8807")
    put(OFF_FETCH, "ffe7")
    put(OFF_IRET, "48cf")
    return bytes(code)


def harness_frames() -> dict[int, bytes]:
    """Physical frames of the harness (code, GDT, stack, tables), for loading into a model as well."""
    frames: dict[int, bytearray] = {HARNESS_PA + off: bytearray(0x1000) for off in range(0, 0x8000, 0x1000)}

    def w64(off: int, value: int) -> None:
        f = frames[HARNESS_PA + (off & ~0xFFF)]
        struct.pack_into("<Q", f, off & 0xFFF, value)

    frames[HARNESS_PA + CODE][:] = _code_frame()
    for i, g in enumerate(GDT_ENTRIES):
        w64(GDT + 8 * i, g)
    w64(H_PML4 + 8 * HARNESS_INDEX, HARNESS_PA + H_PDPT | TABLE)
    w64(H_PDPT, HARNESS_PA + H_PD | TABLE)
    w64(H_PD, HARNESS_PA + H_PT | TABLE)
    w64(H_PT + 0, HARNESS_PA + CODE | P | RW | A | D)  # supervisor code
    w64(H_PT + 8, HARNESS_PA + CODE | P | RW | US | A | D)  # user code
    w64(H_PT + 16, HARNESS_PA + GDT | P | RW | A | D)
    w64(H_PT + 24, HARNESS_PA + STACK | P | RW | A | D)
    w64(BOOT_ROOT + 8 * HARNESS_INDEX, harness_root_entry("4"))
    return {pa: bytes(f) for pa, f in frames.items()}


def harness_root_entry(mode: str) -> int:
    """The value of root entry ``HARNESS_INDEX`` of every forest in ``mode`` ("4" or "5")."""
    return (HARNESS_PA + (H_PML4 if mode == "5" else H_PDPT)) | TABLE


@dataclass
class UcOutcome:
    vector: int | None  # 14, 13, another vector, or None (the access completed)
    cr2: int
    error_code: int
    pa: int | None  # physical address of the access (hooks), None if it faulted
    status: str  # "ok" or Unicorn's error text
    events: list[tuple[str, int]]
    fault_rip: int = 0  # RIP when the exception was raised

    def describe(self) -> str:
        if self.vector == 14:
            return f"#PF err={self.error_code:#x} cr2={self.cr2:#x}"
        if self.vector is not None:
            return f"vector {self.vector} err={self.error_code:#x} cr2={self.cr2:#x}"
        return f"ok pa={self.pa:#x}" if self.pa is not None else f"no fault and no access seen ({self.status})"


class UnicornMmu:
    """One Unicorn instance set up as described in the module docstring."""

    def __init__(self, pool_base: int = 0x10_0000, pool_frames: int = 16,
                 cpu_model: int = UC_CPU_X86_ICELAKE_SERVER) -> None:
        self.pool_base = pool_base
        self.pool_size = pool_frames * 0x1000
        uc = self.uc = Uc(UC_ARCH_X86, UC_MODE_64)
        uc.ctl_set_cpu_model(cpu_model)
        uc.mem_map(HARNESS_PA + CODE, 0x1000, UC_PROT_ALL)
        uc.mem_map(HARNESS_PA + 0x1000, HARNESS_SIZE - 0x1000, UC_PROT_READ | UC_PROT_WRITE)
        self._map_pool()
        for pa, data in harness_frames().items():
            uc.mem_write(pa, data)
        self._events: list[tuple[str, int]] = []
        self._vector: int | None = None
        self._fault_rip = 0
        self._write_byte: int | None = None
        uc.hook_add(UC_HOOK_INTR, self._on_intr)
        uc.hook_add(UC_HOOK_MEM_READ | UC_HOOK_MEM_WRITE, self._on_mem)
        uc.hook_add(UC_HOOK_MEM_UNMAPPED | UC_HOOK_MEM_FETCH_PROT, self._on_stop)
        self._boot()

    def _map_pool(self) -> None:
        # No execute permission: a fetch that reaches the pool stops in the FETCH_PROT hook.
        self.uc.mem_map(self.pool_base, self.pool_size, UC_PROT_READ | UC_PROT_WRITE)

    # -- hooks --------------------------------------------------------------------------------------
    def _on_intr(self, uc: Uc, intno: int, _ud: object) -> None:
        self._vector = intno
        self._fault_rip = uc.reg_read(UC_X86_REG_RIP)
        uc.emu_stop()

    def _on_mem(self, uc: Uc, access: int, address: int, size: int, value: int, _ud: object) -> None:
        self._events.append(("mem", address))
        if self._write_byte is None and access == UC_MEM_WRITE:  # memory before the store lands
            with contextlib.suppress(UcError):  # unmapped: the WRITE_UNMAPPED hook follows
                self._write_byte = uc.mem_read(address, 1)[0]

    def _on_stop(self, uc: Uc, access: int, address: int, size: int, value: int, _ud: object) -> bool:
        self._events.append(("stop", address))
        return False

    # -- set-up -------------------------------------------------------------------------------------
    def _boot(self) -> None:
        uc = self.uc
        uc.reg_write(UC_X86_REG_CR4, CR4_BASE)
        uc.reg_write(UC_X86_REG_CR3, HARNESS_PA + BOOT_ROOT)
        uc.reg_write(UC_X86_REG_MSR, (MSR_EFER, EFER_BASE | EFER_NXE))
        uc.reg_write(UC_X86_REG_CR0, CR0_BASE)
        uc.reg_write(UC_X86_REG_GDTR, (0, GDT_VA, 8 * len(GDT_ENTRIES) - 1, 0))
        uc.reg_write(UC_X86_REG_EFLAGS, 0x2)
        self.sup_ctx = uc.context_save()
        frame = (USER_CODE_VA + OFF_READ, USER_CS, 0x2, STACK_VA + 0xF00, USER_SS)
        uc.mem_write(HARNESS_PA + STACK + 0x800, struct.pack("<5Q", *frame))
        uc.reg_write(UC_X86_REG_RSP, STACK_VA + 0x800)
        uc.emu_start(SUP_CODE_VA + OFF_IRET, USER_CODE_VA + OFF_READ)
        if uc.reg_read(UC_X86_REG_CS) != USER_CS or self._vector is not None:
            raise RuntimeError(f"iretq to ring 3 failed: CS={uc.reg_read(UC_X86_REG_CS):#x} vector={self._vector}")
        self.user_ctx = uc.context_save()
        # Locate CPUX86State.error_code: 16 bytes before dr[0] (int error_code, int exception_is_int,
        # target_ulong exception_next_eip, target_ulong dr[8]).
        uc.context_restore(self.sup_ctx)
        markers = [0x5AFE_D00D_0000_0000 + i for i in range(4)]
        for i, mk in enumerate(markers):
            uc.reg_write(UC_X86_REG_DR0 + i, mk)
        blob = bytes(uc.context_save())
        dr0 = blob.find(struct.pack("<Q", markers[0]))
        if dr0 < 0 or blob.find(struct.pack("<Q", markers[1])) != dr0 + 8:
            raise RuntimeError("could not find dr[] in the Unicorn context blob")
        self.error_code_offset = dr0 - 16
        # Check the offset with a fault whose error code is known: a user write to a not-present page.
        probe_root = self.pool_base
        saved = self.read(probe_root, 0x1000)
        self.write(probe_root, bytes(0x1000))
        self.write(probe_root + 8 * HARNESS_INDEX, struct.pack("<Q", harness_root_entry("4")))
        out = self.access(cr0=CR0_BASE, cr4=CR4_BASE, efer=EFER_BASE | EFER_NXE, cr3=probe_root, va=0x1000,
                          kind=1, user=True)
        self.write(probe_root, saved)
        if (out.vector, out.error_code, out.cr2) != (14, 0x6, 0x1000):
            raise RuntimeError(f"error-code extraction self-check failed: {out}")

    # -- memory -------------------------------------------------------------------------------------
    def write_pool(self, data: bytes) -> None:
        self.uc.mem_write(self.pool_base, data)

    def read_pool(self) -> bytes:
        return bytes(self.uc.mem_read(self.pool_base, self.pool_size))

    def write(self, pa: int, data: bytes) -> None:
        self.uc.mem_write(pa, data)

    def read(self, pa: int, size: int) -> bytes:
        return bytes(self.uc.mem_read(pa, size))

    # -- one access ---------------------------------------------------------------------------------
    def access(self, *, cr0: int, cr4: int, efer: int, cr3: int, va: int, kind: int, user: bool,
               ac: bool = False, pkru: int | None = None, al: int = 0) -> UcOutcome:
        """Perform one byte access (0 read ``mov al,[rdi]``, 1 write ``mov [rdi],al``, 2 fetch ``jmp rdi``)
        at CPL 3 (``user``) or 0, with the given control registers; PKRU loaded with ``wrpkru`` if given
        (CR4.PKE must be set)."""
        uc = self.uc
        uc.context_restore(self.user_ctx if user else self.sup_ctx)
        uc.reg_write(UC_X86_REG_CR4, cr4)
        uc.reg_write(UC_X86_REG_MSR, (MSR_EFER, efer))
        uc.reg_write(UC_X86_REG_CR0, cr0)
        uc.reg_write(UC_X86_REG_CR3, cr3)
        uc.reg_write(UC_X86_REG_CR2, CR2_SENTINEL)
        uc.reg_write(UC_X86_REG_EFLAGS, 0x2 | (EFLAGS_AC if ac and not user else 0))
        base = USER_CODE_VA if user else SUP_CODE_VA
        uc.ctl(UC_CTL_TLB_FLUSH, UC_CTL_IO_WRITE)
        self._vector = None
        self._events = []
        self._write_byte = None
        status = "ok"
        if pkru is not None:
            uc.reg_write(UC_X86_REG_RAX, pkru)
            uc.reg_write(UC_X86_REG_RCX, 0)
            uc.reg_write(UC_X86_REG_RDX, 0)
            uc.emu_start(base + OFF_WRPKRU, base + OFF_WRPKRU + 3, count=1)
            if self._vector is not None or self._events:
                raise RuntimeError(f"wrpkru failed: vector {self._vector}, events {self._events}")
            uc.ctl(UC_CTL_TLB_FLUSH, UC_CTL_IO_WRITE)
        uc.reg_write(UC_X86_REG_RDI, va)
        uc.reg_write(UC_X86_REG_RAX, al)
        start = base + KIND_OFFSET[kind]
        try:
            uc.emu_start(start, start + 2, count=2)
        except UcError as e:
            status = str(e)
        cr2 = uc.reg_read(UC_X86_REG_CR2)
        err = 0
        if self._vector is not None:
            err = struct.unpack_from("<i", bytes(uc.context_save()), self.error_code_offset)[0] & 0xFFFF_FFFF
        pa = None if self._vector is not None or not self._events else self._events[0][1]
        return UcOutcome(self._vector, cr2, err, pa, status, list(self._events), self._fault_rip)

    @property
    def written_byte_before_store(self) -> int | None:
        """For the last write access: the byte at the target just before Unicorn stored AL (after its
        A/D updates), when the target was mapped memory."""
        return self._write_byte


def control_registers(mode: str, *, wp: bool, nxe: bool, smep: bool, smap: bool, pke: bool) -> tuple[int, int, int]:
    """(CR0, CR4, EFER) for Unicorn in 4- or 5-level paging with the given controls."""
    cr0 = CR0_BASE | (CR0_WP if wp else 0)
    cr4 = CR4_BASE | (CR4_LA57 if mode == "5" else 0) | (1 << 20 if smep else 0) | (1 << 21 if smap else 0)
    cr4 |= CR4_PKE if pke else 0
    efer = EFER_BASE | (EFER_NXE if nxe else 0)
    return cr0, cr4, efer
