"""The live guest as gdb sees it: registers, QEMU's physical-memory mode, the monitor.

Everything that touches gdb's Python API is in :class:`GdbTarget`, which is handed the ``gdb`` module
rather than importing it, so the commands can be exercised outside gdb with a fake module. The module
has no type stubs, hence ``Any``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Protocol

from earlymm.hw.memory import Buffer
from earlymm.tools.gdb.physmem import MemoryMapError, PhysReader, parse_flat_ram

PHYS_MODE_PACKET = "Qqemu.PhyMemMode"
# The registers QEMU's x86-64 gdbstub describes (gdb-xml/i386-64bit.xml: cr0, cr2, cr3, cr4, cr8, efer).
CONTROL_REGISTERS = ("cr0", "cr3", "cr4", "efer")


class TargetError(Exception):
    """The stub cannot give what a command needs; the message is one line for the user."""


class LiveTarget(Protocol):
    """What the commands need from a stopped guest (implemented over gdb, or faked in tests)."""

    def register(self, name: str) -> int | None:
        """A register of the current vCPU, or None if the stub does not describe it."""
        ...

    def evaluate(self, expression: str) -> int:
        """A gdb expression (``$rip``, ``&init_top_pgt``) as an unsigned 64-bit value."""
        ...

    def ram_ranges(self) -> list[tuple[int, int]] | None:
        """The guest's RAM/ROM map, or None if the stub cannot say."""
        ...

    def physical_memory(self) -> AbstractContextManager[PhysReader]:
        """Context manager: physical-memory mode on for its body (restored on exit), yields a reader."""
        ...


def _received(reply: str) -> str | None:
    """The payload of ``maintenance packet`` output (``sending: …\\nreceived: "OK"``)."""
    for line in reply.splitlines():
        line = line.strip()
        if line.startswith("received:"):
            text = line[len("received:"):].strip()
            return text[1:-1] if len(text) >= 2 and text[0] == text[-1] == '"' else text
    return None


class GdbTarget:
    """A ``LiveTarget`` over gdb's Python API, talking to QEMU's gdbstub."""

    def __init__(self, gdb: Any) -> None:
        self.gdb = gdb

    def _packet(self, text: str) -> str | None:
        try:
            out = self.gdb.execute(f"maintenance packet {text}", to_string=True)
        except self.gdb.error as e:
            raise TargetError(f"cannot send {text!r} to the remote stub: {e}") from None
        return _received(str(out))

    def register(self, name: str) -> int | None:
        try:
            frame = self.gdb.newest_frame()  # live values, whichever frame the user selected
        except self.gdb.error as e:
            raise TargetError(f"cannot read the vCPU's registers ({e}): attach to QEMU's gdbstub "
                              "(target remote HOST:PORT) with the guest stopped") from None
        try:
            value = frame.read_register(name)
        except (ValueError, self.gdb.error):
            return None
        # QEMU describes cr3 etc. as gdb flags types; int() of those is the raw value.
        return int(value) & 0xFFFF_FFFF_FFFF_FFFF

    def evaluate(self, expression: str) -> int:
        try:
            value = self.gdb.parse_and_eval(expression)
            return int(value) & 0xFFFF_FFFF_FFFF_FFFF
        except (self.gdb.error, ValueError, TypeError) as e:
            raise TargetError(f"cannot evaluate {expression!r} as an address: {e}") from None

    def ram_ranges(self) -> list[tuple[int, int]] | None:
        try:
            text = self.gdb.execute("monitor info mtree -f", to_string=True)
        except self.gdb.error:
            return None
        try:
            return parse_flat_ram(str(text))
        except MemoryMapError:
            return None

    def _read(self, pa: int, length: int) -> Buffer | None:
        try:
            return bytes(self.gdb.selected_inferior().read_memory(pa, length))
        except (self.gdb.MemoryError, self.gdb.error):
            return None

    @contextmanager
    def physical_memory(self) -> Iterator[PhysReader]:
        """Physical-memory mode for the body; the stub's previous mode (normally 0) is put back even
        when the body fails, so the user's own ``x`` commands keep reading virtual memory."""
        before = self._packet(f"q{PHYS_MODE_PACKET[1:]}")
        previous = "1" if before == "1" else "0"
        reply = self._packet(f"{PHYS_MODE_PACKET}:1")
        if reply != "OK":
            raise TargetError(f"the remote stub refused {PHYS_MODE_PACKET}:1 (reply {reply!r}); "
                              "earlymm needs QEMU's gdbstub (qemu-system-x86_64 -s or -gdb ...)")
        try:
            yield self._read
        finally:
            restored = self._packet(f"{PHYS_MODE_PACKET}:{previous}")
            # gdb caches target memory only for stack/code reads, but a read made in the wrong mode
            # must never survive into the user's next command, so drop any cache gdb may hold.
            with contextlib.suppress(self.gdb.error):
                self.gdb.execute("maintenance flush dcache", to_string=True)
            if restored != "OK":
                raise TargetError(f"could not switch the stub back with {PHYS_MODE_PACKET}:{previous} "
                                  f"(reply {restored!r}); run: maintenance packet {PHYS_MODE_PACKET}:0")
