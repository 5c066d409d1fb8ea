"""``earlymm matrix [GRID OPTIONS] [--workers N] [--dask ADDRESS] [--json] [--html FILE]``: boot every
combination of the grid's values and group the outcomes by failure reason."""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import threading
import time
from typing import Any, NoReturn

from earlymm.cli import boot_cmd
from earlymm.cli.common import EXIT_CRASH, EXIT_OK, Parser, UsageError, parse_size
from earlymm.images import WriteError
from earlymm.images.safe_write import SYMLINK_POLICY, check_target, ensure_directory
from earlymm.tools.argtypes import int_range
from earlymm.tools.matrix import grid, report
from earlymm.tools.matrix.run import DaskUnavailable, Task, run_dask, run_local

MAX_CONFIGS = 1_000_000


def add_parser(sub: argparse._SubParsersAction[Parser]) -> None:
    p = sub.add_parser("matrix", help="boot every combination of a grid of machines and group the outcomes",
                       description="Boot every combination of the grid's values (each GRID OPTION takes a comma-"
                                   "separated list; an option left out keeps earlymm boot's default) and print the "
                                   "outcomes grouped by failure reason, with the smallest failing configuration of "
                                   "each group and the earlymm boot command that reproduces it.",
                       epilog="Exit status: 0 every configuration booted (or stopped at --until) with every invariant "
                              "holding; 1 some failed; 2 bad input.")
    g = p.add_argument_group("grid options (comma-separated values)")
    for axis in grid.AXES:
        g.add_argument(f"--{axis.name}", metavar="LIST",
                       help=axis.help + (f" (default {','.join(axis.default)})" if axis.default else ""))
    g.add_argument("--e820-dir", metavar="DIR", help="where the generated e820 maps of --holes flat/holey go")
    p.add_argument("--workers", type=int_range(1, 1024, "--workers"), default=os.cpu_count() or 1,
                   help="local worker processes (default: one per CPU)")
    p.add_argument("--dask", metavar="ADDRESS",
                   help="run on the Dask cluster whose scheduler is at ADDRESS (e.g. tcp://host:8786); its workers "
                        "need earlymm installed (pip install 'earlymm[matrix]')")
    p.add_argument("--json", action="store_true", help="print the grouped outcomes and every result as JSON")
    p.add_argument("--html", metavar="FILE", help="also write the outcomes as one self-contained HTML page "
                                                  f"(a new or regular file, replaced atomically; {SYMLINK_POLICY})")
    p.add_argument("--progress", action="store_true", help="show the progress bar even when stderr is not a terminal")
    p.set_defaults(func=main)


class _Refused(Exception):
    """earlymm boot's parser refused a value (the message it would have printed)."""


class _QuietParser(Parser):
    def error(self, message: str) -> NoReturn:
        raise _Refused(message)


def boot_parser() -> Parser:
    """``earlymm boot``'s own parser, raising ``_Refused`` instead of printing and exiting."""
    p = _QuietParser(prog="earlymm")
    boot_cmd.add_parser(p.add_subparsers(dest="command", parser_class=_QuietParser))
    return p


def run_batch(batch: list[Task]) -> list[dict[str, Any]]:
    """Run configurations exactly as ``earlymm boot ARGS`` would (its parser, its ``configure``), in this
    process; one record each. Bad input and crashes of the model are outcomes too, never exceptions."""
    parser = boot_parser()
    out = []
    # A boot makes many short-lived objects and few cycles: collecting once per batch, not every few
    # thousand allocations, saves a good part of a boot's time (the batch's garbage is a few MB).
    # Only on a process's main thread (local workers, the inline run): a Dask worker runs tasks on threads,
    # and the collector's switch is process-wide.
    own = threading.current_thread() is threading.main_thread() and gc.isenabled()
    if own:
        gc.disable()
    try:
        for index, argv in batch:
            out.append(_run_one(parser, index, argv))
    finally:
        if own:
            gc.enable()
            gc.collect()
    return out


def _run_one(parser: Parser, index: int, argv: list[str]) -> dict[str, Any]:
    from earlymm.kernel.boot import boot
    from earlymm.tools.boot_report import stats

    rec: dict[str, Any] = {"index": index, "argv": argv, "phase": "", "failed": [], "stats": {}, "ram": 0}
    cpu = time.process_time()
    try:
        args = parser.parse_args(["boot", *argv])
        machine, kernel, until = boot_cmd.configure(args)
        rec["ram"] = sum(r.end - r.start for r in machine.ram())
        result = boot(machine, kernel, until=until, trace=True, image_size=boot_cmd.image_size(args))
    except (UsageError, ValueError, _Refused) as e:
        rec.update(outcome="bad-input", reason=str(e))
    except Exception as e:  # a bug in the model: an outcome of its own, the rest of the grid still runs
        rec.update(outcome="internal-error", reason=f"{type(e).__name__}: {e}")
    else:
        s = stats(result)
        rec.update(outcome=result.outcome.value, phase=result.phase, reason=result.reason,
                   failed=[c.name for c in result.observer.final() if not c.ok],
                   stats={k: s[k] for k in ("page_faults", "pool_resets", "pool_high_water", "final_table_pages")
                          if k in s})
    rec["cpu"] = time.process_time() - cpu  # reported on stderr only: the JSON and the table stay deterministic
    return rec


