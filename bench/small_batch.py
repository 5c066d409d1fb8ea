"""Small batches, cold: ``translate_many``'s first call in a fresh process, beside scalar peers on the same
addresses. Used by bench_bulk.py; run as a script it is the child that measures one round.

A round is one new interpreter: it imports earlymm and numpy (not timed), opens the core, and times, on
fresh memory each, ``translate_many`` over the batch (the process's first call: numpy's first-use costs,
table reads, everything), the naive walker of bench_translate.py (read_u64, P/PS only) and earlymm's
scalar walker (``hw.fastwalk``, full rights) over the same addresses, each a first pass.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
EFER = 0xD01


def child(core: str, vas_file: str) -> dict[str, float]:
    from bench_translate import naive_walker

    from earlymm.arch.modes import Features
    from earlymm.hw.fastwalk import walker_for
    from earlymm.hw.memory import PhysMem
    from earlymm.hw.walk import compile_plan
    from earlymm.images import open_image
    from earlymm.tools.bulk import translate_many

    vas = np.load(vas_file)
    cpu = open_image(core).cpus[0]
    root = cpu.cr3 & 0x000F_FFFF_FFFF_F000
    out: dict[str, float] = {}

    mem = PhysMem(open_image(core), absent_zero=True)
    plan = compile_plan(cpu.cr0, cpu.cr4, EFER, Features())
    t = time.perf_counter()
    translate_many(mem, plan, root, vas)
    out["bulk first call"] = time.perf_counter() - t
    mem = PhysMem(open_image(core), absent_zero=True)
    t = time.perf_counter()
    translate_many(mem, plan, root, vas)
    out["bulk second call"] = time.perf_counter() - t

    listed = vas.tolist()
    naive = naive_walker(Path(core), root)()
    t = time.perf_counter()
    naive(listed)
    out["naive walker"] = time.perf_counter() - t
    w = walker_for(PhysMem(open_image(core), absent_zero=True), plan)
    t = time.perf_counter()
    for va in listed:
        w(root, va)
    out["scalar walker"] = time.perf_counter() - t
    return out


def measure(core: Path, vas: NDArray[np.uint64], rounds: int) -> dict[str, list[float]]:
    """``rounds`` child processes; seconds per measurement, one entry per round."""
    times: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="earlymm-small-") as d:
        path = Path(d) / "vas.npy"
        np.save(path, vas)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(BENCH)])}
        for _ in range(rounds):
            p = subprocess.run([sys.executable, str(Path(__file__)), str(core), str(path)], env=env,
                               capture_output=True, text=True, check=True)
            for k, v in json.loads(p.stdout).items():
                times.setdefault(k, []).append(v)
    return times


def report(times: dict[str, list[float]], n: int) -> float:
    """Print the table; returns the bulk first call's median rate (addresses/s)."""
    base = times["bulk first call"]
    print(f"  {'':>22} {'median ms':>10} {'M addr/s':>9} {'÷ bulk first call':>18}")
    for k, ts in times.items():
        ratio = statistics.median(t / b for t, b in zip(ts, base, strict=True))
        print(f"  {k:>22} {statistics.median(ts) * 1e3:10.1f} {n / statistics.median(ts) / 1e6:9.2f} "
              f"{ratio:17.1f}×")
    return n / statistics.median(base)


if __name__ == "__main__":
    print(json.dumps(child(sys.argv[1], sys.argv[2])))
