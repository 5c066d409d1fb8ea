"""Record one instant of a PV dom0 stopped under Xen: registers, its tables by machine address, its
p2m list, ``start_info``, a few kernel variables and how much of the console was out.

Everything is read over QMP while the VM is stopped: machine memory with ``pmemsave`` (QEMU's
guest-physical addresses are Xen's machine addresses), the guest's variables with ``memsave`` through
the CPU's current CR3 (which is dom0's: a stop is refused unless CS is Xen's 64-bit guest-kernel
selector at CPL 3). Files written, per stop ``NAME``: ``NAME.json``, ``NAME.core.elf.gz`` (the table
pages at their machine addresses and the vCPU state, a QEMU-format core), ``NAME.p2m.json`` (the list as
runs) and ``NAME.start_info.bin.gz``; QEMU's ``info tlb`` outside Xen's slots is kept as its line count and
SHA-256 (``tlb_digest``), which the enumerator's listing of the recorded tables must reproduce.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from earlymm.arch.flags import Efer
from earlymm.arch.modes import paging_mode
from earlymm.hw.memory import PhysMem
from earlymm.images import write_qemu_core
from earlymm.images.monitor_text import (
    SEG_RE,
    TLB_RE,
    cpu_state_from_registers,
    parse_gva2gpa_reply,
    parse_info_registers,
)
from earlymm.images.qmp import Qmp
from earlymm.tools.midboot.kallsyms import Kallsyms
from earlymm.tools.midboot.record import QmpFrames, RecordError, StopRecord, table_pages
from earlymm.tools.ptdump.engine import build
from earlymm.tools.ptdump.semantics import tool_semantics
from earlymm.tools.xencap.guest import ADDR_MASK, HYPERVISOR_VIRT_END, HYPERVISOR_VIRT_START, WithoutXenSlots
from earlymm.tools.xencap.p2m import dump_p2m_doc, encode_runs, runs_to_json
from earlymm.tools.xencap.startinfo import SIZE as START_INFO_SIZE
from earlymm.tools.xencap.startinfo import decode_start_info

FLAT_KERNEL_CS64 = 0xE033  # arch/x86/include/asm/xen/interface_64.h (FLAT_RING3_CS64: 64-bit PV kernel, ring 3)
# unsigned longs of the 6.1 kernel read at every stop (arch/x86/xen/p2m.c, enlighten_pv.c, setup.c, mm)
VARIABLES = ("xen_start_info", "xen_p2m_addr", "xen_p2m_size", "xen_max_p2m_pfn", "xen_released_pages", "max_pfn",
             "max_pfn_mapped")
CHUNK = 1 << 20


def _cs_and_cpl(regs_text: str) -> tuple[int, int]:
    text = regs_text.replace("\r", "")
    cs = next((int(m[2], 16) for m in SEG_RE.finditer(text) if m[1] == "CS"), -1)
    cpl = next((int(w[4:]) for w in text.split() if w.startswith("CPL=") and w[4:].isdigit()), -1)
    return cs, cpl


def read_p2m(mem: QmpFrames, va: int, count: int) -> np.ndarray[Any, np.dtype[np.uint64]]:
    """``count`` unsigned longs at guest VA ``va`` (through the CPU's CR3), in 1 MiB pieces."""
    raw = bytearray()
    total = count * 8
    while len(raw) < total:
        raw += mem.read_virt(va + len(raw), min(CHUNK, total - len(raw)))
    return np.frombuffer(bytes(raw), dtype="<u8").astype(np.uint64)


def record_xen_stop(q: Qmp, name: str, syms: Kallsyms, out: Path, scratch: Path, console: Path,
                    extra: dict[str, Any] | None = None) -> StopRecord:
    """Everything about the instant dom0 is stopped at ``name`` (its kallsyms symbol), as ``out/NAME.*``."""
    regs_text = q.hmp("info registers")
    regs = parse_info_registers(regs_text)
    cs, cpl = _cs_and_cpl(regs_text)
    if regs["RIP"] != syms[name]:
        raise RecordError(f"stop {name}: RIP is {regs['RIP']:#x}, not {name} ({syms[name]:#x})")
    if cs != FLAT_KERNEL_CS64 or cpl != 3:
        raise RecordError(f"stop {name}: CS {cs:#x} CPL {cpl} is not a 64-bit PV guest kernel "
                          f"(CS {FLAT_KERNEL_CS64:#x}, CPL 3)")
    efer = regs.get("EFER", 0)
    mode = paging_mode(regs["CR0"], regs["CR4"], efer)
    if not mode.is_ia32e or mode.value.startswith("5"):
        raise RecordError(f"stop {name}: the CPU is in {mode.value} paging, not 4-level IA-32e")
    mem = QmpFrames(q, scratch)
    root = regs["CR3"] & ADDR_MASK
    sem = tool_semantics("qemu", mode, regs["CR4"], bool(efer & Efer.NXE))
    pages = table_pages(build(PhysMem(WithoutXenSlots(mem, root >> 12), absent_zero=False), sem, root).root)
    write_qemu_core(out / f"{name}.core.elf.gz", [(pa >> 12, mem.pages[pa >> 12]) for pa in sorted(pages)],
                    [cpu_state_from_registers(regs_text)])

    def var(sym: str) -> int:
        return int.from_bytes(mem.read_virt(syms[sym], 8), "little")

    variables = {v: var(v) for v in VARIABLES}
    si_va = regs["RSI"] if variables["xen_start_info"] == 0 else variables["xen_start_info"]
    si_from = "RSI (the builder's argument)" if variables["xen_start_info"] == 0 else "xen_start_info"
    raw_si = mem.read_virt(si_va, START_INFO_SIZE)
    (out / f"{name}.start_info.bin.gz").write_bytes(gzip.compress(raw_si, mtime=0))
    si = decode_start_info(raw_si)
    if variables["xen_p2m_addr"]:
        p2m_va, p2m_size, p2m_from = variables["xen_p2m_addr"], variables["xen_p2m_size"], "xen_p2m_addr/xen_p2m_size"
    else:
        p2m_va, p2m_size, p2m_from = si.mfn_list, si.nr_pages, "start_info mfn_list/nr_pages"
    if not 0 < p2m_size <= 1 << 28:
        raise RecordError(f"stop {name}: p2m size {p2m_size} from {p2m_from} is implausible")
    p2m = read_p2m(mem, p2m_va, p2m_size)
    runs = runs_to_json(encode_runs(p2m))
    p2m_doc: dict[str, object] = {"va": f"{p2m_va:#x}", "size": p2m_size, "from": p2m_from,
               "first_page_maddr": _hex(parse_gva2gpa_reply(q.hmp(f"gva2gpa {p2m_va:#x}"))),
               "runs": runs}
    (out / f"{name}.p2m.json").write_text(dump_p2m_doc(p2m_doc))
    # QEMU's own view of the same tables, an oracle for the enumerator: the guest's part of info tlb. Its
    # 20,000-150,000 lines would dwarf the fixture, so only their count and digest are kept.
    tlb = [ln for ln in q.hmp("info tlb", timeout=600).replace("\r", "").split("\n") if ln.strip()]
    mine = [ln for ln in tlb
            if not (TLB_RE.match(ln) and HYPERVISOR_VIRT_START <= int(ln[:16], 16) < HYPERVISOR_VIRT_END)]
    roots: dict[str, str | None] = {"cr3": f"{root:#x}"}
    for label, va in (("pt_base", si.pt_base), ("init_top_pgt", syms["init_top_pgt"])):
        roots[label] = _hex(parse_gva2gpa_reply(q.hmp(f"gva2gpa {va:#x}")))
    info: dict[str, Any] = {
        "stop": name, "symbol": name, "rip": f"{regs['RIP']:#x}", "cs": f"{cs:#x}", "cpl": cpl,
        "registers": {k: f"{regs[k]:#x}" for k in ("CR0", "CR2", "CR3", "CR4", "EFER", "RSP", "RSI") if k in regs},
        "paging": mode.value, "roots": roots,
        "cr3_is": next((k for k, v in roots.items() if k != "cr3" and v == roots["cr3"]), "other"),
        "table_pages": len(pages), "tlb_lines": len(mine), "tlb_sha256": tlb_digest(mine),
        "tlb_lines_xen": len(tlb) - len(mine),
        "start_info_from": si_from, "start_info_va": f"{si_va:#x}",
        "start_info": si.to_json(), "variables": {k: f"{v:#x}" for k, v in variables.items()},
        "p2m": {k: v for k, v in p2m_doc.items() if k != "runs"} | {"runs": len(runs)},
        # how much of the console was out, counted as it is saved (without QEMU's \r)
        "console_bytes": len(console.read_bytes().replace(b"\r", b"")) if console.exists() else 0,
        **(extra or {}), "info_registers": regs_text,
    }
    (out / f"{name}.json").write_text(json.dumps(info, indent=1) + "\n")
    return StopRecord(name, name, info)


def tlb_digest(lines: list[str]) -> str:
    """SHA-256 of ``info tlb`` lines, each ended by a newline (no ``\\r``)."""
    return hashlib.sha256("".join(f"{ln}\n" for ln in lines).encode()).hexdigest()


def _hex(v: int | None) -> str | None:
    return None if v is None else f"{v:#x}"
