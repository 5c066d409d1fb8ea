"""``translate --batch FILE``: JSON Lines of accesses, read strictly.

One object per line with ``va`` (a JSON integer, or a string ``"0x…"`` — or, with ``--symbols``, a symbol
``"init_top_pgt"`` / ``"idt_table+0x10"``), and optionally ``access``
(``"read"``, ``"write"``, ``"exec"``), ``cpl`` (the integer 0 or 3) and ``ac`` (``true``/``false``). Anything
else is an error naming the line: unknown or repeated keys, a boolean where a number belongs (or the
reverse), ``Infinity``/``NaN``, numbers with more than 20 digits, nesting Python's parser cannot take,
lines over 64 KiB. Blank lines are skipped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from earlymm.arch.addr import parse_int
from earlymm.hw.access import AccessKind

MAX_LINE = 1 << 16
KEYS = ("va", "access", "cpl", "ac")
Resolver = Callable[[str], "int | None"]  # a symbol reference as an address (translate --symbols)


class BatchError(ValueError):
    """One line: ``FILE:LINE: problem``."""


@dataclass(frozen=True, slots=True)
class Item:
    """One access; a field left out of the line is None (the command's default applies)."""

    va: int
    access: AccessKind | None = None
    cpl: int | None = None
    ac: bool | None = None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number earlymm accepts")


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > 20:
        raise ValueError(f"number {text[:24]}… is too large (at most 64 bits)")
    return int(text)


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"key {k!r} given twice")
        out[k] = v
    return out


def _kind(v: Any) -> str:
    from decimal import Decimal

    if isinstance(v, bool):
        return "a boolean"
    return {int: "an integer", Decimal: "a fractional number", str: "a string", list: "an array",
            dict: "an object", type(None): "null"}.get(type(v), type(v).__name__)


def parse_line(line: str, keys: tuple[str, ...] = KEYS, resolve: Resolver | None = None) -> Item:
    """One batch line as an ``Item``; raises ``ValueError`` saying what is wrong."""
    import json  # json and decimal only when a batch is read: a plain translation starts without them
    from decimal import Decimal

    try:
        obj = json.loads(line, parse_constant=_no_constant, parse_int=_bounded_int, parse_float=Decimal,
                         object_pairs_hook=_unique)
    except RecursionError:
        raise ValueError("nested too deeply (a batch line is one flat object)") from None
    if not isinstance(obj, dict):
        raise ValueError(f'each line must be a JSON object like {{"va": "0x1000"}}, not {_kind(obj)}')
    unknown = sorted(set(obj) - set(keys))
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(map(repr, unknown))} (allowed: {', '.join(keys)})")
    if "va" not in obj:
        raise ValueError('missing "va"')
    return Item(_va(obj["va"], resolve), _access(obj), _cpl(obj), _ac(obj))


def _va(v: Any, resolve: Resolver | None = None) -> int:
    if isinstance(v, str):
        named = resolve(v) if resolve is not None and v[:2].lower() != "0x" else None
        if named is not None:
            return named
        if not v[:2].lower() == "0x":
            raise ValueError(f'va {v!r}: a string va must be "0x" and hex digits (a decimal va is a JSON number)')
        return parse_int(v, what="va")
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f'va must be an integer or a "0x…" string, not {_kind(v)}')
    if not 0 <= v < 1 << 64:
        raise ValueError(f"va {v} is out of range (0 .. 2**64 - 1)")
    return v


def _access(obj: dict[str, Any]) -> AccessKind | None:
    if "access" not in obj:
        return None
    v = obj["access"]
    if not isinstance(v, str):
        raise ValueError(f'access must be a string ("read", "write" or "exec"), not {_kind(v)}')
    return AccessKind.parse(v)


def _cpl(obj: dict[str, Any]) -> int | None:
    if "cpl" not in obj:
        return None
    v = obj["cpl"]
    if isinstance(v, bool) or not isinstance(v, int) or v not in (0, 3):
        raise ValueError(f"cpl must be the integer 0 or 3, not {v!r}" if isinstance(v, int | str) and
                         not isinstance(v, bool) else f"cpl must be the integer 0 or 3, not {_kind(v)}")
    return v


def _ac(obj: dict[str, Any]) -> bool | None:
    if "ac" not in obj:
        return None
    v = obj["ac"]
    if not isinstance(v, bool):
        raise ValueError(f"ac must be true or false, not {_kind(v)}")
    return v


def read_batch(path: str, keys: tuple[str, ...] = KEYS, resolve: Resolver | None = None) -> list[Item]:
    """Every access in the file, in order. Raises ``BatchError`` (one line) on the first problem."""
    out: list[Item] = []
    try:
        with open(path, encoding="utf-8") as f:
            n = 0
            while line := f.readline(MAX_LINE + 1):
                n += 1
                if len(line) > MAX_LINE:
                    raise BatchError(f"{path}:{n}: line longer than {MAX_LINE} characters")
                if not line.strip():
                    continue
                try:
                    out.append(parse_line(line, keys, resolve))
                except ValueError as e:
                    raise BatchError(f"{path}:{n}: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise BatchError(f"cannot read batch file {path}: {getattr(e, 'strerror', None) or e}") from None
    if not out:
        raise BatchError(f"{path}: no accesses in the batch file")
    return out
