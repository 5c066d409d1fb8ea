"""Self-contained HTML views: a zoomable address-space map, a page-table tree explorer, a boot timeline
with the tables at each event, and the boot matrix (``--html FILE``)."""

from __future__ import annotations

from earlymm.kernel.boot import BootResult
from earlymm.tools.html.documents import boot_document, ptdump_document
from earlymm.tools.html.page import write_html
from earlymm.tools.html.snapshots import BootRecorder
from earlymm.tools.ptdump.space import Space

__all__ = ["BootRecorder", "write_boot_html", "write_ptdump_html"]


def write_ptdump_html(path: str, spaces: list[Space], label: str, *, max_tables: int) -> int:
    """``ptdump --html``: the spaces of an image as one page; returns its size. Raises ``WriteError``."""
    return write_html(path, ptdump_document(spaces, label, max_tables=max_tables))


def write_boot_html(path: str, result: BootResult, recorder: BootRecorder) -> int:
    """``boot --html``: the run recorded by ``recorder`` as one page; returns its size. Raises ``WriteError``."""
    return write_html(path, boot_document(result, recorder))
