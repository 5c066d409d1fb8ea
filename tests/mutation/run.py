"""Mutation runner for the kernel model: change one decision at a time and see which test notices.

    python -m tests.mutation.run                    # every mutant: its focus tests, then the kernel tier
    python -m tests.mutation.run --only early.      # the mutants whose id starts with "early."
    python -m tests.mutation.run --full             # survivors of the kernel tier also meet the whole suite
    python -m tests.mutation.run --focus-only       # only each mutant's focus tests (checking new tests)
    python -m tests.mutation.run --all              # include the mutants marked equivalent
    python -m tests.mutation.run --list             # the list, without running anything
    python -m tests.mutation.run --json out.json    # results as JSON (the table is printed either way)
    python -m tests.mutation.run --results a.json b.json  # tests/mutation/RESULTS.md from saved --json runs

The mutants live in ``tests/mutation/mutants.py``. The runner never edits this checkout: it copies the
checkout's files (tracked and untracked, not ignored) to a scratch directory (``--workdir``, else a fresh
temporary one), and for each mutant edits the copy, runs pytest there in a subprocess with ``PYTHONPATH``
set to the copy (so the copy's ``earlymm`` is the one imported, by the tests and by the ``python -m
earlymm`` runs of the mid-boot comparison), and puts the copy's file back before the next mutant. So other
work in the checkout can go on during a run, and nothing a run does can end up in a commit.

Tiers, widest last: the mutant's ``focus`` tests; the kernel tier (every test that boots the kernel model:
tests/kernel, tests/midboot, tests/xen, the boot CLI tests); with ``--full``, the default suite. The golden boots
(tests/kernel/test_golden_boot.py) are always deselected: they are the model's own earlier output and do
not count as catching a decision change. A mutant is *caught* by the first test that fails (pytest ``-x``);
a run that exceeds ``--timeout`` counts as caught by the timeout (a hang is noticed, but says less).

Not part of the default test run (the file name does not match pytest's ``test_*.py``): it takes minutes
per mutant that survives its focus tests, and the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType

from tests.mutation.mutants import MUTANTS, Mutant

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = "tests/kernel/test_golden_boot.py"
KERNEL_TIER = ("tests/kernel", "tests/midboot", "tests/xen", "tests/cli/test_boot_cli.py",
               "tests/cli/test_strict_input.py", "tests/cli/test_boot_progress.py", "tests/test_fuzz_bad_input.py",
               "tests/images/test_safe_write.py")
FAILED = re.compile(r"^(?:FAILED|ERROR) (\S+)", re.M)


@dataclass
class Result:
    id: str
    where: str
    what: str
    outcome: str  # caught / survived / equivalent-skipped / broken
    caught_by: str
    tier: str
    seconds: float


class Applied:
    """One mutant's edits applied to the tree at ``root`` (the scratch copy); ``restore`` puts every file back."""

    def __init__(self, mutant: Mutant, root: Path = ROOT) -> None:
        self.saved: dict[Path, str] = {}
        texts: dict[Path, str] = {}
        for e in mutant.edits:
            path = root / e.path
            text = texts.get(path, path.read_text(encoding="utf-8"))
            n = text.count(e.old)
            if n != 1:
                raise ValueError(f"{mutant.id}: {e.path}: the text to change occurs {n} times (want exactly 1): "
                                 f"{e.old[:70]!r}")
            self.saved.setdefault(path, text)
            texts[path] = text.replace(e.old, e.new)
        self.texts = texts

    def apply(self) -> None:
        for path, text in self.texts.items():
            path.write_text(text, encoding="utf-8")

    def restore(self) -> None:
        for path, text in self.saved.items():
            path.write_text(text, encoding="utf-8")


def pytest(root: Path, targets: list[str], timeout: float) -> tuple[bool, str]:
    """Run pytest in ``root`` on ``targets``; (all passed, first failing test or '')."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-rfE", "--no-header",
           "--deselect", GOLDEN, *targets]
    env = {**os.environ, "PYTHONPATH": str(root), "PYTHONDONTWRITEBYTECODE": "1"}
    try:
        r = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return False, f"(timeout after {timeout:.0f} s)"
    if r.returncode == 0:
        return True, ""
    if r.returncode == 5:  # nothing collected: the focus names a test that does not exist
        raise ValueError(f"pytest collected nothing from {targets}")
    m = FAILED.search(r.stdout)
    if m:
        return False, m.group(1)
    tail = (r.stdout + r.stderr).strip().splitlines()[-3:]
    return False, f"(pytest exit {r.returncode}: {' | '.join(tail)})"


def run_one(mutant: Mutant, root: Path, *, full: bool, timeout: float, focus_only: bool = False) -> Result:
    applied = Applied(mutant, root)
    t0 = time.monotonic()
    tiers: list[tuple[str, list[str]]] = []
    focus = [t for t in dict.fromkeys(mutant.focus) if (root / t.split("::")[0]).exists()]
    if focus:
        tiers.append(("focus", focus))
    if not focus_only or not focus:
        tiers.append(("kernel", list(KERNEL_TIER)))
    if full and not focus_only:
        tiers.append(("full", ["tests"]))
    applied.apply()
    try:
        for tier, targets in tiers:
            ok, first = pytest(root, targets, timeout)
            if not ok:
                return Result(mutant.id, mutant.where, mutant.what, "caught", first, tier, time.monotonic() - t0)
        return Result(mutant.id, mutant.where, mutant.what, "survived", "", tiers[-1][0], time.monotonic() - t0)
    finally:
        applied.restore()


def make_copy(workdir: Path | None) -> Path:
    """The checkout's tracked and untracked (not ignored) files, copied to ``workdir`` or a new temporary one."""
    r = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                       capture_output=True, check=True)
    dest = workdir if workdir is not None else Path(tempfile.mkdtemp(prefix="earlymm-mutants-"))
    for name in filter(None, r.stdout.decode().split("\0")):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def table(results: list[Result]) -> str:
    rows = [f"| {r.id} | {r.where} | {r.what} | {r.outcome} | {r.caught_by or '—'} | {r.tier} | {r.seconds:.0f} |"
            for r in results]
    return "\n".join(["| mutant | where | decision changed | outcome | first failing test | tier | s |",
                      "|---|---|---|---|---|---|---|", *rows])


