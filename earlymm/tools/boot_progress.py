"""Progress of a long boot on stderr, from the events as they pass: the phase, the direct-map range
``init_mem_mapping`` is on (of all RAM), and the page-table pages written so far. On a terminal one line
is redrawn in place at most five times a second; with ``--progress`` into a file or pipe, a line per
second at most. Nothing is shown for a boot that ends within its first second."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO

from earlymm.hw.events import Event
from earlymm.kernel.events import DirectMapRange, LowPageAlloc, PhaseEntered


def _size(n: int) -> str:
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.1f} {unit}"
    return f"{n >> 10} KiB"


class BootProgress:
    def __init__(self, stream: TextIO, ram: int, *, tty: bool, clock: Callable[[], float] = time.monotonic) -> None:
        self.stream, self.ram, self.tty = stream, ram, tty
        self.now = clock
        self.start = self.now()
        self.last = 0.0
        self.phase = ""
        self.range: DirectMapRange | None = None
        self.done = 0  # RAM in the ranges finished before the current one
        self.tables = 0
        self.shown = False

    def on_event(self, e: Event) -> None:
        if isinstance(e, PhaseEntered):
            self.phase = e.phase
        elif isinstance(e, DirectMapRange):
            if self.range is not None:
                self.done += self.range.end - self.range.start
            self.range = e
        elif isinstance(e, LowPageAlloc):
            self.tables += 1
        else:
            return
        t = self.now()
        if t - self.start < 1.0 or t - self.last < (0.2 if self.tty else 1.0):
            return
        self.last = t
        line = f"earlymm boot: {self.phase}"
        if self.range is not None:
            r = self.range
            line += (f", direct map [{r.start:#x}, {r.end:#x}) with {r.page_size} pages after {_size(self.done)}"
                     f" of {_size(self.ram)}, {self.tables} table pages written")
        self.stream.write(("\r\x1b[2K" + line) if self.tty else line + "\n")
        self.stream.flush()
        self.shown = True

    def close(self) -> None:
        if self.shown and self.tty:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()
