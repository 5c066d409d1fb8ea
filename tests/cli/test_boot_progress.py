"""Progress of long boots on stderr (issue 7 item 7): shown only after the first second, rate-limited,
redrawn in place on a terminal, one line per update otherwise."""

from __future__ import annotations

import io

from earlymm.kernel.events import DirectMapRange, LowPageAlloc, PhaseEntered
from earlymm.tools.boot_progress import BootProgress


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_progress_lines_after_the_first_second() -> None:
    out, clock = io.StringIO(), Clock()
    p = BootProgress(out, 1 << 40, tty=False, clock=clock)
    p.on_event(PhaseEntered("init_mem_mapping"))
    p.on_event(DirectMapRange(0, 1 << 30, "2M"))
    assert out.getvalue() == ""  # nothing within the first second
    clock.t += 1.5
    p.on_event(LowPageAlloc(0x1000, "brk"))
    clock.t += 0.5
    p.on_event(LowPageAlloc(0x2000, "brk"))  # rate-limited
    clock.t += 1.0
    p.on_event(DirectMapRange(1 << 30, 1 << 40, "1G"))
    lines = out.getvalue().splitlines()
    assert lines == [
        "earlymm boot: init_mem_mapping, direct map [0x0, 0x40000000) with 2M pages after 0 KiB of 1.0 TiB, "
        "1 table pages written",
        "earlymm boot: init_mem_mapping, direct map [0x40000000, 0x10000000000) with 1G pages after 1.0 GiB of "
        "1.0 TiB, 2 table pages written"]
    p.close()


def test_terminal_progress_redraws_one_line_and_clears_it() -> None:
    out, clock = io.StringIO(), Clock()
    p = BootProgress(out, 1 << 30, tty=True, clock=clock)
    clock.t += 2
    p.on_event(PhaseEntered("setup_arch"))
    p.close()
    assert out.getvalue() == "\r\x1b[2Kearlymm boot: setup_arch\r\x1b[2K"
