"""CPU state as QEMU's ``dump-guest-memory`` records it, and the two note payloads that carry it.

QEMU writes, per CPU, an ``NT_PRSTATUS`` note (Linux's ``struct elf_prstatus`` for x86-64, so gdb and
crash can read it) and a note named ``QEMU`` holding ``QEMUCPUState`` (target/i386/arch_dump.c). Only
the latter has segment descriptors and control registers, so it is what the simulator reads.

``QEMUCPUState`` version 1, little-endian::

    0    u32 version, u32 size
    8    u64 rax rbx rcx rdx rsi rdi rsp rbp r8..r15   (QEMU's order, not the ModRM encoding order)
    136  u64 rip, u64 rflags
    152  10 x {u32 selector, u32 limit, u32 flags, u32 pad, u64 base}: cs ds es fs gs ss ldt tr gdt idt
    392  u64 cr[5]
    432  u64 kernel_gs_base   (added later; present iff size >= 440)
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

GPR_NAMES = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
             "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
SEGMENT_NAMES = ("cs", "ds", "es", "fs", "gs", "ss", "ldt", "tr", "gdt", "idt")

QEMU_CPUSTATE_VERSION = 1
QEMU_CPUSTATE_SIZE = 440
QEMU_CPUSTATE_MIN_SIZE = 432  # before kernel_gs_base was appended
CR_OFFSET = 392

_HEAD = struct.Struct("<II")
_REGS = struct.Struct("<18Q")  # 16 GPRs, rip, rflags
_SEG = struct.Struct("<IIIIQ")
_CRS = struct.Struct("<5Q")
_U64 = struct.Struct("<Q")

# QEMU keeps descriptor attribute bits in their descriptor positions (bits 8..23 of the high dword).
DESC_L_BIT = 21
DESC_DB_BIT = 22
DESC_P_BIT = 15


@dataclass(frozen=True, slots=True)
class Segment:
    """A segment register as QEMU's CPU note records it."""

    selector: int = 0
    limit: int = 0
    flags: int = 0
    base: int = 0

    @property
    def long(self) -> bool:
        return bool(self.flags >> DESC_L_BIT & 1)

    @property
    def dpl(self) -> int:
        return self.flags >> 13 & 3


def _default_segments() -> tuple[Segment, ...]:
    return tuple(Segment() for _ in SEGMENT_NAMES)


@dataclass(frozen=True, slots=True)
class CpuState:
    """One CPU's registers from a core. ``gprs`` follow ``GPR_NAMES``; ``segments`` follow
    ``SEGMENT_NAMES``. EFER is not recorded by QEMU, so it is not here either."""

    gprs: tuple[int, ...] = (0,) * 16
    rip: int = 0
    rflags: int = 0x2
    segments: tuple[Segment, ...] = field(default_factory=_default_segments)
    cr0: int = 0
    cr2: int = 0
    cr3: int = 0
    cr4: int = 0
    kernel_gs_base: int | None = 0

    def __post_init__(self) -> None:
        if len(self.gprs) != len(GPR_NAMES):
            raise ValueError(f"need {len(GPR_NAMES)} GPRs, got {len(self.gprs)}")
        if len(self.segments) != len(SEGMENT_NAMES):
            raise ValueError(f"need {len(SEGMENT_NAMES)} segments, got {len(self.segments)}")

    def gpr(self, name: str) -> int:
        return self.gprs[GPR_NAMES.index(name)]

    def segment(self, name: str) -> Segment:
        return self.segments[SEGMENT_NAMES.index(name)]

    @property
    def cs(self) -> Segment:
        return self.segments[0]

    @property
    def ss(self) -> Segment:
        return self.segments[5]

    @property
    def is_64bit_code(self) -> bool:
        """CS.L=1: the CPU was executing 64-bit code (so long mode was active)."""
        return self.cs.long

    @property
    def cpl(self) -> int:
        """The privilege level the CPU ran at: SS.DPL. QEMU keeps the CPL in ``hflags``, which the core
        does not record, and sets it from SS's DPL whenever SS is loaded (``cpu_x86_load_seg_cache``,
        target/i386/cpu.h) — also for a null SS in 64-bit mode, whose cached DPL is the RPL."""
        return self.ss.dpl


def parse_qemu_cpustate(desc: bytes | memoryview) -> CpuState:
    """Decode a ``QEMU`` note's descriptor. Raises ``ValueError`` if it is too short or unknown."""
    if len(desc) < _HEAD.size:
        raise ValueError(f"QEMU note is {len(desc)} bytes, too short for its header")
    version, size = _HEAD.unpack_from(desc, 0)
    if version != QEMU_CPUSTATE_VERSION:
        raise ValueError(f"QEMUCPUState version {version} is not supported (only 1)")
    if size < QEMU_CPUSTATE_MIN_SIZE or size > len(desc):
        raise ValueError(f"QEMUCPUState size field {size} is invalid for a {len(desc)}-byte note")
    regs = _REGS.unpack_from(desc, 8)
    segs = tuple(Segment(sel, lim, flg, base)
                 for sel, lim, flg, _pad, base in (_SEG.unpack_from(desc, 152 + 24 * i)
                                                   for i in range(len(SEGMENT_NAMES))))
    cr = _CRS.unpack_from(desc, CR_OFFSET)
    kgs = _U64.unpack_from(desc, 432)[0] if size >= QEMU_CPUSTATE_SIZE else None
    return CpuState(gprs=tuple(regs[:16]), rip=regs[16], rflags=regs[17], segments=segs,
                    cr0=cr[0], cr2=cr[2], cr3=cr[3], cr4=cr[4], kernel_gs_base=kgs)


