"""Write memory and CPU state as a core in the layout QEMU's ``dump-guest-memory`` uses.

The output reads back with ``open_image`` and with other tools that understand QEMU cores (crash, gdb,
volatility), byte-identical to QEMU 7.2's own output for the same memory except that ``e_ehsize`` is
the correct 64 (QEMU 7.2 writes 8, the size of a pointer): ELF64 header, section headers, program
headers (``PT_NOTE``, then one ``PT_LOAD`` per run of consecutive pfns with ``p_paddr`` = ``p_vaddr``
= guest-physical), the notes (all ``NT_PRSTATUS``, then all ``QEMU`` notes), the memory. A path
ending in ``.gz`` is gzip-compressed. The file appears atomically (``safe_write``: a temporary file
renamed over a regular file or nothing; devices, FIFOs, directories and symbolic links are refused).

``absent_zero=True`` adds one more note after the QEMU ones, which QEMU never writes: name ``EARLYMM``,
type 1, descriptor ``<u32 version = 1, u32 flags>`` with flag bit 0 saying "physical memory this core
does not hold reads as zeros" — true of the simulator's machine, whose untouched RAM is zero-filled,
so a sparse core of it is complete. earlymm's readers honour it (``SegmentImage.absent_zero``); other
readers (crash, gdb, volatility3, pyelftools) skip a note whose name they do not know.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Iterable
from typing import BinaryIO

from earlymm.arch.addr import PAGE_SHIFT, PAGE_SIZE
from earlymm.hw.memory import Buffer
from earlymm.images.cpustate import CpuState, pack_prstatus, pack_qemu_cpustate
from earlymm.images.qemu_core import (
    ABSENT_READS_ZERO,
    EARLYMM_NOTE,
    EARLYMM_NOTE_NAME,
    EHDR,
    ELF_MAGIC,
    ELFCLASS64,
    ELFDATA2LSB,
    EM_X86_64,
    ET_CORE,
    NHDR,
    NT_EARLYMM_MEMORY,
    NT_PRSTATUS,
    PHDR,
    PN_XNUM,
    PT_LOAD,
    PT_NOTE,
    SHDR,
)
from earlymm.images.safe_write import write_atomically

EV_CURRENT = 1
EARLYMM_NOTE_VERSION = 1
SHT_STRTAB = 3
SHSTRTAB = b"\0.shstrtab\0"


def _note(name: bytes, ntype: int, desc: bytes) -> bytes:
    namez = name + b"\0"
    pad_name = b"\0" * (-len(namez) % 4)
    pad_desc = b"\0" * (-len(desc) % 4)
    return NHDR.pack(len(namez), len(desc), ntype) + namez + pad_name + desc + pad_desc


def build_notes(cpus: list[CpuState], *, absent_zero: bool = False) -> bytes:
    prstatus = [_note(b"CORE", NT_PRSTATUS, pack_prstatus(c, i + 1)) for i, c in enumerate(cpus)]
    qemu = [_note(b"QEMU", 0, pack_qemu_cpustate(c)) for c in cpus]
    ours = [_note(EARLYMM_NOTE_NAME, NT_EARLYMM_MEMORY, EARLYMM_NOTE.pack(EARLYMM_NOTE_VERSION, ABSENT_READS_ZERO))
            ] if absent_zero else []
    return b"".join(prstatus + qemu + ours)


def _runs(frames: Iterable[tuple[int, Buffer]]) -> list[tuple[int, list[Buffer]]]:
    """Group frames into runs of consecutive pfns: ``[(first_pfn, [frame, ...]), ...]``."""
    items: list[tuple[int, Buffer]] = []
    for pfn, data in frames:
        if not 0 <= pfn < 1 << (52 - PAGE_SHIFT):
            raise ValueError(f"pfn {pfn:#x} is outside the 52-bit physical address space")
        if len(data) != PAGE_SIZE:
            raise ValueError(f"frame {pfn:#x} is {len(data)} bytes, not {PAGE_SIZE}")
        items.append((pfn, data))
    items.sort(key=lambda t: t[0])
    runs: list[tuple[int, list[Buffer]]] = []
    prev = -2
    for pfn, data in items:
        if pfn == prev:
            raise ValueError(f"frame {pfn:#x} given twice")
        if pfn == prev + 1:
            runs[-1][1].append(data)
        else:
            runs.append((pfn, [data]))
        prev = pfn
    return runs


def _write(out: BinaryIO, runs: list[tuple[int, list[Buffer]]], notes: bytes) -> None:
    # QEMU 7.2's order: ELF header, section headers (a NULL one, whose sh_info carries the real
    # program-header count when e_phnum is PN_XNUM, and .shstrtab), program headers, notes, memory,
    # and the .shstrtab bytes last.
    phnum = 1 + len(runs)
    shoff = EHDR.size
    phoff = shoff + 2 * SHDR.size
    note_off = phoff + phnum * PHDR.size
    data_off = note_off + len(notes)
    strtab_off = data_off + PAGE_SIZE * sum(len(r[1]) for r in runs)
    ident = ELF_MAGIC + bytes([ELFCLASS64, ELFDATA2LSB, EV_CURRENT]) + bytes(9)
    out.write(EHDR.pack(ident, ET_CORE, EM_X86_64, EV_CURRENT, 0, phoff, shoff, 0, EHDR.size,
                        PHDR.size, min(phnum, PN_XNUM), SHDR.size, 2, 1))
    out.write(SHDR.pack(0, 0, 0, 0, 0, 0, 0, phnum if phnum >= PN_XNUM else 0, 0, 0))
    out.write(SHDR.pack(1, SHT_STRTAB, 0, 0, strtab_off, len(SHSTRTAB), 0, 0, 0, 0))
    out.write(PHDR.pack(PT_NOTE, 0, note_off, 0, 0, len(notes), len(notes), 0))
    off = data_off
    for pfn, frames in runs:
        size = PAGE_SIZE * len(frames)
        out.write(PHDR.pack(PT_LOAD, 0, off, pfn << PAGE_SHIFT, pfn << PAGE_SHIFT, size, size, 0))
        off += size
    out.write(notes)
    for _pfn, frames in runs:
        for f in frames:
            out.write(f)
    out.write(SHSTRTAB)


def write_qemu_core(path: str | os.PathLike[str], frames: Iterable[tuple[int, Buffer]], cpus: list[CpuState], *,
                    absent_zero: bool = False) -> None:
    """Write ``frames`` (``(pfn, 4096 bytes)``, any order, no duplicates) and ``cpus`` as a QEMU core;
    ``absent_zero`` marks it complete (memory it lacks reads as zeros: see the module docstring).

    Raises ``ValueError`` for a bad frame, ``safe_write.WriteError`` for a target that must not be
    written or an I/O error (a full disk); either way nothing is left at ``path`` or beside it.
    """
    runs = _runs(frames)
    notes = build_notes(cpus, absent_zero=absent_zero)
    gz = os.fspath(path).endswith(".gz")

    def produce(raw: BinaryIO) -> None:
        if gz:
            # mtime=0 and no file name keep the output byte-identical for identical input.
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as g:
                _write(g, runs, notes)  # type: ignore[arg-type]
        else:
            _write(raw, runs, notes)

    write_atomically(path, produce, "core")
