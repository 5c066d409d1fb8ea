"""Reading an e820 map file (``earlymm boot --e820 FILE``): cost per line as the map grows.

Peer: the floor of any reader of the format — read the lines, split them, parse two numbers and a type —
measured on the same files in the same run. earlymm's reader adds the checks (overlaps, bounds, one
sort); near-linear means its per-line cost stays a steady multiple of the floor from 1,000 to 100,000
lines (the reader before issue 7 re-scanned the whole map for every line: quadratic).

    python bench/bench_e820.py [--runs R]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchlib import git_state

from earlymm.arch.addr import parse_int
from earlymm.cli.boot_args import read_e820

SIZES = (1_000, 10_000, 100_000)


def make_file(directory: Path, n: int) -> Path:
    rng = random.Random(n)
    lines, at = [], 0
    for i in range(n):
        start = at + rng.randrange(1, 16) * 0x1000
        end = start + rng.randrange(1, 64) * 0x1000
        lines.append(f"{start:#x} {end:#x} {('ram', 'reserved')[i % 2]}")
        at = end
    rng.shuffle(lines)
    path = directory / f"map{n}.e820"
    path.write_text("\n".join(lines) + "\n")
    return path


def floor(path: Path) -> int:
    n = 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            a, b, _t = line.split()
            parse_int(a), parse_int(b)
            n += 1
    return n


def best(fn: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    print(f"earlymm {git_state()}")
    print(f"{'lines':>8} {'read_e820 µs/line':>18} {'floor µs/line':>14} {'ratio':>7}")
    per_line = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in SIZES:
            path = make_file(Path(tmp), n)
            ours = best(lambda p=path: read_e820(str(p)), args.runs) / n * 1e6
            base = best(lambda p=path: floor(p), args.runs) / n * 1e6
            per_line[n] = ours
            print(f"{n:>8} {ours:>18.2f} {base:>14.2f} {ours / base:>6.2f}×")
    print(f"growth of the cost per line from {SIZES[0]:,} to {SIZES[-1]:,} lines: "
          f"{per_line[SIZES[-1]] / per_line[SIZES[0]]:.2f}× (1.0 is linear; a reader that scans the map per "
          "line grows with the map)")


if __name__ == "__main__":
    main()
