"""Reader for QEMU ``dump-guest-memory`` ELF cores (``paging=false``, ``format=elf``).

Layout QEMU writes for a 64-bit guest: an ELF64 ``ET_CORE``/``EM_X86_64`` header, one ``PT_NOTE`` with
per CPU an ``NT_PRSTATUS`` note and a ``QEMU`` note (``QEMUCPUState``), then one ``PT_LOAD`` per guest
RAM block whose ``p_paddr`` is the guest-physical address (``p_vaddr``, equal here, is ignored). When
there are 65535 or more program headers, ``e_phnum`` is ``PN_XNUM`` and section header 0's ``sh_info``
holds the real count. Bytes past ``p_filesz`` were not dumped, so they are a hole, not zeros.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from types import MappingProxyType
from typing import TYPE_CHECKING, Literal

from earlymm.images.base import Blob, FileSegment, ImageError, SegmentImage
from earlymm.images.cpustate import CpuState, parse_qemu_cpustate

if TYPE_CHECKING:
    from pathlib import Path

ELF_MAGIC = b"\x7fELF"
ELFCLASS64 = 2
ELFDATA2LSB = 1
ET_CORE = 4
EM_X86_64 = 62
PT_LOAD = 1
PT_NOTE = 4
NT_PRSTATUS = 1
PN_XNUM = 0xFFFF

EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
PHDR = struct.Struct("<IIQQQQQQ")
SHDR = struct.Struct("<IIQQQQIIQQ")
NHDR = struct.Struct("<III")

_ET_NAMES = MappingProxyType({0: "ET_NONE", 1: "ET_REL", 2: "ET_EXEC", 3: "ET_DYN", 4: "ET_CORE"})
_EM_NAMES = MappingProxyType({3: "EM_386", 40: "EM_ARM", 62: "EM_X86_64", 183: "EM_AARCH64", 243: "EM_RISCV"})

ImageKind = Literal["auto", "core", "raw"]


def _align4(n: int) -> int:
    return (n + 3) & ~3


class QemuCore(SegmentImage):
    kind = "qemu-core"


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


def _header(blob: Blob) -> tuple[int, int, int]:
    """Validate the ELF header; return (e_phoff, e_phnum, e_phentsize)."""
    p, v = blob.path, blob.view
    if bytes(v[:4]) != ELF_MAGIC:
        raise ImageError(f"{p}: not an ELF file (bad magic {bytes(v[:4])!r})")
    if len(v) < EHDR.size:
        raise ImageError(f"{p}: truncated: ELF header needs {EHDR.size} bytes, file has {len(v)}")
    ident, e_type, e_machine, _ver, _entry, phoff, shoff, _fl, _ehs, phentsize, phnum, *_sh = \
        EHDR.unpack_from(v, 0)
    if ident[4] != ELFCLASS64:
        raise ImageError(f"{p}: ELF class {ident[4]} is not ELFCLASS64 (only 64-bit x86-64 cores are read)")
    if ident[5] != ELFDATA2LSB:
        raise ImageError(f"{p}: not a little-endian ELF (EI_DATA={ident[5]})")
    if e_machine != EM_X86_64:
        name = _EM_NAMES.get(e_machine, "unknown")
        raise ImageError(f"{p}: wrong machine {e_machine} ({name}); need EM_X86_64 (62)")
    if e_type != ET_CORE:
        raise ImageError(f"{p}: not a core file: e_type is {_ET_NAMES.get(e_type, e_type)}, need ET_CORE")
    if phentsize != PHDR.size:
        raise ImageError(f"{p}: e_phentsize is {phentsize}, expected {PHDR.size}")
    if phnum == PN_XNUM:
        if shoff == 0:
            raise ImageError(f"{p}: e_phnum is PN_XNUM but there is no section header 0")
        if shoff + SHDR.size > len(v):
            raise ImageError(f"{p}: truncated: section header 0 at {shoff:#x} beyond end of file")
        phnum = SHDR.unpack_from(v, shoff)[7]
    if phoff + phnum * PHDR.size > len(v):
        raise ImageError(f"{p}: truncated: {phnum} program headers at {phoff:#x} run past end of file "
                         f"({len(v)} bytes)")
    return phoff, phnum, phentsize


def parse_core(blob: Blob) -> QemuCore:
    p, v = blob.path, blob.view
    phoff, phnum, phentsize = _header(blob)
    segments: list[FileSegment] = []
    cpus: list[CpuState] = []
    for i in range(phnum):
        p_type, _fl, off, _va, paddr, filesz, _memsz, _al = PHDR.unpack_from(v, phoff + i * phentsize)
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
    if not segments:
        raise ImageError(f"{p}: no PT_LOAD segments: the core holds no memory")
    return QemuCore(blob, segments, cpus)


class RawImage(SegmentImage):
    """A flat dump: file offset = physical address, from 0. No CPU state."""

    kind = "raw"


def _raw(blob: Blob) -> RawImage:
    return RawImage(blob, [FileSegment(0, len(blob), 0)], [])


def open_qemu_core(path: str | Path) -> QemuCore:
    return open_image(path, kind="core")  # type: ignore[return-value]


def open_raw_image(path: str | Path) -> RawImage:
    return open_image(path, kind="raw")  # type: ignore[return-value]


def open_image(path: str | Path, kind: ImageKind = "auto") -> SegmentImage:
    """Open a QEMU core or a raw image (``.gz`` of either is decompressed into memory).

    ``kind="auto"`` picks the core reader when the (decompressed) file starts with the ELF magic.
    Raises ``ImageError`` on anything unreadable.
    """
    blob = Blob(path)
    try:
        if kind == "core" or (kind == "auto" and bytes(blob.view[:4]) == ELF_MAGIC):
            return parse_core(blob)
        if kind in ("auto", "raw"):
            return _raw(blob)
        raise ImageError(f"{path}: unknown image kind {kind!r}")
    except BaseException:
        blob.close()
        raise
