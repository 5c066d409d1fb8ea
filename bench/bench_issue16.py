"""Issue 16's four figures in one run: each bench script in turn, then their target lines side by side.

1. the scalar walk (full rights checks, cold) against volatility3's ``_translate``: bench_translate.py
2. ``earlymm ptdump CORE --format qemu-tlb`` as a process against QEMU's ``info tlb``: bench_ptdump.py
   (boots the capture kernel under QEMU); ``earlymm translate CORE VA`` and ``earlymm boot`` as processes:
   bench_startup.py
3. ``translate_many`` on 100,000 addresses, first call in a fresh process: bench_bulk.py's small batch
4. this summary.

Each script measures its rows side by side (interleaved or rotated rounds) and prints ratios; nothing here
asserts on time. The load average is printed before and after: on a shared machine a busy neighbour slows
every row, and a process's wall time (figure 2) more than a ratio of interleaved passes.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent


def load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def run(script: str, args: list[str]) -> list[str]:
    """Run one bench script, echoing its output; its lines that state a target."""
    cmd = [sys.executable, str(BENCH / script), *args]
    print(f"\n$ {' '.join(cmd[1:])}   (load average {load()})", flush=True)
    t = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(BENCH.parent), os.environ.get("PYTHONPATH"))
                                                       if p)}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    sys.stdout.write(p.stdout)
    sys.stdout.flush()
    if p.returncode:
        sys.stdout.write(p.stderr)
        return [f"{script}: exited {p.returncode}"]
    print(f"[{script}: {time.perf_counter() - t:.0f} s]")
    lines = p.stdout.splitlines()
    return [ln.strip() for ln in lines if "MET" in ln]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer rounds and addresses (a few minutes in all)")
    args = ap.parse_args(argv)
    q = args.quick
    before = load()
    figures = {
        "1 scalar walk vs volatility3": run("bench_translate.py", ["--no-unicorn", "--runs", "3" if q else "5",
                                                                   "--count", "100000" if q else "200000"]),
        "2 ptdump process vs QEMU info tlb": run("bench_ptdump.py", ["--runs", "5" if q else "7"]),
        "2 translate and boot processes": run("bench_startup.py", ["--runs", "9" if q else "15"]),
        "3 translate_many, 100,000 addresses, cold": run("bench_bulk.py", ["--count", "1000000", "--small",
                                                                           "100000", "--small-runs",
                                                                           "5" if q else "9"]),
    }
    print(f"\n== issue 16: the figures (load average before {before}, after {load()}; 2 cores)")
    for name, lines in figures.items():
        print(f"{name}:")
        for ln in lines or ["(no target line: see the output above)"]:
            print(f"    {ln}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
