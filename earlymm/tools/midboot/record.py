"""Record one stopped instant of a QEMU guest through QMP: registers, page tables, kernel variables.

Memory is read with QMP's own commands — ``pmemsave`` for physical pages, ``memsave`` for kernel
virtual addresses (through the CPU's current CR3) — into a scratch file, never by parsing ``xp`` text.
The page tables are found by the ptdump engine walking a ``FrameSource`` that reads each page with
``pmemsave`` on first use, so exactly the pages reachable from the roots are read (once each).
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from earlymm.arch.flags import Cr0, Cr4, Efer
from earlymm.arch.modes import paging_mode
from earlymm.hw.memory import MAX_PA, PhysMem
from earlymm.images import write_qemu_core
from earlymm.images.monitor_text import cpu_state_from_registers, parse_gva2gpa_reply, parse_info_registers
from earlymm.images.qmp import Qmp
from earlymm.tools.midboot.bootinfo import decode_boot_params
from earlymm.tools.midboot.kallsyms import Kallsyms
from earlymm.tools.ptdump.engine import Node, build
from earlymm.tools.ptdump.semantics import QEMU_TABLE, tool_semantics

PAGE = 4096


class RecordError(Exception):
    pass


class QmpFrames:
    """Guest memory read through QMP, page by page, cached (the guest is stopped)."""

    def __init__(self, q: Qmp, scratch: Path) -> None:
        self.q, self.scratch = q, scratch
        self.pages: dict[int, bytes] = {}

    def _save(self, command: str, addr: int, size: int) -> bytes:
        self.scratch.unlink(missing_ok=True)
        val = addr - (1 << 64) if addr >> 63 else addr  # QMP's 'int' is int64: upper-half VAs go negative
        self.q.command(command, timeout=60, val=val, size=size, filename=str(self.scratch.resolve()))
        data = self.scratch.read_bytes()
        if len(data) != size:
            raise RecordError(f"{command} {addr:#x}+{size:#x} returned {len(data)} bytes")
        return data

    def read_phys(self, pa: int, size: int) -> bytes:
        return self._save("pmemsave", pa, size)

    def read_virt(self, va: int, size: int) -> bytes:
        return self._save("memsave", va, size)

    def frame(self, pfn: int) -> bytes | None:
        if pfn not in self.pages:
            self.pages[pfn] = self.read_phys(pfn * PAGE, PAGE)
        return self.pages[pfn]

    def ranges(self) -> list[tuple[int, int]]:
        return [(0, MAX_PA)]


def table_pages(root: Node | None) -> set[int]:
    """Addresses of every table in the DAG under ``root`` (each read once by the engine)."""
    seen: dict[int, Node] = {}
    stack = [root] if root is not None else []
    while stack:
        n = stack.pop()
        if id(n) in seen:
            continue
        seen[id(n)] = n
        stack.extend(child for _i, _k, _e, child in n.items if child is not None)
    return {n.table for n in seen.values()}


@dataclass
class StopRecord:
    name: str
    symbol: str
    info: dict[str, Any] = field(default_factory=dict)


def gva2gpa(q: Qmp, va: int) -> int | None:
    return parse_gva2gpa_reply(q.hmp(f"gva2gpa {va:#x}"))


def record_stop(q: Qmp, name: str, symbol: str, syms: Kallsyms, out: Path, scratch: Path,
                extra: dict[str, Any] | None = None) -> StopRecord:
    """Everything about the instant the guest is stopped at, written as ``out/NAME.*``."""
    regs_text = q.hmp("info registers")
    regs = parse_info_registers(regs_text)
    if regs["RIP"] != syms[symbol]:
        raise RecordError(f"stop {name}: RIP is {regs['RIP']:#x}, not {symbol} ({syms[symbol]:#x})")
    mem = QmpFrames(q, scratch)
    efer = regs.get("EFER", 0)
    mode = paging_mode(regs["CR0"], regs["CR4"], efer)
    if not mode.is_ia32e:
        raise RecordError(f"stop {name}: the CPU is not in IA-32e paging ({mode.value})")
    sem = tool_semantics("qemu", mode, regs["CR4"], bool(efer & Efer.NXE))
    text_pa = gva2gpa(q, syms["_text"])
    if text_pa is None:
        raise RecordError(f"stop {name}: _text {syms['_text']:#x} is not mapped")
    roots = {"cr3": regs["CR3"] & QEMU_TABLE}
    for sym in ("early_top_pgt", "init_top_pgt"):
        pa = gva2gpa(q, syms[sym])
        roots[sym] = pa if pa is not None else syms[sym] - syms["_text"] + text_pa
    pages: set[int] = set()
    for root in roots.values():
        pages |= table_pages(build(PhysMem(mem, absent_zero=False), sem, root).root)
    cpu = cpu_state_from_registers(regs_text)
    write_qemu_core(out / f"{name}.core.elf.gz", [(pa >> 12, mem.pages[pa >> 12]) for pa in sorted(pages)], [cpu])
    if symbol == "x86_64_start_kernel":  # the kernel's copy is still empty: read the loader's zero page
        raw_bp, bp_from = mem.read_phys(regs["RDI"], PAGE), f"loader's zero page at RDI = {regs['RDI']:#x}"
    else:
        raw_bp, bp_from = mem.read_virt(syms["boot_params"], PAGE), "the kernel's boot_params"
    (out / f"{name}.boot_params.bin.gz").write_bytes(gzip.compress(raw_bp, mtime=0))
    tlb = q.hmp("info tlb", timeout=300)
    (out / f"{name}.tlb.txt.gz").write_bytes(gzip.compress(tlb.encode(), mtime=0))

    def var(sym: str, size: int) -> int:
        return int.from_bytes(mem.read_virt(syms[sym], size), "little")

    info: dict[str, Any] = {
        "stop": name, "symbol": symbol, "rip": f"{regs['RIP']:#x}",
        "registers": {k: f"{regs[k]:#x}" for k in ("CR0", "CR2", "CR3", "CR4", "EFER", "RSP", "RDI") if k in regs},
        "paging": mode.value, "cr0_pg_wp": bool(regs["CR0"] & Cr0.PG and regs["CR0"] & Cr0.WP),
        "cr4_pge": bool(regs["CR4"] & Cr4.PGE), "cr4_pse": bool(regs["CR4"] & Cr4.PSE),
        "roots": {k: f"{v:#x}" for k, v in roots.items()},
        "cr3_is": next((k for k, v in roots.items() if k != "cr3" and v == roots["cr3"]), "other"),
        "table_pages": len(pages), "tlb_lines": sum(1 for ln in tlb.splitlines() if ln.strip()),
        # unsigned int next_early_pgt (head64.c); phys_base is an unsigned long
        "next_early_pgt": var("next_early_pgt", 4), "phys_base": f"{var('phys_base', 8):#x}",
        "load_address": f"{text_pa:#x}", "boot_params_from": bp_from, "boot_params": decode_boot_params(raw_bp),
        **(extra or {}), "info_registers": regs_text,
    }
    (out / f"{name}.json").write_text(json.dumps(info, indent=1) + "\n")
    return StopRecord(name, symbol, info)
