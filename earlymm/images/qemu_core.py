"""Reader for QEMU ``dump-guest-memory`` ELF cores (``paging=false``, ``format=elf``).

Layout QEMU writes for a 64-bit guest: an ELF64 ``ET_CORE``/``EM_X86_64`` header, one ``PT_NOTE`` with
per CPU an ``NT_PRSTATUS`` note and a ``QEMU`` note (``QEMUCPUState``), then one ``PT_LOAD`` per guest
RAM block whose ``p_paddr`` is the guest-physical address (``p_vaddr``, equal here, is ignored). When
there are 65535 or more program headers, ``e_phnum`` is ``PN_XNUM`` and section header 0's ``sh_info``
holds the real count. For a guest not in long mode (a 32-bit kernel) QEMU writes ``EM_386`` with the
i386 ``NT_PRSTATUS`` and the same ``QEMU`` note, in an ELFCLASS32 container — or an ELFCLASS64 one when
any memory block ends above 4 GiB (``cpu_get_dump_info``, target/i386/arch_dump.c), which on a PC is
always the case: its BIOS ROM block ends at 4 GiB. Both containers are read. Bytes past ``p_filesz``
were not dumped, so they are a hole, not zeros — unless the core carries earlymm's ``EARLYMM`` note
saying absent memory reads as zeros (``core_writer``), which sets ``absent_zero`` on the image.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Literal

from earlymm.images.base import Blob, FileSegment, ImageError, SegmentImage
from earlymm.images.cpustate import CpuState, parse_qemu_cpustate
from earlymm.images.inflate import DEFAULT_MAX_INFLATED

if TYPE_CHECKING:
    from pathlib import Path

ELF_MAGIC = b"\x7fELF"
ELFCLASS32 = 1
ELFCLASS64 = 2
ELFDATA2LSB = 1
ET_CORE = 4
EM_386 = 3
EM_X86_64 = 62
PT_LOAD = 1
PT_NOTE = 4
NT_PRSTATUS = 1
PN_XNUM = 0xFFFF
EARLYMM_NOTE_NAME = b"EARLYMM"
NT_EARLYMM_MEMORY = 1
EARLYMM_NOTE = struct.Struct("<II")  # version, flags
ABSENT_READS_ZERO = 1 << 0

EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
PHDR = struct.Struct("<IIQQQQQQ")
SHDR = struct.Struct("<IIQQQQIIQQ")
EHDR32 = struct.Struct("<16sHHIIIIIHHHHHH")
PHDR32 = struct.Struct("<IIIIIIII")  # p_type, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_flags, p_align
SHDR32 = struct.Struct("<IIIIIIIIII")
NHDR = struct.Struct("<III")


@dataclass(frozen=True, slots=True)
class ElfClass:
    """The structures of one ELF class; ``phdr`` unpacks to ELF64's field order in both."""

    klass: int
    ehdr: struct.Struct
    phdr_struct: struct.Struct
    shdr: struct.Struct

    def phdr(self, data: bytes | memoryview, off: int) -> tuple[int, ...]:
        """(p_type, p_flags, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_align)."""
        f = self.phdr_struct.unpack_from(data, off)
        return f if self.klass == ELFCLASS64 else (f[0], f[6], f[1], f[2], f[3], f[4], f[5], f[7])

    def pack_phdr(self, p_type: int, p_flags: int, off: int, vaddr: int, paddr: int, filesz: int, memsz: int,
                  align: int) -> bytes:
        if self.klass == ELFCLASS64:
            return self.phdr_struct.pack(p_type, p_flags, off, vaddr, paddr, filesz, memsz, align)
        return self.phdr_struct.pack(p_type, off, vaddr, paddr, filesz, memsz, p_flags, align)


ELF64 = ElfClass(ELFCLASS64, EHDR, PHDR, SHDR)
ELF32 = ElfClass(ELFCLASS32, EHDR32, PHDR32, SHDR32)

_ET_NAMES = MappingProxyType({0: "ET_NONE", 1: "ET_REL", 2: "ET_EXEC", 3: "ET_DYN", 4: "ET_CORE"})
_EM_NAMES = MappingProxyType({3: "EM_386", 40: "EM_ARM", 62: "EM_X86_64", 183: "EM_AARCH64", 243: "EM_RISCV"})

ImageKind = Literal["auto", "core", "raw"]


def _align4(n: int) -> int:
    return (n + 3) & ~3


class QemuCore(SegmentImage):
    kind = "qemu-core"
    machine = EM_X86_64  # e_machine: EM_386 for a guest that was not in long mode


def iter_notes(data: memoryview, where: str) -> Iterator[tuple[bytes, int, memoryview]]:
    """Yield ``(name, type, desc)`` for each note in a PT_NOTE payload."""
    pos = 0
    while pos + NHDR.size <= len(data):
        namesz, descsz, ntype = NHDR.unpack_from(data, pos)
        name_at = pos + NHDR.size
        desc_at = name_at + _align4(namesz)
        nxt = desc_at + _align4(descsz)
        if desc_at + descsz > len(data):
            raise ImageError(f"{where}: note at offset {pos} runs past the end of its PT_NOTE segment")
        yield bytes(data[name_at:name_at + namesz]).rstrip(b"\0"), ntype, data[desc_at:desc_at + descsz]
        pos = nxt


def elf_class(view: bytes | memoryview) -> ElfClass | None:
    """The class of an ELF image by ``EI_CLASS`` (None for an unknown class)."""
    return {ELFCLASS64: ELF64, ELFCLASS32: ELF32}.get(view[4] if len(view) > 4 else 0)


