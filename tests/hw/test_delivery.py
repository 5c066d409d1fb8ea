"""Exception delivery (SDM Vol. 3A ch. 6): gates read from the guest's IDT in memory, a frame pushed on
its stack, the handler run, IRET retrying the access; nested faults; #DF and the triple fault; the
livelock guard."""

from __future__ import annotations

import pytest

from earlymm.arch.flags import Cr0, Cr4, Efer
from earlymm.arch.modes import Features, PagingMode
from earlymm.hw.cpu import Cpu, ExceptionFrame
from earlymm.hw.events import DoubleFault, FaultDelivered, ListTrace
from earlymm.hw.faults import Livelock, TripleFault
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

    def pf(c: Cpu, f: ExceptionFrame) -> None:
        seen.append((c.regs.cr2, f.error_code))
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

    def pf(c: Cpu, f: ExceptionFrame) -> None:
        depths.append(f.depth)
        if c.regs.cr2 == DATA:
            c.load(DATA + 0x1000)  # faults again, inside the handler
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

    def on_df(c: Cpu, f: ExceptionFrame) -> None:
        df.append(f.vector)  # returning from #DF is not allowed: it is an abort, the model resets

    cpu.register_code(DF_HANDLER, "df", on_df)
    with pytest.raises(TripleFault, match="#DF handler returned"):
        cpu.load(DATA)  # no gate 14 → #DF delivered
    assert df == [8]
    assert any(isinstance(e, DoubleFault) for e in cpu.trace.events)


def test_fault_while_pushing_the_frame_is_a_double_fault_and_then_a_triple_fault() -> None:
    cpu, _ = machine()
    install(cpu, 14, HANDLER)
    cpu.register_code(HANDLER, "pf", lambda c, f: None)
    cpu.regs.rsp = 0x7000_0000  # unmapped stack; no #DF gate either
    with pytest.raises(TripleFault):
        cpu.load(DATA)


def test_a_handler_that_never_fixes_the_fault_is_a_livelock_not_a_hang() -> None:
    cpu, _ = machine()
    cpu.fault_limit = 50
    install(cpu, 14, HANDLER)
    cpu.register_code(HANDLER, "pf", lambda c, f: None)
    with pytest.raises(Livelock, match="51 faults without the faulting access completing"):
        cpu.load(DATA)
    assert sum(isinstance(e, FaultDelivered) for e in cpu.trace.events) == 50
