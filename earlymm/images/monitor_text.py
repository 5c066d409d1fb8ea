"""Parsing QEMU monitor output (``info tlb``, ``info mem``, ``gva2gpa``) and choosing VAs to probe.

Formats (QEMU 7.2, target/i386/monitor.c), lines ending in ``\\r\\n`` over the monitor:

* ``info tlb``: ``%016x: %016x XGPDACTUW`` — VA, the leaf entry masked to its address bits, then the
  leaf's flags with ``-`` for clear bits: X = NX, G, P = PS (a 2 MiB or 1 GiB page; bit 7 of a 4 KiB
  PTE is PAT and QEMU clears it before printing), D, A, C = PCD, T = PWT, U, W. Present leaves only.
* ``info mem``: ``%016x-%016x %016x urw`` — start, end, size, effective user/read/write.
* ``gva2gpa ADDR``: ``gpa: 0x…`` (page offset included; ``gpa: 0`` for zero) or ``Unmapped``.
* ``info registers``: ``NAME=hex`` pairs (``R8 =…`` padded), segment lines ``CS =sel base limit flags …``,
  ``GDT=     base limit``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from earlymm.images.cpustate import GPR_NAMES, SEGMENT_NAMES, CpuState, Segment

TLB_RE = re.compile(r"^([0-9a-f]{16}): ([0-9a-f]{16}) ([-XGPDACTUW]{9})$")
MEM_RE = re.compile(r"^([0-9a-f]{16})-([0-9a-f]{16}) ([0-9a-f]{16}) ([-u][-r][-w])$")
REG_RE = re.compile(r"\b([A-Z][A-Z0-9]*) ?=([0-9a-f]+)\b")
SEG_RE = re.compile(r"^(ES|CS|SS|DS|FS|GS|LDT|TR) ?=([0-9a-f]{4}) ([0-9a-f]{16}) ([0-9a-f]{8}) ([0-9a-f]{8})", re.M)
TABLE_RE = re.compile(r"^(GDT|IDT)= +([0-9a-f]{16}) ([0-9a-f]{8})", re.M)


@dataclass(frozen=True, slots=True)
class TlbLine:
    va: int
    pa: int
    flags: str  # e.g. "XG-DA---W"


@dataclass(frozen=True, slots=True)
class MemLine:
    start: int
    end: int
    perms: str


def lines(text: str) -> list[str]:
    return [ln.rstrip("\r") for ln in text.split("\n") if ln.strip()]


def parse_info_tlb(text: str) -> list[TlbLine]:
    out = []
    for ln in lines(text):
        m = TLB_RE.match(ln)
        if m:
            out.append(TlbLine(int(m[1], 16), int(m[2], 16), m[3]))
    return out


def parse_info_mem(text: str) -> list[MemLine]:
    out = []
    for ln in lines(text):
        m = MEM_RE.match(ln)
        if m:
            out.append(MemLine(int(m[1], 16), int(m[2], 16), m[4]))
    return out


def parse_info_registers(text: str) -> dict[str, int]:
    """The scalar registers of the first CPU in an ``info registers`` reply: ``RAX``…``R15``, ``RIP``,
    ``RFL``, ``CR0``…``CR4``, ``EFER``, ``DR0``… (segment and FPU/XMM lines are left out)."""
    out: dict[str, int] = {}
    for ln in lines(text):
        if SEG_RE.match(ln) or TABLE_RE.match(ln) or ln.startswith(("FPR", "XMM", "YMM", "ZMM", "FCW", "CPU#")):
            continue
        for name, value in REG_RE.findall(ln):
            out.setdefault(name, int(value, 16))
    if "RIP" not in out and "EIP" in out:  # QEMU prints a CPU outside 64-bit mode with 32-bit names
        out["RIP"] = out["EIP"]
        for n in GPR_NAMES[:8]:
            if "E" + n[1:].upper() in out:
                out.setdefault(n.upper(), out["E" + n[1:].upper()])
    for need in ("RIP", "CR0", "CR3", "CR4"):
        if need not in out:
            raise ValueError(f"info registers: no {need}")
    return out


CPU_HEADER_RE = re.compile(r"^CPU#(\d+)\s*$", re.M)


def cpu_states_from_registers_text(text: str) -> list[tuple[CpuState, int | None]]:
    """Every CPU of an ``info registers`` reply (``info registers -a`` gives one block per ``CPU#n``
    line, in order): its ``CpuState`` and the ``EFER`` QEMU printed (None if the reply has none — a core's
    note never has it). Raises ``ValueError`` naming the CPU whose block lacks a register."""
    text = text.replace("\r", "")
    heads = list(CPU_HEADER_RE.finditer(text))
    blocks = [text] if not heads else [text[m.end():heads[i + 1].start() if i + 1 < len(heads) else len(text)]
                                       for i, m in enumerate(heads)]
    out = []
    for i, block in enumerate(blocks):
        try:
            out.append((cpu_state_from_registers(block), parse_info_registers(block).get("EFER")))
        except ValueError as e:
            raise ValueError(f"CPU#{heads[i][1]}: {e}" if heads else str(e)) from None
    return out


def cpu_state_from_registers(text: str) -> CpuState:
    """A ``CpuState`` (what a QEMU core's note holds) from an ``info registers`` reply."""
    regs = parse_info_registers(text)
    segs = {m[1].lower(): Segment(int(m[2], 16), int(m[4], 16), int(m[5], 16), int(m[3], 16))
            for m in SEG_RE.finditer(text.replace("\r", ""))}
    for m in TABLE_RE.finditer(text.replace("\r", "")):
        segs[m[1].lower()] = Segment(0, int(m[3], 16), 0, int(m[2], 16))
    return CpuState(gprs=tuple(regs.get(n.upper(), 0) for n in GPR_NAMES), rip=regs["RIP"],
                    rflags=regs.get("RFL", 2), segments=tuple(segs.get(n, Segment()) for n in SEGMENT_NAMES),
                    cr0=regs["CR0"], cr2=regs.get("CR2", 0), cr3=regs["CR3"], cr4=regs["CR4"])


def parse_gva2gpa_reply(reply: str) -> int | None:
    """Physical address from a ``gva2gpa`` reply, ``None`` for ``Unmapped``."""
    r = reply.strip()
    if r == "Unmapped":
        return None
    if not r.startswith("gpa: "):
        raise ValueError(f"unexpected gva2gpa reply {reply!r}")
    return int(r[5:], 0)


def parse_gva2gpa_file(text: str) -> list[tuple[int, int | None]]:
    """``gva2gpa.txt`` as the capture tool writes it: ``VA<TAB>reply`` per line."""
    out = []
    for ln in lines(text):
        va, _, reply = ln.partition("\t")
        out.append((int(va, 16), parse_gva2gpa_reply(reply)))
    return out


def _runs(tlb: list[TlbLine]) -> list[tuple[TlbLine, TlbLine, int]]:
    """Group lines mapping consecutive VAs to consecutive PAs with equal flags: (first, last, count)."""
    runs: list[tuple[TlbLine, TlbLine, int]] = []
    for t in tlb:
        if runs:
            first, last, n = runs[-1]
            step = t.va - last.va
            if 0 < step <= 1 << 30 and t.pa - last.pa == step and t.flags == last.flags:
                runs[-1] = (first, t, n + 1)
                continue
        runs.append((t, t, 1))
    return runs


def _offset(va: int) -> int:
    # A fixed, address-dependent page offset, so samples exercise offsets other than 0 reproducibly.
    return (va * 0x9E3779B97F4A7C15 >> 40) & 0xFF8


def fixed_probes(la57: bool, mem_bytes: int) -> list[int]:
    """Addresses worth probing in any Linux x86-64 guest (default, non-KASLR region bases), plus
    non-canonical and user addresses. With KASLR most land in holes, which is a useful answer too."""
    if la57:
        direct, vmalloc, vmemmap = 0xFF11000000000000, 0xFFA0000000000000, 0xFFD4000000000000
        noncanon = [0x0100000000000000, 0x8000000000000000, 0xFEFFFFFFFFFFF000]
    else:
        direct, vmalloc, vmemmap = 0xFFFF888000000000, 0xFFFFC90000000000, 0xFFFFEA0000000000
        noncanon = [0x0000800000000000, 0x8000000000000000, 0xFFFF7FFFFFFFF000, 0xFF11000000000000]
    probes = [0, 0x1000, 0x400000, 0x7FFFFFFFF000, 0x00FFFFFFFFFFF000, *noncanon]
    step = max(mem_bytes // 48, 1 << 21)
    probes += [direct + k * step + _offset(k) for k in range(48)]
    probes += [direct + mem_bytes + 0x1000, direct - 0x1000]
    probes += [0xFFFFFFFF81000000 + k * 0x80000 + 0x123 for k in range(24)]  # kernel text/data
    probes += [0xFFFFFFFFA0000000, 0xFFFFFFFFC0000000]  # modules
    probes += [vmalloc + k * 0x1000 for k in range(8)] + [vmemmap, vmemmap + 0x1000 * 64]
    probes += [0xFFFFFE0000000000, 0xFFFFFE0000001000, 0xFFFFFF0000000000]  # cpu_entry_area, espfix
    probes += [0xFFFFFFFFFF5FF000 - k * 0x1000 for k in range(16)]  # fixmap
    probes += [0xFFFFFFFFFF600000, 0xFFFFFFFFFFFFF000]  # vsyscall page, top page
    return probes


def _spread(buckets: list[list[int]], limit: int) -> list[int]:
    """At most ``limit`` items, shared fairly between buckets, evenly spaced within each bucket."""
    quota = [0] * len(buckets)
    left = limit
    while left > 0 and any(q < len(b) for q, b in zip(quota, buckets, strict=True)):
        for i, b in enumerate(buckets):
            if left > 0 and quota[i] < len(b):
                quota[i] += 1
                left -= 1
    return [b[j * len(b) // q] for q, b in zip(quota, buckets, strict=True) for j in range(q)]


def choose_samples(tlb: list[TlbLine], la57: bool, mem_bytes: int, limit: int = 400) -> list[int]:
    """VAs to ask ``gva2gpa`` about: up to ``limit`` picked from the present leaf runs (first, last and
    middle page of each run, the far end of a large page, and the address just past the run), shared
    fairly between 512 GiB regions so one huge aliased area (espfix prints 65,536 lines) does not
    crowd out the rest; then the fixed probes. Sorted, unique."""
    buckets: dict[int, list[int]] = {}
    for first, last, n in _runs(tlb):
        size = 0x200000 if last.flags[2] == "P" else 0x1000
        cand = [first.va, last.va, last.va + size]
        if n > 2:
            cand.append(first.va + (last.va - first.va) // 2 & ~0xFFF)
        if size > 0x1000:
            cand.append(last.va + size - 0x1000)
        buckets.setdefault(first.va >> 39, []).extend(c + _offset(c) for c in cand)
    picks = _spread([sorted(set(b)) for _k, b in sorted(buckets.items())], limit)
    return sorted({va for va in picks + fixed_probes(la57, mem_bytes) if 0 <= va < 1 << 64})