def _list(text: str | None) -> list[str]:
    if text is None:
        return []
    vals = [v.strip() for v in text.split(",")]
    if not all(vals):
        raise UsageError(f"empty value in list {text!r}")
    return list(dict.fromkeys(vals))


def build_grid(args: argparse.Namespace) -> list[grid.Config]:
    values = {a.name: _list(getattr(args, a.name.replace("-", "_"))) for a in grid.AXES}
    for a in grid.AXES:
        bad = [v for v in values[a.name] if a.choices and v not in a.choices]
        if bad:
            raise UsageError(f"--{a.name} {bad[0]!r}: one of {', '.join(a.choices)}")
    sizes = []
    for text in values["mem"] or list(grid.AXIS["mem"].default):
        try:
            sizes.append((parse_size(text), text))
        except ValueError as e:
            raise UsageError(f"--mem {text!r}: {e}") from None
    holes = values["holes"] or list(grid.AXIS["holes"].default)
    e820_dir = args.e820_dir
    try:
        if e820_dir is not None and any(h != "pc" for h in holes):
            ensure_directory(e820_dir, "--e820-dir")
        mems = grid.memories(sizes if values["mem"] or not values["e820"] else [], holes, values["e820"], e820_dir)
    except (ValueError, WriteError) as e:
        raise UsageError(str(e)) from None
    n = len(mems)
    for a in grid.AXES:
        if a.name not in grid.MEMORY_AXES:
            n *= len(values[a.name] or a.default)
    if n > MAX_CONFIGS:
        raise UsageError(f"the grid has {n} configurations; at most {MAX_CONFIGS} are run in one matrix")
    parser = boot_parser()
    checks = [(f"--{a.name} {v}", a.argv(v)) for a in grid.AXES if a.name not in grid.MEMORY_AXES
              for v in values[a.name]]
    checks += [(m.label, grid.Config(0, m, ()).argv()) for m in mems]
    for what, argv in checks:  # every value once through earlymm boot's own parser, before any boot runs
        try:
            parser.parse_args(["boot", *argv])
        except _Refused as e:
            raise UsageError(f"{what}: not valid for earlymm boot: {e}") from None
    return grid.expand(mems, values)


def main(args: argparse.Namespace) -> int:
    if args.html is not None:
        try:
            check_target(args.html, "HTML file")
        except WriteError as e:
            raise UsageError(str(e)) from None
    configs = build_grid(args)
    tasks = [(c.index, c.argv()) for c in configs]
    start = time.perf_counter()
    with _progress(len(tasks), args.progress) as advance:
        try:
            if args.dask:
                records = run_dask(run_batch, tasks, args.dask, advance)
            else:
                records = run_local(run_batch, tasks, args.workers, advance)
        except DaskUnavailable as e:
            raise UsageError(str(e)) from None
    records.sort(key=lambda r: r["index"])
    elapsed = time.perf_counter() - start
    if records and all(r["outcome"] == "bad-input" for r in records):
        # nothing could even start (a value earlymm boot refuses in every combination): bad input, not a table
        raise UsageError(f"no configuration is valid for earlymm boot; #0: {records[0]['reason']}")
    groups = report.group(configs, records)
    doc = report.to_json(configs, records, groups)
    if args.html is not None:
        from earlymm.tools.html.page import write_html

        try:
            write_html(args.html, {"kind": "matrix", "title": f"earlymm matrix: {len(configs)} configurations",
                                   "source": "", "matrix": report.html_doc(configs, records, groups)})
        except WriteError as e:
            raise UsageError(str(e)) from None
    if args.json:
        json.dump(doc, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        sys.stdout.write("\n".join(report.text(configs, records, groups)) + "\n")
    where = f"Dask at {args.dask}" if args.dask else f"{args.workers} worker(s)"
    cpu = sum(r.get("cpu", 0.0) for r in records)
    sys.stderr.write(f"earlymm matrix: {len(configs)} boots in {elapsed:.1f} s on {where} "
                     f"({len(configs) / max(elapsed, 1e-9):.1f} boots/s; {cpu:.1f} CPU s in the boots)\n")
    return EXIT_CRASH if doc["failed"] else EXIT_OK


class _progress:
    """A rich progress bar on stderr (a terminal, or --progress); otherwise nothing."""

    def __init__(self, total: int, force: bool) -> None:
        self.total = total
        self.on = force or sys.stderr.isatty()
        self.bar: Any = None

    def __enter__(self) -> Any:
        if not self.on:
            return lambda n: None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(TextColumn("booting"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                            console=Console(file=sys.stderr), transient=False)
        self.bar.start()
        task = self.bar.add_task("boots", total=self.total)
        return lambda n: self.bar.advance(task, n)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()
