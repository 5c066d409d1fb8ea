"""A Linux kernel as a Xen PV domain builder reads it: a bzImage (its compressed payload inflated to the
vmlinux ELF) or a vmlinux, with its loadable segments and Xen's ELF notes.

Model of what Xen 4.17 reads (xen/arch/x86/bzimage.c ``bzimage_parse``/``bzimage_headroom``,
xen/common/libelf/libelf-dominfo.c ``elf_xen_parse``, ``elf_xen_addr_calc_check``; the note numbers of
xen/include/public/elfnote.h; the setup header of Documentation/x86/boot.rst): the payload at
``(setup_sects + 1) * 512 + payload_offset``, ``payload_length`` bytes ending in the little-endian
decompressed size; ``pstart``/``pend`` the PT_LOAD physical range; ``virt_offset = virt_base -
paddr_offset`` (no PADDR_OFFSET note: 0 when the kernel has notes); the kernel's virtual range
``[pstart, pend) + virt_offset``.

Differences: gzip and xz payloads are inflated (Debian's kernels use xz; Xen also knows bzip2, lzma,
lzo, lz4 and zstd); the legacy ``__xen_guest`` section string is not read.
"""

from __future__ import annotations

import enum
import gzip
import io
import lzma
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

HDRS_MAGIC = b"HdrS"
ELF_MAGIC = b"\x7fELF"
MAX_KERNEL = 1 << 30  # bytes of inflated kernel: more is not a kernel


class KernelImageError(ValueError):
    """The file is not a kernel a PV domain builder can load (one line, no path)."""


class XenNote(enum.IntEnum):
    """``XEN_ELFNOTE_*`` (public/elfnote.h)."""

    INFO = 0
    ENTRY = 1
    HYPERCALL_PAGE = 2
    VIRT_BASE = 3
    PADDR_OFFSET = 4
    XEN_VERSION = 5
    GUEST_OS = 6
    GUEST_VERSION = 7
    LOADER = 8
    PAE_MODE = 9
    FEATURES = 10
    BSD_SYMTAB = 11
    HV_START_LOW = 12
    L1_MFN_VALID = 13
    SUSPEND_CANCEL = 14
    INIT_P2M = 15
    MOD_START_PFN = 16
    SUPPORTED_FEATURES = 17
    PHYS32_ENTRY = 18


STRING_NOTES = {XenNote.INFO, XenNote.XEN_VERSION, XenNote.GUEST_OS, XenNote.GUEST_VERSION, XenNote.LOADER,
                XenNote.PAE_MODE, XenNote.FEATURES, XenNote.BSD_SYMTAB}


@dataclass(frozen=True, slots=True)
class LoadSegment:
    vaddr: int
    paddr: int
    data: bytes  # p_filesz bytes
    memsz: int


@dataclass(frozen=True)
class PvKernelImage:
    """The facts a PV builder takes from a kernel image."""

    elf_class: int  # 32 or 64
    machine: int  # e_machine
    segments: tuple[LoadSegment, ...]
    notes: dict[int, bytes | int] = field(default_factory=dict)  # XenNote → string or number
    bzimage: bool = False
    file_size: int = 0  # bytes of the file as given (the multiboot module's length)
    payload_length: int = 0  # bzImage: the compressed payload's length
    output_length: int = 0  # bzImage: the inflated size the payload's last 4 bytes give
    payload_gzip: bool = False

    def note(self, n: XenNote) -> bytes | int | None:
        return self.notes.get(int(n))

    def note_int(self, n: XenNote, default: int | None = None) -> int | None:
        v = self.notes.get(int(n))
        return v if isinstance(v, int) else default

    def note_str(self, n: XenNote) -> str:
        v = self.notes.get(int(n))
        return v.decode("latin-1") if isinstance(v, bytes) else ""

    @property
    def pstart(self) -> int:
        return min(s.paddr for s in self.segments)

    @property
    def pend(self) -> int:
        return max(s.paddr + s.memsz for s in self.segments)

    @property
    def virt_base(self) -> int:
        vb = self.note_int(XenNote.VIRT_BASE)
        if vb is None:
            raise KernelImageError("no XEN_ELFNOTE_VIRT_BASE: not a Xen PV kernel")
        return vb

    @property
    def virt_offset(self) -> int:
        """``virt_base - elf_paddr_offset`` (a kernel with notes and no PADDR_OFFSET: offset 0)."""
        return (self.virt_base - self.note_int(XenNote.PADDR_OFFSET, 0)) & ((1 << 64) - 1)  # type: ignore[operator]

    @property
    def virt_kstart(self) -> int:
        return (self.pstart + self.virt_offset) & ((1 << 64) - 1)

    @property
    def virt_kend(self) -> int:
        return (self.pend + self.virt_offset) & ((1 << 64) - 1)

    @property
    def virt_entry(self) -> int:
        e = self.note_int(XenNote.ENTRY)
        if e is None:
            raise KernelImageError("no XEN_ELFNOTE_ENTRY")
        return e

    @property
    def p2m_base(self) -> int | None:
        """XEN_ELFNOTE_INIT_P2M: where the builder maps the p2m list outside the initial region."""
        return self.note_int(XenNote.INIT_P2M)

    @property
    def unmapped_initrd(self) -> bool:
        """XEN_ELFNOTE_MOD_START_PFN = 1: the initrd is handed over by pfn, not mapped."""
        return bool(self.note_int(XenNote.MOD_START_PFN, 0))

    @property
    def pae(self) -> bool:
        return self.note_str(XenNote.PAE_MODE).rstrip("\0") in ("yes", "yes[extended-cr3]", "bimodal")

    @property
    def headroom(self) -> int:
        """``bzimage_headroom``: room Xen's module relocation leaves in front of the image to inflate it in
        place (0 for an ELF)."""
        if not self.bzimage:
            return 0
        room = self.output_length
        if self.payload_gzip:
            room += (room >> 12) + 32768 + 18
        else:
            room += self.payload_length
        return (room + 4095) & ~4095

    def describe(self) -> str:
        """The tail of Xen's ``Dom0 kernel:`` line."""
        return (f"{self.elf_class}-bit{', PAE' if self.pae else ''}, lsb, paddr {self.pstart:#x} -> "
                f"{self.pend:#x}")


