"""Exception delivery (SDM Vol. 3A ch. 6): gates read from the guest's IDT in memory, a frame pushed on
its stack, the handler run, IRET retrying the access; nested faults; #DF and the triple fault; the
livelock guard."""

from __future__ import annotations

import pytest

from earlymm.arch.flags import Cr0, Cr4, Efer
from earlymm.arch.modes import Features, PagingMode
from earlymm.hw.cpu import Cpu, ExceptionFrame
from earlymm.hw.delivery import GATE32, GATE64, IdtDelivery
from earlymm.hw.events import DoubleFault, FaultDelivered, ListTrace
from earlymm.hw.faults import Livelock, PageFault, Reason, TripleFault
from earlymm.hw.mapper import FrameAllocator, Mapper
from earlymm.hw.memory import PhysMem

IDT, STACK, HANDLER, DF_HANDLER = 0x10_0000, 0x20_0000, 0xFFFF_FFFF_8100_0000, 0xFFFF_FFFF_8100_1000
DATA = 0x4000_0000


def gate(target: int) -> tuple[int, int]:
    lo = (target & 0xFFFF) | (0x10 << 16) | (0x8E << 40) | (((target >> 16) & 0xFFFF) << 48)
    return lo, target >> 32


def machine() -> tuple[Cpu, Mapper]:
    mem = PhysMem()
    mp = Mapper(mem, PagingMode.LONG4, FrameAllocator(mem, 0x80_0000, 0x90_0000), table_flags=0x63)
    mp.map_page(IDT, IDT, 4096, 0x62)
    for off in range(0, 0x4000, 4096):
        mp.map_page(STACK - 0x4000 + off, STACK - 0x4000 + off, 4096, 0x62)
    cpu = Cpu(mem, Features(), trace=ListTrace())
    cpu.write_efer(int(Efer.LME | Efer.NXE))
    cpu.write_cr4(int(Cr4.PAE))
    cpu.write_cr3(mp.root)
    cpu.write_cr0(int(Cr0.PE | Cr0.PG | Cr0.WP))
    cpu.regs.cs_l = True
    cpu.regs.cs = 0x10
    cpu.lidt(IDT, 256 * 16 - 1)
    cpu.regs.rsp = STACK - 8
    return cpu, mp


def install(cpu: Cpu, vector: int, target: int) -> None:
    lo, hi = gate(target)
    cpu.mem.write_u64(IDT + 16 * vector, lo)
    cpu.mem.write_u64(IDT + 16 * vector + 8, hi)


def test_handler_maps_the_page_and_the_access_is_retried() -> None:
    cpu, mp = machine()
    seen: list[tuple[int, int]] = []

    def pf(f: ExceptionFrame) -> None:
        seen.append((cpu.regs.cr2, f.error_code))
        mp.map_page(DATA, 0x300_0000, 4096, 0x62)

    install(cpu, 14, HANDLER)
    cpu.register_code(HANDLER, "pf", pf)
    cpu.mem.write_u64(0x300_0000 + 8, 0x1122334455667788)
    assert cpu.load(DATA + 8) == 0x1122334455667788
    assert seen == [(DATA + 8, 0)]
    assert cpu.regs.rsp == STACK - 8  # IRET restored the stack
    # the frame was pushed on the guest stack: error code, RIP, CS, RFLAGS, RSP, SS
    frame = STACK - 16 - 48
    assert [cpu.mem.read_u64(frame + 8 * i) for i in (2, 4)] == [0x10, STACK - 8]


def test_a_fault_inside_the_handler_is_delivered_nested() -> None:
    cpu, mp = machine()
    depths: list[int] = []

    def pf(f: ExceptionFrame) -> None:
        depths.append(f.depth)
        if cpu.regs.cr2 == DATA:
            cpu.load(DATA + 0x1000)  # faults again, inside the handler
            mp.map_page(DATA, 0x300_0000, 4096, 0x62)
        else:
            mp.map_page(DATA + 0x1000, 0x300_1000, 4096, 0x62)

    install(cpu, 14, HANDLER)
    cpu.register_code(HANDLER, "pf", pf)
    cpu.load(DATA)
    assert depths == [1, 2]


