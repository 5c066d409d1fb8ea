"""A writer for the cpio "newc" format the Linux kernel unpacks as an initramfs.

Writing the archive ourselves means device nodes (``/dev/console``) can be included without root and
without an external ``cpio`` binary. Format: per entry a 110-byte ASCII header (``070701`` and 13
8-digit hex fields), the NUL-terminated name padded to 4 bytes (counting the header), then the data
padded to 4 bytes; a ``TRAILER!!!`` entry ends the archive.
"""

from __future__ import annotations

import gzip
import stat
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CpioEntry:
    name: str  # without a leading "/"
    mode: int  # file type and permission bits, as in st_mode
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)  # (major, minor) for device nodes

    @staticmethod
    def directory(name: str) -> CpioEntry:
        return CpioEntry(name, stat.S_IFDIR | 0o755)

    @staticmethod
    def file(name: str, data: bytes, perm: int = 0o644) -> CpioEntry:
        return CpioEntry(name, stat.S_IFREG | perm, data)

    @staticmethod
    def symlink(name: str, target: str) -> CpioEntry:
        return CpioEntry(name, stat.S_IFLNK | 0o777, target.encode())

    @staticmethod
    def chardev(name: str, major: int, minor: int, perm: int = 0o600) -> CpioEntry:
        return CpioEntry(name, stat.S_IFCHR | perm, b"", (major, minor))


def _pad4(n: int) -> bytes:
    return b"\0" * (-n % 4)


def _header(ino: int, e: CpioEntry, namesize: int) -> bytes:
    fields = (ino, e.mode, 0, 0, 2 if stat.S_ISDIR(e.mode) else 1, 0, len(e.data),
              0, 0, e.rdev[0], e.rdev[1], namesize, 0)
    return b"070701" + b"".join(b"%08X" % f for f in fields)


def newc_archive(entries: list[CpioEntry]) -> bytes:
    out = bytearray()
    trailer = CpioEntry("TRAILER!!!", 0)
    for ino, e in enumerate([*entries, trailer], start=1):
        name = e.name.lstrip("/").encode() + b"\0"
        out += _header(0 if e is trailer else ino, e, len(name)) + name
        out += _pad4(len(out))
        out += e.data + _pad4(len(e.data))
    return bytes(out)


def gzip_newc(entries: list[CpioEntry]) -> bytes:
    return gzip.compress(newc_archive(entries), compresslevel=6, mtime=0)
