"""A stand-in for gdb's Python module, attached to a QEMU-like stub over a memory image.

It behaves the way QEMU's gdbstub does where the commands depend on it: memory reads go through the
guest's *virtual* addresses until ``Qqemu.PhyMemMode:1`` switches to physical ones (here, virtual-mode
reads return 0xAA filler, so a command that forgets to switch gets visibly wrong tables); physical
reads never fail (unassigned memory reads as zeros); ``monitor info mtree -f`` prints QEMU's map.
"""

from __future__ import annotations

import shlex
import types
from collections.abc import Callable
from typing import Any

from earlymm.hw.memory import FrameSource

# QEMU 7.2, -machine pc -m 512M -nodefaults, `info mtree -f` (abridged: the I/O space is cut short).
MTREE_512M = """FlatView #0\r
 AS "I/O", root: io\r
 Root memory region: io\r
  0000000000000000-0000000000000007 (prio 0, i/o): dma-chan\r
  0000000000000008-000000000000000f (prio 0, i/o): dma-cont\r
\r
FlatView #1\r
 AS "memory", root: system\r
 AS "cpu-memory-0", root: system\r
 Root memory region: system\r
  0000000000000000-00000000000bffff (prio 0, ram): pc.ram\r
  00000000000c0000-00000000000dffff (prio 1, rom): pc.rom\r
  00000000000e0000-00000000000fffff (prio 0, rom): pc.bios @0000000000020000\r
  0000000000100000-000000001fffffff (prio 0, ram): pc.ram @0000000000100000\r
  00000000fec00000-00000000fec00fff (prio 0, i/o): ioapic\r
  00000000fed00000-00000000fed003ff (prio 0, i/o): hpet\r
  00000000fee00000-00000000feefffff (prio 4096, i/o): apic-msi\r
  00000000fffc0000-00000000ffffffff (prio 0, rom): pc.bios\r
\r
FlatView #2\r
 AS "PIIX3", root: bus master container\r
 Root memory region: (none)\r
  No rendered FlatView\r
"""


class GdbError(RuntimeError):
    pass


class Error(RuntimeError):
    pass


class MemoryErr(Error):
    pass


class FakeStub:
    """The remote side: registers, memory, the physical-memory-mode flag and a log of what was asked."""

    def __init__(self, memory: FrameSource, registers: dict[str, int], *, mtree: str | None = MTREE_512M,
                 phys_mode_supported: bool = True) -> None:
        self.memory = memory
        self.registers = registers
        self.mtree = mtree
        self.phys_mode_supported = phys_mode_supported
        self.phys_mode = 0
        self.packets: list[str] = []
        self.phys_reads: list[tuple[int, int]] = []
        self.fail_reads_with: type[BaseException] | None = None
        self.symbols: dict[str, int] = {}

    def read(self, addr: int, length: int) -> bytes:
        if self.fail_reads_with is not None:
            raise self.fail_reads_with("injected")
        if not self.phys_mode:
            return b"\xaa" * length
        self.phys_reads.append((addr, length))
        out = bytearray()
        while length:
            off = addr & 0xFFF
            n = min(length, 0x1000 - off)
            f = self.memory.frame(addr >> 12)
            out += bytes(f[off:off + n]) if f is not None else bytes(n)
            addr += n
            length -= n
        return bytes(out)

    def packet(self, text: str) -> str:
        self.packets.append(text)
        if not self.phys_mode_supported:
            return ""
        if text.startswith("Qqemu.PhyMemMode:"):
            self.phys_mode = int(text.rpartition(":")[2])
            return "OK"
        if text == "qqemu.PhyMemMode":
            return str(self.phys_mode)
        return ""


def make_gdb(stub: FakeStub) -> types.ModuleType:
    """A module object with the parts of gdb's API that earlymm uses, wired to ``stub``."""
    gdb = types.ModuleType("gdb")
    out: list[tuple[str, object]] = []
    registered: dict[str, Any] = {}

    class Value(int):
        pass

    class Frame:
        def read_register(self, name: str) -> Value:
            if name not in stub.registers:
                raise ValueError(f"Bad register name {name!r}")
            return Value(stub.registers[name])

    class Inferior:
        def read_memory(self, addr: int, length: int) -> memoryview:
            try:
                return memoryview(stub.read(addr, length))
            except MemoryErr:
                raise
            except Error as e:
                raise MemoryErr(f"Cannot access memory at address {addr:#x}") from e

    def execute(command: str, from_tty: bool = False, to_string: bool = False) -> str | None:
        if command.startswith("maintenance packet "):
            body = command[len("maintenance packet "):]
            text = f'sending: {body}\nreceived: "{stub.packet(body)}"\n'
        elif command == "monitor info mtree -f":
            if stub.mtree is None:
                raise Error("Target does not support this command.")
            text = stub.mtree
        elif command == "maintenance flush dcache":
            text = "The dcache was flushed.\n"
        else:
            raise Error(f"Undefined command: {command!r}")
        if to_string:
            return text
        out.append((text, None))
        return None

    def parse_and_eval(expr: str) -> Value:
        # Real gdb may read memory to evaluate (``*ptr``): in physical mode it would read the wrong bytes.
        assert not stub.phys_mode, f"expression {expr!r} evaluated in physical-memory mode"
        if expr.startswith("$") and expr[1:] in stub.registers:
            return Value(stub.registers[expr[1:]])
        if expr in ("$pc", "$rip") and "rip" in stub.registers:
            return Value(stub.registers["rip"])
        if expr.startswith("&") and expr[1:] in stub.symbols:
            return Value(stub.symbols[expr[1:]])
        raise Error(f'No symbol "{expr}" in current context.')

    class Command:
        def __init__(self, name: str, command_class: int) -> None:
            self.name = name
            registered[name] = self

        def dont_repeat(self) -> None:
            pass

    def write(text: str, stream: object = None) -> None:
        out.append((text, stream))

    frame = Frame()
    inferior = Inferior()
    attrs: dict[str, object] = {
        "GdbError": GdbError, "error": Error, "MemoryError": MemoryErr, "Command": Command,
        "COMMAND_DATA": 1, "STDOUT": 0, "STDERR": 2, "STDLOG": 1,
        "execute": execute, "parse_and_eval": parse_and_eval, "write": write,
        "newest_frame": lambda: frame, "selected_frame": lambda: frame,
        "selected_inferior": lambda: inferior, "string_to_argv": shlex.split,
        "registered": registered, "output": out, "stub": stub,
    }
    for k, v in attrs.items():
        setattr(gdb, k, v)
    return gdb


def run_command(gdb: types.ModuleType, line: str) -> str:
    """Invoke a registered command the way gdb does (``name args``) and return what it wrote to stdout."""
    return run_command_streams(gdb, line)[0]


def run_command_streams(gdb: types.ModuleType, line: str) -> tuple[str, list[str]]:
    """(stdout text, stderr lines) of one command."""
    name, _, arg = line.partition(" ")
    out: list[tuple[str, object]] = gdb.output
    start = len(out)
    invoke: Callable[[str, bool], None] = gdb.registered[name].invoke
    invoke(arg, False)
    new = out[start:]
    return ("".join(t for t, s in new if s != gdb.STDERR),
            "".join(t for t, s in new if s == gdb.STDERR).splitlines())