def test_missing_gate_escalates_to_double_fault_then_triple_fault() -> None:
    cpu, _ = machine()
    df: list[int] = []
    install(cpu, 8, DF_HANDLER)

    def on_df(f: ExceptionFrame) -> None:
        df.append(f.vector)  # returning from #DF is not allowed: it is an abort, the model resets

    cpu.register_code(DF_HANDLER, "df", on_df)
    with pytest.raises(TripleFault, match="#DF handler returned"):
        cpu.load(DATA)  # no gate 14 → #DF delivered
    assert df == [8]
    assert any(isinstance(e, DoubleFault) for e in cpu.trace.events)


def test_fault_while_pushing_the_frame_is_a_double_fault_and_then_a_triple_fault() -> None:
    cpu, _ = machine()
    install(cpu, 14, HANDLER)
    cpu.register_code(HANDLER, "pf", lambda f: None)
    cpu.regs.rsp = 0x7000_0000  # unmapped stack; no #DF gate either
    with pytest.raises(TripleFault):
        cpu.load(DATA)


def test_a_handler_that_never_fixes_the_fault_is_a_livelock_not_a_hang() -> None:
    cpu, _ = machine()
    cpu.fault_limit = 50
    install(cpu, 14, HANDLER)
    cpu.register_code(HANDLER, "pf", lambda f: None)
    with pytest.raises(Livelock, match="51 faults without the faulting access completing"):
        cpu.load(DATA)
    assert sum(isinstance(e, FaultDelivered) for e in cpu.trace.events) == 50


def test_ia32e_frame_without_error_code_for_a_vector_that_has_none() -> None:
    """SDM Vol. 3A Figure 6-9: IA-32e pushes SS, RSP, RFLAGS, CS, RIP and an error code only for the
    vectors that have one (#UD has none)."""
    cpu, _ = machine()
    frames: list[ExceptionFrame] = []
    install(cpu, 6, HANDLER)
    cpu.register_code(HANDLER, "ud", frames.append)
    cpu.regs.rip, cpu.regs.rflags = 0xFFFF_FFFF_8100_4321, 0x246
    cpu.raise_exception(6)
    (f,) = frames
    top = (STACK - 8) & ~0xF
    assert f.frame_addr == top - 40  # five 8-byte slots, RIP lowest
    assert [cpu.mem.read_u64(f.frame_addr + 8 * i) for i in range(5)] == [0xFFFF_FFFF_8100_4321, 0x10, 0x246,
                                                                            STACK - 8, 0x18]
    assert cpu.regs.rsp == STACK - 8 and cpu.regs.rip == 0xFFFF_FFFF_8100_4321


def test_protected_mode_delivery_through_8_byte_gates() -> None:
    """SDM Vol. 3A §6.11 (8-byte interrupt gates) and Figure 6-4 (no privilege change: EFLAGS, CS, EIP and
    the error code are pushed as 32-bit words; no SS:ESP)."""
    mem = PhysMem()
    cpu = Cpu(mem, Features(), trace=ListTrace())
    cpu.write_cr0(int(Cr0.PE))  # protected mode, paging off: linear = physical
    cpu.regs.cs = 0x60
    handler, idt, stack = 0xC010_0000, 0x5000, 0x9000
    lo, hi = GATE32.encode(handler, 0x60)
    assert hi == 0
    mem.write_u64(idt + 8 * 14, lo)
    cpu.lidt(idt, 256 * 8 - 1)
    cpu.regs.rsp, cpu.regs.rip, cpu.regs.rflags = stack, 0xC000_1234, 0x202
    seen: list[ExceptionFrame] = []
    cpu.register_code(handler, "pf", seen.append)
    cpu.raise_fault(PageFault(0x2, 0xDEAD_B000, Reason.NOT_PRESENT))
    (f,) = seen
    assert f.frame_addr == stack - 12
    assert [mem.read_u32(stack - 16 + 4 * i) for i in range(4)] == [0x2, 0xC000_1234, 0x60, 0x202]
    assert cpu.regs.cr2 == 0xDEAD_B000
    assert cpu.regs.rsp == stack  # IRET popped EIP, CS, EFLAGS (the handler dropped the error code)


def test_gate_format_follows_the_mode_unless_fixed() -> None:
    cpu, _ = machine()
    assert IdtDelivery().format(cpu) is GATE64
    assert IdtDelivery(GATE32).format(cpu) is GATE32
