"""``--regs FILE``: the CPU state of a raw image (or of a core without a note) from QEMU's ``info registers``.

The file is the monitor's reply as a user saves it (``info registers``, or ``info registers -a`` for every
CPU, ``\\r\\n`` or ``\\n`` line ends). Each CPU becomes what a core's note would hold, plus the ``EFER`` the
reply shows (a core's note lacks it, so with ``--regs`` EFER is exact instead of inferred).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from earlymm.images import CpuState
from earlymm.images.monitor_text import cpu_states_from_registers_text

MAX_REGS_FILE = 4 << 20  # a 4096-CPU 'info registers -a' with AVX-512 state is ~10 KiB per CPU


class RegsError(ValueError):
    """A registers file that cannot be used; one line."""


@dataclass(frozen=True, slots=True)
class RegsFile:
    path: str
    cpus: list[tuple[CpuState, int | None]]  # (state, EFER or None) per CPU, in the file's order


def read_regs_file(path: str) -> RegsFile:
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise RegsError(f"registers file {path} is not a regular file")
        if st.st_size > MAX_REGS_FILE:
            raise RegsError(f"registers file {path} is {st.st_size} bytes: not an 'info registers' reply")
        with open(path, encoding="utf-8", errors="strict") as f:
            text = f.read(MAX_REGS_FILE + 1)
    except OSError as e:
        raise RegsError(f"cannot read registers file {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise RegsError(f"registers file {path} is not text (want QEMU's 'info registers' reply)") from None
    try:
        cpus = cpu_states_from_registers_text(text)
    except ValueError as e:
        raise RegsError(f"{path}: not QEMU's 'info registers' reply: {e}") from None
    for i, (c, efer) in enumerate(cpus):
        values = (c.rip, c.cr0, c.cr2, c.cr3, c.cr4, efer or 0, *c.gprs, *(g.base for g in c.segments))
        if any(v >> 64 for v in values):
            raise RegsError(f"{path}: CPU {i}: a register value does not fit in 64 bits")
    return RegsFile(path, cpus)
