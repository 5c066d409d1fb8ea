"""A kernel's symbols — from ``/proc/kallsyms``, a ``System.map`` or a vmlinux ELF — by name and by address.

Both text formats are ``nm`` output: ``ADDRESS TYPE NAME`` per line, and kallsyms adds `` [MODULE]`` for
module symbols. Per-CPU variables are offsets into the per-CPU area, not addresses: kallsyms marks them
absolute (``A``), a ``System.map`` lists them as ordinary data at small values below the kernel half. Such
symbols are *absolute* here: they can be looked up by name, are never moved by a KASLR slide and never label
an address.

An address is labelled ``name+0xoff`` by the nearest labelling symbol at or below it, as long as it lies
inside that symbol when the file gives sizes (ELF), else before the next symbol and less than ``MAX_GAP``
past it — so the direct map or vmalloc space, far from any symbol, stays unlabelled. Where several symbols
share an address, a global one whose name does not start with ``_`` wins (``startup_64`` over ``_text``).
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass

from earlymm.arch.addr import parse_int

MAX_LINE = 4096
MAX_SYMBOLS = 10_000_000
MAX_GAP = 16 << 20  # a sizeless symbol labels at most this far past itself (and never past the next one)
KERNEL_HALF = 1 << 63
LINE_RE = re.compile(r"([0-9a-fA-F]{1,16})[ \t]+([A-Za-z?])[ \t]+(\S+)(?:[ \t]+\[(\S+)\])?")
MARKERS = ("EARLYMM_KALLSYMS_BEGIN", "EARLYMM_KALLSYMS_END")  # the mid-boot tool's cached kallsyms
NOT_DEFINED = frozenset("Uvw")  # undefined, weak undefined: no address


class SymbolError(ValueError):
    """A symbol file that cannot be read, or a name it does not define; the message is one line."""


@dataclass(frozen=True, slots=True)
class Symbol:
    name: str
    address: int  # as the file gives it (link address for System.map/vmlinux, runtime for kallsyms)
    kind: str  # nm's type letter: T t D d B b R r A W … (upper case: global)
    size: int = 0  # 0: unknown (text formats)
    module: str = ""  # kallsyms' [module]
    absolute: bool = False  # a per-CPU offset or ABS value: not an address

    @property
    def is_global(self) -> bool:
        return self.kind.isupper()


def _rank(s: Symbol) -> tuple[int, int]:
    """Which of several symbols at one address labels it (lower wins)."""
    return (0 if s.is_global else 1, 1 if s.name.startswith("_") else 0)


class SymbolTable:
    """Symbols by name and by address; addresses here are the file's own (no KASLR slide applied)."""

    def __init__(self, symbols: Iterable[Symbol], source: str, fmt: str) -> None:
        self.source = source
        self.format = fmt  # "kallsyms", "System.map" or "vmlinux"
        self.by_name: dict[str, list[Symbol]] = {}
        at: dict[int, Symbol] = {}
        for s in symbols:
            self.by_name.setdefault(s.name, []).append(s)
            if s.absolute or s.kind in NOT_DEFINED:
                continue
            best = at.get(s.address)
            if best is None or _rank(s) < _rank(best):
                at[s.address] = s
        if not self.by_name:
            raise SymbolError(f"{source}: no symbols")
        self._addrs = sorted(at)
        self._syms = [at[a] for a in self._addrs]

    def __len__(self) -> int:
        return sum(map(len, self.by_name.values()))

    def lookup(self, name: str) -> Symbol:
        """The one definition of ``name`` (a single global one wins over local ones of the same name)."""
        found = self.by_name.get(name)
        if not found:
            raise SymbolError(f"symbol {name!r} is not in {self.source}")
        distinct = {(s.address, s.module) for s in found}
        if len(distinct) == 1:
            return found[0]
        glob = [s for s in found if s.is_global and not s.module]
        if len(glob) == 1:
            return glob[0]
        shown = ", ".join(f"{s.address:#x}{' [' + s.module + ']' if s.module else ''}" for s in found[:4])
        raise SymbolError(f"symbol {name!r} is ambiguous in {self.source}: {len(found)} definitions ({shown}"
                          f"{', …' if len(found) > 4 else ''})")

    def get(self, name: str) -> Symbol | None:
        try:
            return self.lookup(name)
        except SymbolError:
            return None

    def nearest(self, address: int) -> tuple[Symbol, int] | None:
        """(symbol, offset) labelling ``address`` (in the file's own addresses), or None."""
        i = bisect_right(self._addrs, address) - 1
        if i < 0:
            return None
        s = self._syms[i]
        off = address - s.address
        if s.size:
            return (s, off) if off < s.size else None
        nxt = self._addrs[i + 1] if i + 1 < len(self._addrs) else None
        if off >= MAX_GAP or (nxt is not None and address >= nxt):
            return None
        return s, off


