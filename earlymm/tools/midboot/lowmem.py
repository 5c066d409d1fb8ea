"""Where the real decompressor put its 5-level trampoline, measured from outside the guest.

Debian 6.1's decompressor (arch/x86/boot/compressed/head_64.S ``startup_64`` → pgtable_64.c
``configure_5level_paging``) copies ``trampoline_32bit_src`` into 8 KiB of conventional memory it chooses
with ``find_trampoline_placement`` (the BIOS data area, the EBDA, the e820 table), puts the new top-level
table in the first page and the code in the second, runs it and restores the 8 KiB: afterwards nothing in
memory says where it was. QEMU can say where the CPU was, though. The capture runs the guest with

    -d cpu -dfilter 0x0+0xa0000 -D lowmem.log

which makes TCG print the CPU state (``x86_cpu_dump_state``: RIP/EIP, the CS descriptor, CR0, CR3, CR4,
EFER) before each translation block it enters from its main loop whose linear PC lies in the first
640 KiB. Mode changes and control-register writes end a block, so every step of the switch is logged;
chained blocks are not, which keeps the log near 1 MB (the BIOS's real-mode helpers and the kernel's
real-mode setup code at 0x10000 are the rest of it).

Nothing here assumes where the trampoline is. Code below 640 KiB never runs in long mode except in the
trampoline — the BIOS and the setup code are 16-/32-bit, the decompressor and the kernel run at 1 MiB and
above — so the *window* is the logged blocks from the first to the last one with EFER.LMA set. In it the
CPU must leave 64-bit mode, run with CR0.PG clear, flip CR4.LA57 and come back; the trampoline is the
CR3 it came back with (the table at offset 0, ``TRAMPOLINE_32BIT_PGTABLE_OFFSET``) and its code is the
page the window ran in (``TRAMPOLINE_32BIT_CODE_OFFSET``). A machine without such a window switched
nothing (a CPU without LA57, or ``no5lvl``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from earlymm.arch.flags import Cr0, Cr4, Efer

LOW_END = 0xA_0000  # conventional memory: the BIOS data area's base memory is at most 640 KiB
QEMU_LOG_FILTER = f"0x0+{LOW_END:#x}"
REG_RE = re.compile(r"\b(RIP|EIP|CR0|CR3|CR4|EFER)=([0-9a-f]+)\b")
# with CR0.PE clear QEMU prints the selector, base, limit and flags only: real mode
CS_RE = re.compile(r"^CS =([0-9a-f]{4}) ([0-9a-f]{8,16}) [0-9a-f]{8} [0-9a-f]{8}(?: DPL=\d (CS64|CS32|CS16)\b)?")


class LowMemError(Exception):
    """A log that does not show the switch it should (the message says what is missing)."""


@dataclass(frozen=True, slots=True)
class Dump:
    """One ``-d cpu`` block: the state before a translation block at ``pc`` ran."""

    pc: int  # linear: RIP in 64-bit mode, CS.base + EIP otherwise
    mode: str  # CS64, CS32, CS16 (QEMU's name for the code segment's kind) or real
    cr0: int
    cr3: int
    cr4: int
    efer: int

    @property
    def long_mode(self) -> bool:
        return bool(self.efer & Efer.LMA)

    def to_json(self) -> dict[str, str]:
        return {"pc": f"{self.pc:#x}", "mode": self.mode, "cr0": f"{self.cr0:#x}", "cr3": f"{self.cr3:#x}",
                "cr4": f"{self.cr4:#x}", "efer": f"{self.efer:#x}"}


def _dump(lines: list[str]) -> Dump:
    regs: dict[str, int] = {}
    cs: tuple[int, str] | None = None
    for ln in lines:
        m = CS_RE.match(ln)
        if m:
            cs = (int(m[2], 16), m[3] or "real")
        for name, value in REG_RE.findall(ln):
            regs.setdefault(name, int(value, 16))
    ip = regs.get("RIP", regs.get("EIP"))
    missing = [n for n in ("CR0", "CR3", "CR4", "EFER") if n not in regs] + (["RIP/EIP"] if ip is None else [])
    if missing or cs is None or ip is None:
        raise LowMemError(f"a CPU dump without {', '.join(missing) or 'a CS line'}: {lines[0][:60]!r}")
    base, mode = cs
    pc = ip if mode == "CS64" else (base + ip) & 0xFFFF_FFFF
    return Dump(pc, mode, regs["CR0"], regs["CR3"], regs["CR4"], regs["EFER"])


def split_dumps(lines: Iterable[str]) -> Iterator[list[str]]:
    """The log's CPU dumps as line lists: each starts at its ``RAX=`` (64-bit) or ``EAX=`` line."""
    block: list[str] = []
    for raw in lines:
        ln = raw.rstrip("\r\n")
        if ln.startswith(("RAX=", "EAX=")) and block:
            yield block
            block = []
        if block or ln.startswith(("RAX=", "EAX=")):
            block.append(ln)
    if block:
        yield block