RESULTS = ROOT / "tests/mutation/RESULTS.md"


def merge_results(paths: list[Path]) -> list[Result]:
    """The saved ``--json`` runs, later files winning for a mutant they also ran (a kernel-tier run after a
    focus-only one), in the order of ``MUTANTS``; a mutant no run reached is listed as ``not run``."""
    by_id: dict[str, Result] = {}
    for path in paths:
        for row in json.loads(path.read_text(encoding="utf-8")):
            r = Result(**row)
            old = by_id.get(r.id)
            # a focus-only 'survived' says only "not by its focus tests": a wider run's verdict replaces it,
            # but a focus catch is never replaced by a later, narrower non-result
            if old is None or not (old.outcome == "caught" and r.outcome != "caught"):
                by_id[r.id] = r
    # the list's own 'equivalent' mark (with its reason) wins over what an earlier run recorded
    return [Result(mt.id, mt.where, mt.what, "equivalent-skipped", mt.equivalent, "-", 0.0) if mt.equivalent
            else by_id.get(mt.id, Result(mt.id, mt.where, mt.what, "not run", "", "-", 0.0))
            for mt in MUTANTS]


def results_markdown(results: list[Result], sources: list[Path]) -> str:
    counts: dict[str, int] = {}
    for r in results:
        key = f"{r.outcome} ({r.tier})" if r.outcome == "caught" else r.outcome
        counts[key] = counts.get(key, 0) + 1
    summary = "\n".join(f"- {k}: {v}" for k, v in sorted(counts.items()))
    return (f"# Mutation results\n\nGenerated by `python -m tests.mutation.run --results "
            f"{' '.join(str(p) for p in sources)}` from the runner's `--json` output; do not edit by hand.\n"
            f"{len(results)} mutants (tests/mutation/mutants.py). A mutant is *caught* by the first failing test "
            "of its tier: `focus` (the tests the mutant names), `kernel` (every test that boots the kernel "
            "model); *equivalent-skipped* mutants give the reason no boot can observe them; *survived* after a "
            "`focus`-only run means only that its focus tests did not notice it.\n\n"
            f"{summary}\n\n{table(results)}\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.mutation.run", description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", action="append", default=[], help="run mutants whose id starts with this (repeatable)")
    ap.add_argument("--full", action="store_true", help="survivors of the kernel tier meet the whole default suite")
    ap.add_argument("--all", action="store_true", help="include mutants marked equivalent")
    ap.add_argument("--focus-only", action="store_true",
                    help="stop at the focus tests (a quick check of new tests; 'survived' then means 'not by them')")
    ap.add_argument("--list", action="store_true", help="print the mutants and exit")
    ap.add_argument("--json", type=Path, help="write the results here as JSON")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per pytest run (default 1800)")
    ap.add_argument("--results", type=Path, nargs="+", metavar="JSON",
                    help=f"write {RESULTS.relative_to(ROOT)} from these --json files (later ones win) and exit")
    ap.add_argument("--workdir", type=Path, help="where to copy the checkout (default: a new temporary directory)")
    args = ap.parse_args(argv)
    if args.results:
        try:
            merged = merge_results(args.results)
        except (OSError, ValueError, TypeError) as e:
            print(f"cannot read results: {e}", file=sys.stderr)
            return 2
        RESULTS.write_text(results_markdown(merged, args.results), encoding="utf-8")
        print(f"wrote {RESULTS.relative_to(ROOT)} ({len(merged)} mutants)", file=sys.stderr)
        return 0
    chosen = [mt for mt in MUTANTS if not args.only or any(mt.id.startswith(p) for p in args.only)]
    ids = [mt.id for mt in MUTANTS]
    dup = {i for i in ids if ids.count(i) > 1}
    if dup:
        print(f"duplicate mutant ids: {sorted(dup)}", file=sys.stderr)
        return 2
    for mt in chosen:
        try:
            Applied(mt)
        except (ValueError, OSError) as e:
            print(f"stale mutant: {e}", file=sys.stderr)
            return 2
    if args.list:
        for mt in chosen:
            print(f"{mt.id:32} {mt.where:40} {mt.what}" + (f"  [equivalent: {mt.equivalent}]" if mt.equivalent else ""))
        return 0
    root = make_copy(args.workdir)
    print(f"mutating a copy of the checkout in {root}", file=sys.stderr)

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    results: list[Result] = []
    try:
        for mt in chosen:
            if mt.equivalent and not args.all:
                results.append(Result(mt.id, mt.where, mt.what, "equivalent-skipped", mt.equivalent, "-", 0.0))
                continue
            res = run_one(mt, root, full=args.full, timeout=args.timeout, focus_only=args.focus_only)
            results.append(res)
            print(f"{res.id}: {res.outcome} {res.caught_by} ({res.tier}, {res.seconds:.0f} s)", flush=True)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=1) + "\n", encoding="utf-8")
    survivors = [r for r in results if r.outcome == "survived"]
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