def label_text(s: Symbol, off: int) -> str:
    """``name``, ``name+0x18``, ``name+0x18 [module]``."""
    mod = f" [{s.module}]" if s.module else ""
    return f"{s.name}+{off:#x}{mod}" if off else f"{s.name}{mod}"


SYMBOL_REF_RE = re.compile(r"[A-Za-z_.][\w.$]*(?:\+\S+)?", re.ASCII)


def parse_symbol_ref(token: str) -> tuple[str, int] | None:
    """``name`` or ``name+OFFSET`` (offset 0x… or decimal) as (name, offset); None if ``token`` is not
    shaped like a symbol reference (a name starts with a letter, ``_`` or ``.``)."""
    t = token.strip()
    if not SYMBOL_REF_RE.fullmatch(t):
        return None
    name, plus, off = t.rpartition("+")
    if not plus or not name:
        return t, 0
    try:
        return name, parse_int(off, what="symbol offset")
    except ValueError:
        return t, 0  # a '+' inside the name itself


def read_text(path: str, text_lines: Iterable[str]) -> SymbolTable:
    """Parse kallsyms or System.map lines (``path`` names them in messages)."""
    syms: list[Symbol] = []
    modules = False
    for n, line in enumerate(text_lines, 1):
        if len(line) > MAX_LINE:
            raise SymbolError(f"{path}:{n}: line longer than {MAX_LINE} characters (not a symbol file)")
        t = line.strip()
        if not t or t in MARKERS:
            continue
        m = LINE_RE.fullmatch(t)
        if m is None:
            if "System.map is in" in t:
                raise SymbolError(f"{path}: a placeholder System.map without symbols ({t.split(' ', 2)[-1]})")
            shown = t if len(t) <= 60 else t[:57] + "…"
            raise SymbolError(f"{path}:{n}: not a kallsyms/System.map line: {shown!r} (want 'ADDRESS TYPE NAME')")
        if len(syms) >= MAX_SYMBOLS:
            raise SymbolError(f"{path}: more than {MAX_SYMBOLS} symbols")
        modules |= m[4] is not None
        syms.append(Symbol(m[3], int(m[1], 16), m[2], module=m[4] or ""))
    if not syms:
        raise SymbolError(f"{path}: no symbols")
    if all(s.address == 0 for s in syms):
        raise SymbolError(f"{path}: every address is zero: kptr_restrict hid them (read /proc/kallsyms as root "
                          "with sysctl kernel.kptr_restrict=0)")
    return SymbolTable(mark_absolute(syms), path, "kallsyms" if modules or _looks_like_kallsyms(syms)
                       else "System.map")


def _looks_like_kallsyms(syms: list[Symbol]) -> bool:
    # kallsyms marks per-CPU symbols 'A'; nm's System.map lists them as data ('D'/'d') at small values.
    return any(s.kind == "A" and s.name == "__per_cpu_start" for s in syms)


def mark_absolute(syms: list[Symbol]) -> list[Symbol]:
    """Mark ``A`` symbols, and in a 64-bit kernel's file every value below the kernel half, absolute."""
    kernel64 = any(s.address >= KERNEL_HALF for s in syms)
    out = []
    for s in syms:
        absolute = s.absolute or s.kind in "Aa" or (kernel64 and s.address < KERNEL_HALF)
        out.append(s if absolute == s.absolute else Symbol(s.name, s.address, s.kind, s.size, s.module, absolute))
    return out
