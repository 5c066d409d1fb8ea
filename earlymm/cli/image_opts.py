"""The CPU state a command works from: the image's notes, or ``--regs FILE`` (QEMU's ``info registers``)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from earlymm.cli.common import UsageError

if TYPE_CHECKING:
    from earlymm.images import CpuState

REGS_HELP = ("QEMU's 'info registers' reply (or 'info registers -a', one block per CPU) saved in FILE: the CPU "
             "state for a raw image or a core without a note (it replaces a core's notes, and gives EFER exactly)")


def add_regs_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--regs", metavar="FILE", help=REGS_HELP)


def cpu_notes(image: Any, regs_file: str | None) -> list[tuple[CpuState, int | None]]:
    """(state, EFER or None) per CPU: from ``--regs`` if given, else the image's notes (no EFER)."""
    if regs_file is not None:
        from earlymm.tools.regs_input import RegsError, read_regs_file  # only for --regs

        try:
            return read_regs_file(regs_file).cpus
        except RegsError as e:
            raise UsageError(str(e)) from None
    return [(c, None) for c in getattr(image, "cpus", [])]


def pick(notes: list[tuple[CpuState, int | None]], cpu: int, regs_file: str | None
         ) -> tuple[CpuState | None, int | None]:
    """The note of CPU ``cpu`` (None, None without any)."""
    if notes and not 0 <= cpu < len(notes):
        where = f"{regs_file} describes" if regs_file else "the image has"
        raise UsageError(f"--cpu {cpu}: {where} {len(notes)} CPU(s)")
    return notes[cpu] if notes else (None, None)