def parse_log(lines: Iterable[str]) -> Iterator[Dump]:
    for block in split_dumps(lines):
        yield _dump(block)


def window_text(lines: Iterable[str]) -> str:
    """The log's dumps from the first to the last in long mode, verbatim: what a fixture keeps."""
    blocks = list(split_dumps(lines))
    lm = [i for i, b in enumerate(blocks) if _dump(b).long_mode]
    return "".join(ln + "\n" for b in (blocks[lm[0]:lm[-1] + 1] if lm else []) for ln in b)


@dataclass(frozen=True)
class Switch:
    """The paging switch as the CPU log shows it."""

    trampoline: int  # the CR3 the CPU returned to long mode with: the trampoline's table, its first page
    code: int  # the page the window's code ran in
    cr3_before: int  # the decompressor's own top-level table
    cr4_before: int
    cr4_after: int
    steps: tuple[Dump, ...]

    @property
    def direction(self) -> str:
        return "4→5" if self.cr4_after & Cr4.LA57 else "5→4"

    def to_json(self) -> dict[str, Any]:
        return {"trampoline": f"{self.trampoline:#x}", "code": f"{self.code:#x}", "direction": self.direction,
                "cr3_before": f"{self.cr3_before:#x}", "cr4_before": f"{self.cr4_before:#x}",
                "cr4_after": f"{self.cr4_after:#x}", "steps": [d.to_json() for d in self.steps]}


def measure(dumps: Iterable[Dump]) -> Switch | None:
    """The switch in the window of long-mode code below 640 KiB, or ``None`` when no such code ran.
    Raises ``LowMemError`` when the window is not a paging switch."""
    all_dumps = list(dumps)
    lm = [i for i, d in enumerate(all_dumps) if d.long_mode]
    if not lm:
        return None
    steps = tuple(all_dumps[lm[0]:lm[-1] + 1])
    first, last = steps[0], steps[-1]
    if first.mode != "CS64" or last.mode != "CS64":
        raise LowMemError(f"the long-mode code below {LOW_END:#x} starts in {first.mode} and ends in {last.mode}, "
                          "not in 64-bit mode")
    if (first.cr4 ^ last.cr4) & Cr4.LA57 == 0:
        raise LowMemError(f"code ran in long mode below {LOW_END:#x} at {first.pc:#x}, but CR4.LA57 did not change")
    if not any(not d.cr0 & Cr0.PG and d.mode == "CS32" for d in steps):
        raise LowMemError("CR4.LA57 changed without a 32-bit step with paging off")
    pages = {d.pc & ~0xFFF for d in steps}
    if len(pages) != 1:
        raise LowMemError(f"the switch ran in {len(pages)} pages: {', '.join(sorted(map(hex, pages)))}")
    table = last.cr3 & ~0xFFF
    if table >= LOW_END:
        raise LowMemError(f"CR3 after the switch is {last.cr3:#x}, not in conventional memory")
    return Switch(table, pages.pop(), first.cr3 & ~0xFFF, first.cr4, last.cr4, steps)


def bda_words(bda: bytes) -> dict[str, int]:
    """The two BIOS data area words ``find_trampoline_placement`` reads, from the 256 bytes at 0x400:
    0x40e the EBDA segment, 0x413 the base memory size in KiB."""
    if len(bda) != 0x100:
        raise LowMemError(f"the BIOS data area is 256 bytes, not {len(bda)}")
    return {"ebda_segment": int.from_bytes(bda[0x0E:0x10], "little"),
            "base_mem_kib": int.from_bytes(bda[0x13:0x15], "little")}