def pack_qemu_cpustate(cpu: CpuState) -> bytes:
    out = bytearray(QEMU_CPUSTATE_SIZE)
    _HEAD.pack_into(out, 0, QEMU_CPUSTATE_VERSION, QEMU_CPUSTATE_SIZE)
    _REGS.pack_into(out, 8, *cpu.gprs, cpu.rip, cpu.rflags)
    for i, s in enumerate(cpu.segments):
        _SEG.pack_into(out, 152 + 24 * i, s.selector, s.limit, s.flags, 0, s.base)
    _CRS.pack_into(out, CR_OFFSET, cpu.cr0, 0, cpu.cr2, cpu.cr3, cpu.cr4)
    _U64.pack_into(out, 432, cpu.kernel_gs_base or 0)
    return bytes(out)


# Linux's x86-64 ``struct elf_prstatus`` is 336 bytes: pr_pid at 32, pr_reg (user_regs_struct, 27 u64)
# at 112. QEMU stores the CPU index + 1 as the pid.
PRSTATUS_SIZE = 336
PRSTATUS_PID_OFFSET = 32
PRSTATUS_REGS_OFFSET = 112
_USER_REGS = struct.Struct("<27Q")


def pack_prstatus(cpu: CpuState, pid: int) -> bytes:
    g = dict(zip(GPR_NAMES, cpu.gprs, strict=True))
    seg = dict(zip(SEGMENT_NAMES, cpu.segments, strict=True))
    regs = (g["r15"], g["r14"], g["r13"], g["r12"], g["rbp"], g["rbx"], g["r11"], g["r10"],
            g["r9"], g["r8"], g["rax"], g["rcx"], g["rdx"], g["rsi"], g["rdi"], 0,
            cpu.rip, seg["cs"].selector, cpu.rflags, g["rsp"], seg["ss"].selector,
            seg["fs"].base, seg["gs"].base,
            seg["ds"].selector, seg["es"].selector, seg["fs"].selector, seg["gs"].selector)
    out = bytearray(PRSTATUS_SIZE)
    struct.pack_into("<I", out, PRSTATUS_PID_OFFSET, pid)
    _USER_REGS.pack_into(out, PRSTATUS_REGS_OFFSET, *regs)
    return bytes(out)


def prstatus_rip_rsp(desc: bytes | memoryview) -> tuple[int, int]:
    """(rip, rsp) from an x86-64 ``NT_PRSTATUS`` descriptor; used to cross-check the QEMU note."""
    regs = _USER_REGS.unpack_from(desc, PRSTATUS_REGS_OFFSET)
    return regs[16], regs[19]


# The i386 ``struct elf_prstatus`` QEMU writes for a guest outside long mode is 144 bytes: pr_pid at 24,
# pr_reg (ebx ecx edx esi edi ebp eax, ds es fs gs as 16-bit fields each padded to 32, orig_eax, eip,
# cs, eflags, esp, ss) at 72 (target/i386/arch_dump.c ``x86_elf_prstatus``, ``x86_fill_elf_prstatus``:
# 32-bit register values, orig_eax 0).
PRSTATUS_I386_SIZE = 144
PRSTATUS_I386_PID_OFFSET = 24
PRSTATUS_I386_REGS_OFFSET = 72
_USER_REGS_I386 = struct.Struct("<7I8HII2HII2H")


def pack_prstatus_i386(cpu: CpuState, pid: int) -> bytes:
    g = {n: v & 0xFFFF_FFFF for n, v in zip(GPR_NAMES, cpu.gprs, strict=True)}
    seg = dict(zip(SEGMENT_NAMES, cpu.segments, strict=True))
    out = bytearray(PRSTATUS_I386_SIZE)
    struct.pack_into("<I", out, PRSTATUS_I386_PID_OFFSET, pid)
    _USER_REGS_I386.pack_into(out, PRSTATUS_I386_REGS_OFFSET, g["rbx"], g["rcx"], g["rdx"], g["rsi"], g["rdi"],
                              g["rbp"], g["rax"], seg["ds"].selector, 0, seg["es"].selector, 0,
                              seg["fs"].selector, 0, seg["gs"].selector, 0, 0, cpu.rip & 0xFFFF_FFFF,
                              seg["cs"].selector, 0, cpu.rflags & 0xFFFF_FFFF, g["rsp"], seg["ss"].selector, 0)
    return bytes(out)


def prstatus_i386_eip_esp(desc: bytes | memoryview) -> tuple[int, int]:
    """(eip, esp) from an i386 ``NT_PRSTATUS`` descriptor."""
    f = _USER_REGS_I386.unpack_from(desc, PRSTATUS_I386_REGS_OFFSET)
    return f[16], f[20]
