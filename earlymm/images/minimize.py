"""Shrink a QEMU capture to a test fixture: keep only page-table pages and the pages probes land on.

The walk here is deliberately independent of the simulator's walker (so a fixture cannot inherit the
simulator's bugs): starting at CR3, it follows every present non-leaf entry of a 4- or 5-level
hierarchy (CR4.LA57 decides), with a visited set so aliasing (espfix) and self-references stay bounded.
Reserved bits are not checked; a table the hardware would refuse to use is merely kept needlessly.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import struct
from pathlib import Path

from earlymm.hw.memory import Buffer, FrameSource
from earlymm.images.core_writer import write_qemu_core
from earlymm.images.cpustate import CpuState
from earlymm.images.monitor_text import parse_gva2gpa_file
from earlymm.images.qemu_core import open_image
from earlymm.images.safe_write import check_target, ensure_directory, write_bytes, write_text

CR0_PG = 1 << 31
CR4_PAE = 1 << 5
CR4_LA57 = 1 << 12
ADDR_MASK = 0x000F_FFFF_FFFF_F000
PRESENT, PS = 1, 1 << 7
_ENTRIES = struct.Struct("<512Q")

TEXT_FILES = ("registers.txt", "tlb.txt", "mem.txt", "gva2gpa.txt", "console.log", "meta.json")
GZIP_TEXT_ABOVE = 256 * 1024  # text files larger than this are stored gzip-compressed


def table_pfns(mem: FrameSource, cpu: CpuState) -> tuple[set[int], set[int]]:
    """(table pages reachable from ``cpu.cr3``, referenced table pages the image lacks).

    Only IA-32e paging (CR0.PG and CR4.PAE, which is all a 64-bit QEMU core can hold) is walked.
    """
    found: set[int] = set()
    missing: set[int] = set()
    if not (cpu.cr0 & CR0_PG and cpu.cr4 & CR4_PAE):
        return found, missing
    top = 5 if cpu.cr4 & CR4_LA57 else 4
    stack = [((cpu.cr3 & ADDR_MASK) >> 12, top)]
    while stack:
        pfn, level = stack.pop()
        if pfn in found or pfn in missing:
            continue
        frame = mem.frame(pfn)
        if frame is None:
            missing.add(pfn)
            continue
        found.add(pfn)
        if level == 1:
            continue
        for e in _ENTRIES.unpack_from(frame, 0):
            # PS=1 in a PDPTE/PDE maps a page; in a PML4E/PML5E it is reserved (the walk would fault).
            if e & PRESENT and not e & PS:
                stack.append(((e & ADDR_MASK) >> 12, level - 1))
    return found, missing


_ENTRIES32 = struct.Struct("<1024I")
CR4_PSE = 1 << 4


def table_pfns_legacy(mem: FrameSource, cpu: CpuState) -> tuple[set[int], set[int]]:
    """``table_pfns`` for a CPU outside long mode: 32-bit paging (a page directory of 1024 4-byte entries,
    4 MiB pages when CR4.PSE) or PAE (the 32-byte PDPT at CR3, then 8-byte PDs and PTs)."""
    found: set[int] = set()
    missing: set[int] = set()
    if not cpu.cr0 & CR0_PG:
        return found, missing

    def have(pfn: int) -> Buffer | None:
        frame = mem.frame(pfn)
        (found if frame is not None else missing).add(pfn)
        return frame

    if not cpu.cr4 & CR4_PAE:
        pd = have((cpu.cr3 & 0xFFFF_F000) >> 12)
        if pd is not None:
            for e in _ENTRIES32.unpack_from(pd, 0):
                if e & PRESENT and not (e & PS and cpu.cr4 & CR4_PSE):
                    have(e >> 12)
        return found, missing
    pdpt = have((cpu.cr3 & 0xFFFF_F000) >> 12)
    if pdpt is None:
        return found, missing
    for e in struct.unpack_from("<4Q", pdpt, cpu.cr3 & 0xFE0):
        if not e & PRESENT:
            continue
        pd = have((e & ADDR_MASK) >> 12)
        if pd is not None:
            for d in _ENTRIES.unpack_from(pd, 0):
                if d & PRESENT and not d & PS:
                    have((d & ADDR_MASK) >> 12)
    return found, missing


def _read_text(path: Path) -> str:
    if path.suffix == ".gz":
        return gzip.decompress(path.read_bytes()).decode()
    return path.read_text()


def find_text(directory: Path, name: str) -> Path | None:
    """``name`` or ``name.gz`` in ``directory`` (fixtures compress large files)."""
    for p in (directory / name, directory / (name + ".gz")):
        if p.exists():
            return p
    return None


def read_capture_text(directory: Path, name: str) -> str:
    p = find_text(directory, name)
    if p is None:
        raise FileNotFoundError(f"{directory}: neither {name} nor {name}.gz")
    return _read_text(p)


def minimize(capture: Path, fixture: Path) -> dict[str, object]:
    """Write ``fixture/core.elf.gz`` and copies of the text files; return a summary (also saved
    as ``fixture/minimize.json``)."""
    ensure_directory(fixture, "fixture directory")
    core = find_text(capture, "core.elf")
    if core is None:
        raise FileNotFoundError(f"{capture}: no core.elf")
    samples = parse_gva2gpa_file(read_capture_text(capture, "gva2gpa.txt"))
    with open_image(core, kind="core") as img:
        tables: set[int] = set()
        missing: set[int] = set()
        for cpu in img.cpus:
            f, m = table_pfns(img, cpu)
            tables |= f
            missing |= m
        data = {pa >> 12 for _va, pa in samples if pa is not None} - tables
        holes = {p for p in data if img.frame(p) is None}
        keep = sorted(tables | (data - holes))
        frames = [(p, bytes(img.frame(p) or b"")) for p in keep]
        write_qemu_core(fixture / "core.elf.gz", frames, list(img.cpus))
    for name in TEXT_FILES:
        src = find_text(capture, name)
        if src is None:
            continue
        for stale in (fixture / name, fixture / (name + ".gz")):
            check_target(stale)  # only a regular file is ever removed or replaced
            stale.unlink(missing_ok=True)
        if src.suffix != ".gz" and src.stat().st_size > GZIP_TEXT_ABOVE:
            write_bytes(fixture / (name + ".gz"), gzip.compress(src.read_bytes(), 9, mtime=0))
        else:
            write_bytes(fixture / src.name, src.read_bytes())
    summary: dict[str, object] = {
        "source": capture.name,
        "table_pages": len(tables),
        "data_pages": len(data - holes),
        "samples": len(samples),
        "sample_pages_in_holes": [hex(p << 12) for p in sorted(holes)],
        "referenced_tables_missing": [hex(p << 12) for p in sorted(missing)],
    }
    write_text(fixture / "minimize.json", json.dumps(summary, indent=2) + "\n")
    return summary


PTI_USER_BIT = 1 << 12  # PTI_USER_PGTABLE_MASK


def add_pti_kernel_tables(capture: Path, fixture: Path) -> int:
    """A CR3 stopped in user mode under PTI names the user PGD, so ``minimize`` keeps only the user page
    table; add the kernel PGD's tables (the page before, bit 12 clear) to the fixture's core. Returns
    the number of pages added (0 when no CPU had a PTI user CR3)."""
    core = find_text(capture, "core.elf")
    if core is None:
        raise FileNotFoundError(f"{capture}: no core.elf")
    with open_image(core, kind="core") as img:
        extra: set[int] = set()
        for cpu in img.cpus:
            if cpu.cr3 & PTI_USER_BIT:
                extra |= table_pfns(img, dataclasses.replace(cpu, cr3=cpu.cr3 & ~PTI_USER_BIT))[0]
        if not extra:
            return 0
        with open_image(fixture / "core.elf.gz", kind="core") as fix:
            frames = {p: bytes(fix.frame(p) or b"") for lo, hi in fix.ranges() for p in range(lo >> 12, hi >> 12)}
        added = sorted(extra - frames.keys())
        frames.update((p, bytes(img.frame(p) or b"")) for p in added)
        write_qemu_core(fixture / "core.elf.gz", sorted(frames.items()), list(img.cpus))
    summary = json.loads((fixture / "minimize.json").read_text())
    summary["pti_kernel_table_pages"] = len(added)
    write_text(fixture / "minimize.json", json.dumps(summary, indent=2) + "\n")
    return len(added)