def _header(blob: Blob) -> tuple[ElfClass, int, int, int, int]:
    """Validate the ELF header; return (class, e_phoff, e_phnum, e_phentsize, e_machine)."""
    p, v = blob.path, blob.view
    if bytes(v[:4]) != ELF_MAGIC:
        raise ImageError(f"{p}: not an ELF file (bad magic {bytes(v[:4])!r})")
    cls = elf_class(v)
    if cls is None:
        raise ImageError(f"{p}: ELF class {v[4] if len(v) > 4 else '?'} is neither ELFCLASS64 nor ELFCLASS32")
    ehdr = cls.ehdr
    if len(v) < ehdr.size:
        raise ImageError(f"{p}: truncated: ELF header needs {ehdr.size} bytes, file has {len(v)}")
    ident, e_type, e_machine, _ver, _entry, phoff, shoff, _fl, _ehs, phentsize, phnum, *_sh = ehdr.unpack_from(v, 0)
    if ident[5] != ELFDATA2LSB:
        raise ImageError(f"{p}: not a little-endian ELF (EI_DATA={ident[5]})")
    if e_machine not in (EM_X86_64, EM_386):
        name = _EM_NAMES.get(e_machine, "unknown")
        raise ImageError(f"{p}: wrong machine {e_machine} ({name}); need EM_X86_64 (62) or EM_386 (3)")
    if e_machine == EM_X86_64 and cls is not ELF64:
        raise ImageError(f"{p}: an EM_X86_64 core in ELFCLASS32: QEMU writes x86-64 cores as ELFCLASS64")
    if e_type != ET_CORE:
        raise ImageError(f"{p}: not a core file: e_type is {_ET_NAMES.get(e_type, e_type)}, need ET_CORE")
    if phentsize != cls.phdr_struct.size:
        raise ImageError(f"{p}: e_phentsize is {phentsize}, expected {cls.phdr_struct.size}")
    if phnum == PN_XNUM:
        if shoff == 0:
            raise ImageError(f"{p}: e_phnum is PN_XNUM but there is no section header 0")
        if shoff + cls.shdr.size > len(v):
            raise ImageError(f"{p}: truncated: section header 0 at {shoff:#x} beyond end of file")
        phnum = cls.shdr.unpack_from(v, shoff)[7]
    if phoff + phnum * phentsize > len(v):
        raise ImageError(f"{p}: truncated: {phnum} program headers at {phoff:#x} run past end of file "
                         f"({len(v)} bytes)")
    return cls, phoff, phnum, phentsize, e_machine


def absent_zero_note(desc: bytes | memoryview) -> bool:
    """True if an ``EARLYMM`` memory note's descriptor says absent memory reads as zeros."""
    if len(desc) < EARLYMM_NOTE.size:
        return False
    version, flags = EARLYMM_NOTE.unpack_from(desc, 0)
    return version >= 1 and bool(flags & ABSENT_READS_ZERO)


def parse_core(blob: Blob) -> QemuCore:
    p, v = blob.path, blob.view
    cls, phoff, phnum, phentsize, machine = _header(blob)
    segments: list[FileSegment] = []
    cpus: list[CpuState] = []
    absent_zero = False
    for i in range(phnum):
        p_type, _fl, off, _va, paddr, filesz, _memsz, _al = cls.phdr(v, phoff + i * phentsize)
        if p_type not in (PT_LOAD, PT_NOTE):
            continue
        if off + filesz > len(v):
            kind = "PT_LOAD" if p_type == PT_LOAD else "PT_NOTE"
            raise ImageError(f"{p}: truncated: {kind} #{i} [{off:#x}, {off + filesz:#x}) lies beyond "
                             f"end of file ({len(v):#x} bytes)")
        if p_type == PT_LOAD:
            segments.append(FileSegment(paddr, filesz, off))
            continue
        for name, ntype, desc in iter_notes(v[off:off + filesz], p):
            if name == b"QEMU" and ntype == 0:
                try:
                    cpus.append(parse_qemu_cpustate(desc))
                except ValueError as e:
                    raise ImageError(f"{p}: CPU {len(cpus)}: {e}") from e
            elif name == EARLYMM_NOTE_NAME and ntype == NT_EARLYMM_MEMORY:
                absent_zero = absent_zero_note(desc)
    if not segments:
        raise ImageError(f"{p}: no PT_LOAD segments: the core holds no memory")
    core = QemuCore(blob, segments, cpus)
    core.absent_zero = absent_zero
    core.machine = machine
    return core


class RawImage(SegmentImage):
    """A flat dump: file offset = physical address, from 0. No CPU state."""

    kind = "raw"


def _raw(blob: Blob) -> RawImage:
    return RawImage(blob, [FileSegment(0, len(blob), 0)], [])


def open_qemu_core(path: str | Path) -> QemuCore:
    return open_image(path, kind="core")  # type: ignore[return-value]


def open_raw_image(path: str | Path) -> RawImage:
    return open_image(path, kind="raw")  # type: ignore[return-value]


def open_image(path: str | Path, kind: ImageKind = "auto", *, max_inflated: int = DEFAULT_MAX_INFLATED
               ) -> SegmentImage:
    """Open a QEMU core or a raw image (``.gz`` of either is inflated into a sparse temporary file, at
    most ``max_inflated`` bytes).

    ``kind="auto"`` picks the core reader when the (decompressed) file starts with the ELF magic.
    Raises ``ImageError`` on anything unreadable.
    """
    blob = Blob(path, max_inflated=max_inflated)
    try:
        if kind == "core" or (kind == "auto" and bytes(blob.view[:4]) == ELF_MAGIC):
            return parse_core(blob)
        if kind in ("auto", "raw"):
            return _raw(blob)
        raise ImageError(f"{path}: unknown image kind {kind!r}")
    except BaseException:
        blob.close()
        raise
