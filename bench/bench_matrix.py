"""Matrix benchmark: 1,000 default-profile configurations through ``earlymm matrix``, wall time.

    python bench/bench_matrix.py [--workers N] [--sample K] [--dask]

The grid: 10 load addresses (including 1 GiB − 2 MiB, straddling 1 GiB) × 5 RAM sizes (2–64 GiB, PC
layout) × 4 pool sizes × 5 ramdisk positions = 1,000 configurations, profile v3.9 (the default).

Rows, measured side by side in one run:

* ``earlymm matrix --workers N`` — the command itself, end to end (a subprocess: start-up, the forkserver,
  workers, grouping and printing included). The target is 60 s on the 2-core machine.
* the same boots one after another in this process (``run_batch`` on all tasks): what the workers share out;
* one ``earlymm boot`` process per configuration — what a shell loop would do — on ``--sample`` of the
  configurations, extrapolated to 1,000 (start-up and imports dominate it).
* ``--dask``: the matrix on a local Dask cluster (``LocalCluster``, N worker processes), when installed.

Nothing asserts; the target is printed as MET / NOT MET, and the grouped outcomes of the runs are compared.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

from benchlib import git_state

REPO = Path(__file__).resolve().parent.parent
GRID = ["--kernel-at", "0x1000000,0x2000000,0x4000000,0x8000000,0x10000000,0x20000000,0x3fe00000,0x40000000,"
        "0x50000000,0x5fe00000",
        "--mem", "2G,4G,8G,16G,64G",
        "--pool", "16,32,64,128",
        "--ramdisk", "default,0x6000000:16M,0x18000000:8M,0x30000000:32M,0x70000000:16M"]
TARGET = 60.0
CPU: list[float] = []  # CPU seconds the boots of each matrix run took (as the command reports them)


def matrix(extra: list[str]) -> tuple[float, dict[str, object]]:
    cmd = [sys.executable, "-m", "earlymm", "matrix", *GRID, "--json", *extra]
    t = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - t
    cpu = re.search(r"; ([0-9.]+) CPU s in the boots", out.stderr)
    CPU.append(float(cpu[1]) if cpu else float("nan"))
    if out.returncode not in (0, 1):
        raise SystemExit(f"{shlex.join(cmd)} failed ({out.returncode}): {out.stderr.strip()}")
    doc: dict[str, object] = json.loads(out.stdout)
    return wall, doc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--sample", type=int, default=10, help="configurations timed as separate earlymm boot processes")
    ap.add_argument("--dask", action="store_true", help="also time a local Dask cluster")
    ap.add_argument("--no-inline", action="store_true", help="skip the one-process row")
    args = ap.parse_args()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"earlymm {git_state()}, {os.cpu_count()} CPUs, python {sys.version.split()[0]}, load average {load}")
    rows: list[tuple[str, float]] = []
    wall, doc = matrix(["--workers", str(args.workers)])
    n = int(doc["configurations"])  # type: ignore[call-overload]
    print(f"grid: {n} configurations, {doc['failed']} failed; groups: "
          + "; ".join(f"{g['count']} {g['outcome']}" for g in doc["groups"]))  # type: ignore[attr-defined]
    rows.append((f"earlymm matrix --workers {args.workers}", wall))
    results = doc["results"]
    tasks = [(r["index"], shlex.split(r["command"])[2:]) for r in results]  # type: ignore[attr-defined]
    if not args.no_inline:
        from earlymm.cli.matrix_cmd import run_batch

        t = time.perf_counter()
        run_batch(tasks)
        rows.append(("the same boots in one process, one after another", time.perf_counter() - t))
    if args.sample:
        step = max(1, len(tasks) // args.sample)
        picked = tasks[::step][:args.sample]
        t = time.perf_counter()
        for _i, argv in picked:
            subprocess.run([sys.executable, "-m", "earlymm", "boot", *argv], capture_output=True, cwd=REPO)
        per = (time.perf_counter() - t) / len(picked)
        rows.append((f"one earlymm boot process per configuration (×{n} from {len(picked)})", per * n))
    if args.dask:
        from distributed import LocalCluster

        with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True) as cluster:
            dwall, ddoc = matrix(["--dask", cluster.scheduler_address])
        same = ddoc["groups"] == doc["groups"]
        rows.append((f"earlymm matrix --dask (LocalCluster, {args.workers} processes; same groups: {same})", dwall))
    best = rows[0][1]
    print(f"\n{'':62s} {'wall s':>8s} {'ratio':>7s} {'config/s':>9s}")
    for name, secs in rows:
        print(f"{name:62s} {secs:8.1f} {secs / best:7.2f} {n / secs:9.1f}")
    verdict = "MET" if wall <= TARGET else "NOT MET"
    print(f"\ntarget: {n} configurations in at most {TARGET:.0f} s with earlymm matrix — {verdict} ({wall:.1f} s)")
    # Wall time depends on what else runs; the CPU time the boots needed much less. On an idle machine with
    # as many cores as workers the wall time is about that CPU time / workers plus the start-up.
    idle = CPU[0] / args.workers
    print(f"CPU time of the boots in that run: {CPU[0]:.1f} s over {args.workers} workers — about {idle:.1f} s of "
          f"wall time on an idle {args.workers}-core machine, plus start-up")


if __name__ == "__main__":
    main()
