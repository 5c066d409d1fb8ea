"""One self-contained HTML file: the template, the style sheet and the scripts (package data files) and
the document as JSON, inlined. Nothing is fetched when the page opens: its Content-Security-Policy
forbids every network load, so a page that tried would show it as a console error (tested)."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any, BinaryIO

from earlymm.images.safe_write import write_atomically

SCRIPTS = ("core.js", "map.js", "tree.js", "timeline.js", "matrix.js", "app.js")


def _asset(name: str) -> str:
    return resources.files("earlymm.tools.html").joinpath("assets").joinpath(name).read_text(encoding="utf-8")


def _json_for_script(doc: dict[str, Any]) -> str:
    """JSON that cannot end its <script> element early, whatever strings it holds (paths, console text)."""
    text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026") \
        .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def render(doc: dict[str, Any]) -> str:
    # Substitute the data last: nothing inside it is ever taken for a placeholder.
    page = _asset("page.html").replace("{{TITLE}}", _escape(str(doc.get("title", "earlymm"))))
    page = page.replace("{{CSS}}", _asset("style.css"))
    page = page.replace("{{JS}}", "\n".join(_asset(n) for n in SCRIPTS))
    head, tail = page.split("{{DATA}}")
    return head + _json_for_script(doc) + tail


def write_html(path: str, doc: dict[str, Any]) -> int:
    """Write the page atomically through the safe writer (``WriteError`` on a refused target); its size."""
    data = render(doc).encode("utf-8")

    def produce(out: BinaryIO) -> None:
        out.write(data)

    write_atomically(path, produce, "HTML file")
    return len(data)
