"""Symbol labels added to what ptdump (CLI or gdb) renders, without touching the renderers.

Each format keeps its lines and gains a label after them where the line's first address has one: Linux's
``page_tables`` lines and ``info mem`` runs by their start, ``info tlb`` lines by their VA, audit findings
by their start; JSON runs get ``"va_symbol"`` (and ``"pa_symbol"`` for a physical address inside the kernel
image) right after their ``"pa"``. Lines without a label are left byte for byte as they were.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

from earlymm.tools.symbols.kaslr import Symbolizer

LINE_STARTS: dict[str, re.Pattern[str]] = {
    "linux": re.compile(r"^0x([0-9a-f]{16})-0x[0-9a-f]{16} "),
    "qemu-tlb": re.compile(r"^([0-9a-f]{16}): [0-9a-f]{16} "),
    "qemu-mem": re.compile(r"^([0-9a-f]{16})-[0-9a-f]{16} "),
    "audit": re.compile(r"^[\w+-]+: 0x([0-9a-f]{16})-0x[0-9a-f]{16} "),
}
JSON_RUN = re.compile(r'\{"va": "(0x[0-9a-f]+)", "pa": "(0x[0-9a-f]+)", ')


def _label_lines(text: str, start: re.Pattern[str], label: Callable[[int], str | None]) -> str:
    out = []
    for line in text.split("\n"):
        m = start.match(line)
        name = label(int(m[1], 16)) if m else None
        if name is not None:
            cr = "\r" if line.endswith("\r") else ""
            line = f"{line.removesuffix(cr)}  <{name}>{cr}"
        out.append(line)
    return "\n".join(out)


def _label_json(text: str, sym: Symbolizer) -> str:
    def sub(m: re.Match[str]) -> str:
        va, pa = int(m[1], 16), int(m[2], 16)
        extra = ""
        vl, pl = sym.va_label(va), sym.pa_label(pa)
        if vl is not None:
            extra += f'"va_symbol": {json.dumps(vl)}, '
        if pl is not None:
            extra += f'"pa_symbol": {json.dumps(pl)}, '
        return m[0] + extra

    return JSON_RUN.sub(sub, text)


def annotate(parts: list[str], fmt: str, sym: Symbolizer) -> list[str]:
    """``parts`` (as ``render`` produced them for ``fmt``, or "audit") with labels added."""
    if fmt == "json":
        return [_label_json(p, sym) for p in parts]
    start = LINE_STARTS[fmt]
    return [_label_lines(p, start, sym.va_label) for p in parts]
