"""``earlymm boot --trace-writes [--trace-writes-table NAME|PA] [--trace-writes-va START-END]``: the options,
the tracer they attach, and the section or JSON keys they add to the boot's report."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from earlymm.cli.common import UsageError

if TYPE_CHECKING:  # the tracer is loaded only when a boot asks for it (start-up cost of every boot)
    from earlymm.tools.tablewrites import Filter, WriteTracer


def add_trace_writes_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trace-writes", action="store_true",
                   help="list every page-table store: the kernel function, the table (name, physical address, "
                        "level and how the level is known), the index, the old and new entry decoded and the VA "
                        "range the entry maps; consecutive entries in step are one line with a count (--json: "
                        "'table_writes')")
    p.add_argument("--trace-writes-table", metavar="NAME|PA",
                   help="only stores into this table: a name (early_level4_pgt, level2_kernel_pgt, "
                        "early_dynamic_pgts[3], early_dynamic_pgts for every pool page, brk, swapper_pg_dir, "
                        "'Xen bootstrap' …) or the physical address of its page (implies --trace-writes)")
    p.add_argument("--trace-writes-va", metavar="START-END",
                   help="only entries that map part of [START, END), END exclusive (implies --trace-writes)")


@dataclass
class TraceWrites:
    """What ``--trace-writes`` asked for: which stores to show, and the tracer recording them."""

    filter: Filter
    tracer: WriteTracer

    def check(self) -> None:
        """After the boot: a filter that names a table this boot never had is bad input."""
        from earlymm.tools.tablewrites.report import check_filter

        why = check_filter(self.tracer, self.filter)
        if why is not None:
            raise UsageError(why)

    def text(self, report: str) -> str:
        from earlymm.tools.tablewrites import render_text

        return report + "\n" + "\n".join(render_text(self.tracer, self.filter))

    def add_json(self, doc: dict[str, Any]) -> None:
        from earlymm.tools.tablewrites import to_json

        doc["table_writes"], doc["table_writes_stats"] = to_json(self.tracer, self.filter)


def trace_writes(args: argparse.Namespace, arch: str) -> TraceWrites | None:
    """The tracer the options ask for (None: the boot runs untouched); ``arch``: x86-64, xen-pv or i386."""
    table, va = args.trace_writes_table, args.trace_writes_va
    if not (args.trace_writes or table is not None or va is not None):
        return None
    from earlymm.tools.tablewrites import WriteTracer, parse_filter

    try:
        return TraceWrites(parse_filter(table, va, arch), WriteTracer())
    except ValueError as e:
        raise UsageError(str(e)) from None
