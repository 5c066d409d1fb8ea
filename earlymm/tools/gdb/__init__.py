"""earlymm inside gdb: page-table commands for a live QEMU guest.

``earlymm_gdb.py`` is the command file gdb sources; it registers commands whose work is done by
``commands`` over a ``target.LiveTarget`` (gdb and QEMU's gdbstub) and a ``physmem.GdbPhysFrames``
frame source. Nothing here imports gdb's module at import time, so it is importable and testable
outside gdb.
"""

from __future__ import annotations

from pathlib import Path

COMMAND_FILE_NAME = "earlymm_gdb.py"


def script_path() -> Path:
    """Absolute path of the gdb command file shipped in this package (``source`` it in gdb)."""
    return Path(__file__).resolve().with_name(COMMAND_FILE_NAME)
