"""What an access is: address, kind, privilege (spec §1.4)."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class AccessKind(enum.IntEnum):
    READ = 0
    WRITE = 1
    FETCH = 2

    @classmethod
    def parse(cls, text: str) -> AccessKind:
        t = text.strip().lower()
        aliases = {"read": cls.READ, "r": cls.READ, "write": cls.WRITE, "w": cls.WRITE,
                   "exec": cls.FETCH, "x": cls.FETCH, "fetch": cls.FETCH, "execute": cls.FETCH}
        if t not in aliases:
            raise ValueError(f"unknown access kind {text!r} (read, write or exec)")
        return aliases[t]

    @property
    def word(self) -> str:
        return ("read", "write", "exec")[self]


@dataclass(frozen=True, slots=True)
class Access:
    """One linear-address access.

    ``user`` is an explicit CPL-3 access. ``implicit`` marks a supervisor access the CPU makes on its
    own (IDT/GDT/TSS reads, exception frames): supervisor even at CPL 3, and SMAP ignores AC for it.
    """

    va: int
    kind: AccessKind = AccessKind.READ
    user: bool = False
    implicit: bool = False
    ac: bool = False
    size: int = 1
