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

``machine="i386"`` writes what QEMU writes for a guest outside long mode (target/i386/arch_dump.c):
``EM_386``, the 144-byte i386 ``NT_PRSTATUS`` and the same ``QEMU`` note, in ELFCLASS32 — unless a memory
block ends above 0xFFFFFFFF (``cpu_get_dump_info``: ``target_end > UINT_MAX``), then in ELFCLASS64.
Checked against qemu-system-i386 7.2's own dumps (tests/images/test_core32.py).
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Iterable
from typing import BinaryIO

from earlymm.arch.addr import PAGE_SHIFT, PAGE_SIZE
from earlymm.hw.memory import Buffer
from earlymm.images.cpustate import CpuState, pack_prstatus, pack_prstatus_i386, pack_qemu_cpustate
from earlymm.images.qemu_core import (
    ABSENT_READS_ZERO,
    EARLYMM_NOTE,
    EARLYMM_NOTE_NAME,
    ELF32,
    ELF64,
    ELF_MAGIC,
    ELFDATA2LSB,
    EM_386,
    EM_X86_64,
    ET_CORE,
    NHDR,
    NT_EARLYMM_MEMORY,
    NT_PRSTATUS,
    PN_XNUM,
    PT_LOAD,
    PT_NOTE,
    ElfClass,
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


def build_notes(cpus: list[CpuState], *, absent_zero: bool = False, machine: str = "x86_64") -> bytes:
    pack = pack_prstatus_i386 if machine == "i386" else pack_prstatus
    prstatus = [_note(b"CORE", NT_PRSTATUS, pack(c, i + 1)) for i, c in enumerate(cpus)]
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


def _write(out: BinaryIO, runs: list[tuple[int, list[Buffer]]], notes: bytes, cls: ElfClass, machine: int) -> None:
    # QEMU 7.2's order: ELF header, section headers (a NULL one, whose sh_info carries the real
    # program-header count when e_phnum is PN_XNUM, and .shstrtab), program headers, notes, memory,
    # and the .shstrtab bytes last.
    ehdr, phdr, shdr = cls.ehdr, cls.phdr_struct, cls.shdr
    phnum = 1 + len(runs)
    shoff = ehdr.size
    phoff = shoff + 2 * shdr.size
    note_off = phoff + phnum * phdr.size
    data_off = note_off + len(notes)
    strtab_off = data_off + PAGE_SIZE * sum(len(r[1]) for r in runs)
    ident = ELF_MAGIC + bytes([cls.klass, ELFDATA2LSB, EV_CURRENT]) + bytes(9)
    out.write(ehdr.pack(ident, ET_CORE, machine, EV_CURRENT, 0, phoff, shoff, 0, ehdr.size,
                        phdr.size, min(phnum, PN_XNUM), shdr.size, 2, 1))
    out.write(shdr.pack(0, 0, 0, 0, 0, 0, 0, phnum if phnum >= PN_XNUM else 0, 0, 0))
    out.write(shdr.pack(1, SHT_STRTAB, 0, 0, strtab_off, len(SHSTRTAB), 0, 0, 0, 0))
    out.write(cls.pack_phdr(PT_NOTE, 0, note_off, 0, 0, len(notes), len(notes), 0))
    off = data_off
    for pfn, frames in runs:
        size = PAGE_SIZE * len(frames)
        out.write(cls.pack_phdr(PT_LOAD, 0, off, pfn << PAGE_SHIFT, pfn << PAGE_SHIFT, size, size, 0))
        off += size
    out.write(notes)
    for _pfn, frames in runs:
        for f in frames:
            out.write(f)
    out.write(SHSTRTAB)


def elf_class_for(runs: list[tuple[int, list[Buffer]]], machine: str) -> ElfClass:
    """QEMU's ``cpu_get_dump_info``: x86-64 cores are ELFCLASS64; an i386 core is ELFCLASS32 unless a block
    ends above 0xFFFFFFFF. ELF32 offsets are 32-bit, so a file that would not fit is written as ELF64."""
    if machine != "i386":
        return ELF64
    top = max(((pfn + len(f)) << PAGE_SHIFT for pfn, f in runs), default=0)
    size = sum(PAGE_SIZE * len(f) for _p, f in runs)
    return ELF32 if top <= 0xFFFF_FFFF and size < 0xF000_0000 else ELF64


def write_qemu_core(path: str | os.PathLike[str], frames: Iterable[tuple[int, Buffer]], cpus: list[CpuState], *,
                    absent_zero: bool = False, machine: str = "x86_64") -> None:
    """Write ``frames`` (``(pfn, 4096 bytes)``, any order, no duplicates) and ``cpus`` as a QEMU core;
    ``absent_zero`` marks it complete (memory it lacks reads as zeros: see the module docstring);
    ``machine`` is "x86_64" (a guest in long mode) or "i386" (one that is not).

    Raises ``ValueError`` for a bad frame, ``safe_write.WriteError`` for a target that must not be
    written or an I/O error (a full disk); either way nothing is left at ``path`` or beside it.
    """
    if machine not in ("x86_64", "i386"):
        raise ValueError(f"machine {machine!r}: x86_64 or i386")
    runs = _runs(frames)
    notes = build_notes(cpus, absent_zero=absent_zero, machine=machine)
    cls, em = elf_class_for(runs, machine), EM_386 if machine == "i386" else EM_X86_64
    gz = os.fspath(path).endswith(".gz")

    def produce(raw: BinaryIO) -> None:
        if gz:
            # mtime=0 and no file name keep the output byte-identical for identical input.
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as g:
                _write(g, runs, notes, cls, em)  # type: ignore[arg-type]
        else:
            _write(raw, runs, notes, cls, em)

    write_atomically(path, produce, "core")
