"""``earlymm boot --trace-writes``: every page-table store of a boot — who, which table, which entry, the
old and new values decoded — captured where stores reach simulated memory, folded into runs."""

from earlymm.tools.tablewrites.capture import WriteTracer
from earlymm.tools.tablewrites.report import Filter, parse_filter, render_text, to_json

__all__ = ["Filter", "WriteTracer", "parse_filter", "render_text", "to_json"]