def _inflate(payload: bytes) -> tuple[bytes, bool]:
    if payload[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(payload), True
        except (OSError, EOFError, zlib.error) as e:
            raise KernelImageError(f"the gzip payload does not inflate: {e}") from None
    if payload[:6] == b"\xfd7zXZ\x00":
        dec = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
        try:
            out = dec.decompress(payload, MAX_KERNEL + 1)
        except lzma.LZMAError as e:
            raise KernelImageError(f"the xz payload does not inflate: {e}") from None
        if len(out) > MAX_KERNEL:
            raise KernelImageError("the payload inflates past 1 GiB")
        return out, False
    raise KernelImageError(f"payload compression {payload[:6].hex()} is not gzip or xz")


def _notes(data: bytes) -> dict[int, bytes | int]:
    """Xen's notes (name "Xen") in a PT_NOTE segment: 4-byte aligned name and descriptor."""
    out: dict[int, bytes | int] = {}
    pos = 0
    while pos + 12 <= len(data):
        namesz, descsz, ntype = struct.unpack_from("<III", data, pos)
        name_at = pos + 12
        desc_at = name_at + ((namesz + 3) & ~3)
        end = desc_at + ((descsz + 3) & ~3)
        if end > len(data):
            break
        name = data[name_at:name_at + namesz].rstrip(b"\0")
        desc = data[desc_at:desc_at + descsz]
        if name == b"Xen":
            if ntype in STRING_NOTES:
                out[ntype] = desc.split(b"\0", 1)[0]
            elif descsz in (1, 2, 4, 8):
                out[ntype] = int.from_bytes(desc, "little")
            else:
                out[ntype] = desc
        pos = end
    return out


def parse_elf(raw: bytes) -> tuple[int, int, tuple[LoadSegment, ...], dict[int, bytes | int]]:
    try:
        elf = ELFFile(io.BytesIO(raw))
        segs, notes = [], {}
        for s in elf.iter_segments():
            if s["p_type"] == "PT_LOAD":
                segs.append(LoadSegment(s["p_vaddr"], s["p_paddr"], s.data(), s["p_memsz"]))
            elif s["p_type"] == "PT_NOTE":
                notes.update(_notes(s.data()))
        return elf.elfclass, {"EM_X86_64": 62, "EM_386": 3}.get(elf["e_machine"], 0), tuple(segs), notes
    except (ELFError, struct.error, ValueError) as e:
        raise KernelImageError(f"not a readable ELF: {e}") from None


def read_pv_kernel(raw: bytes) -> PvKernelImage:
    """A bzImage or a vmlinux ELF from its bytes."""
    if raw[:4] == ELF_MAGIC:
        cls, mach, segs, notes = parse_elf(raw)
        img = PvKernelImage(cls, mach, segs, notes, False, len(raw))
    elif len(raw) > 0x250 and raw[0x202:0x206] == HDRS_MAGIC:
        setup_sects = raw[0x1F1] or 4
        version = struct.unpack_from("<H", raw, 0x206)[0]
        if version < 0x208:
            raise KernelImageError(f"boot protocol {version >> 8}.{version & 0xFF} has no payload fields (2.08+)")
        off, length = struct.unpack_from("<II", raw, 0x248)
        start = (setup_sects + 1) * 512 + off
        if length < 4 or start + length > len(raw):
            raise KernelImageError("the bzImage payload lies outside the file")
        payload = raw[start:start + length]
        out_len = struct.unpack_from("<I", payload, length - 4)[0]
        elf, is_gz = _inflate(payload)
        if elf[:4] != ELF_MAGIC:
            raise KernelImageError("the bzImage payload is not an ELF")
        cls, mach, segs, notes = parse_elf(elf)
        img = PvKernelImage(cls, mach, segs, notes, True, len(raw), length, out_len, is_gz)
    else:
        raise KernelImageError("neither a bzImage (no HdrS) nor an ELF")
    if not img.segments:
        raise KernelImageError("the ELF has no PT_LOAD segment")
    if XenNote.VIRT_BASE not in img.notes or XenNote.ENTRY not in img.notes:
        raise KernelImageError("no Xen ELF notes (XEN_ELFNOTE_VIRT_BASE, _ENTRY): a kernel without CONFIG_XEN_PV")
    return img


def load_pv_kernel(path: str | Path) -> PvKernelImage:
    try:
        p = Path(path)
        if not p.is_file():
            raise KernelImageError("not a regular file")
        if p.stat().st_size > MAX_KERNEL:
            raise KernelImageError("larger than 1 GiB: not a kernel")
        raw = p.read_bytes()
    except OSError as e:
        raise KernelImageError(e.strerror or str(e)) from None
    return read_pv_kernel(raw)
