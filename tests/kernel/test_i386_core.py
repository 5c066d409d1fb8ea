"""The saved 32-bit and PAE cores of i386 boots agree with an independent walk: tests/reference.py's
straight-line SDM model (nothing of earlymm's walker) reading the core file, against earlymm reading the
same core the way ``earlymm translate`` does, and against the live machine the core was saved from."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from earlymm.arch.modes import Features
from earlymm.images import open_image
from earlymm.kernel.phases import Phase
from earlymm.tools.boot_report_i386 import save_core
from earlymm.tools.machine_view import RegOverrides, image_source, infer_registers, make_cpu
from tests import reference as ref
from tests.kernel.i386_support import run

CASES = [(False, None, True), (True, None, True), (False, None, False), (True, None, False),
         (True, Phase.PAGETABLE_SETUP_START, True), (False, Phase.STARTUP_32, True)]


def _vas(r: object) -> list[int]:
    rng = random.Random(2621)
    mm = r.ctx.mm  # type: ignore[attr-defined]
    special = [0, 0x10_0000, 0x7FF000, 0x80_0000, 0xC000_0000, 0xC010_0000, 0xFFBC_0000, 0xFFFB_C000, 0xFFFF_F000,
               0xC000_0000 + (mm.max_low_pfn << 12) - 1, 0xC000_0000 + (mm.max_low_pfn << 12)]
    return special + list(range(0, 1 << 32, 1 << 22)) + [rng.randrange(1 << 32) for _ in range(1500)]


@pytest.mark.parametrize("pae, until, pse", CASES)
def test_saved_core_agrees_with_the_reference_walk(tmp_path: Path, pae: bool, until: Phase | None, pse: bool) -> None:
    r = run(pae, until=until, pse=pse, image_size=27 << 20 if until else 3 << 20)
    core = tmp_path / "i386.core"
    save_core(r, core)
    efer = r.ctx.cpu.regs.efer  # not in a QEMU core: the machine's value, for the reference
    with open_image(core) as img:
        assert img.machine == 3 and img.cpus[0].cr3 == r.ctx.cpu.regs.cr3  # type: ignore[attr-defined]
        source, zero = image_source(img, None)
        regs = infer_registers(img.cpus[0], RegOverrides())
        if r.ctx.cpu.regs.cr4 & 0x20:  # PAE paging: the inferred EFER is the machine's (NXE where NX is on)
            assert regs[3] == efer  # (32-bit paging ignores EFER.NXE: set_nx may already have run)
        cpu = make_cpu(source, regs, Features(gbpages=False, la57=False), absent_zero=zero)

        def read(addr: int, size: int) -> int:
            frame = img.frame(addr >> 12)
            data = bytes(frame) if frame is not None else bytes(4096)
            return int.from_bytes(data[addr & 0xFFF:(addr & 0xFFF) + size], "little")

        rcpu = ref.RefCpu(cr0=regs[0], cr3=regs[1], cr4=regs[2], efer=efer, gbpages=False)
        assert ref.mode_of(rcpu) == ("pae" if r.ctx.cpu.regs.cr4 & 0x20 else "32")
        for va in _vas(r):
            want = ref.translate(read, rcpu, ref.RefAccess(va))
            got, live = cpu.mmu.probe(va), r.ctx.cpu.mmu.probe(va)
            assert (got.outcome == 0) == (want.outcome == ref.OK) == (live.outcome == 0), hex(va)
            if want.outcome == ref.OK:
                assert got.pa == want.pa == live.pa and got.page_size == want.page_size, hex(va)
            else:
                assert got.error_code == want.error_code == live.error_code, hex(va)
