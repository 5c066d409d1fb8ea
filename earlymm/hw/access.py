"""What an access is: address, kind, privilege (spec §1.4)."""

from __future__ import annotations

import enum


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
