"""Bulk translation benchmark: ``earlymm.tools.bulk.translate_many`` against the scalar ``walk``, one QEMU core.

    python bench/bench_bulk.py [--image PATH] [--count N] [--scalar-count K] [--runs R] [--seed S]

The address set (seeded, built with numpy from the core's own page tables) is a forensics-style mix:

* 89.5 % mapped: the present leaves are grouped into regions (the upper half by 512 GiB slot, the
  lower half as "user"); the region with the most mapped bytes (the direct map) gets 45 % of these,
  user 10 % when it has leaves, the other regions share the rest equally; inside a region a byte is
  drawn uniformly over its mapped bytes. The espfix area's tens of thousands of alias
  leaves thus count as one small region, not as most of the address space;
* 10 % canonical but mostly unmapped: half within 8 MiB of a mapped leaf (the walk goes deep before it
  fails), half anywhere in either half of the canonical space;
* 0.5 % non-canonical (#GP without a walk);
* QEMU's own ``gva2gpa`` probes, whose answers are checked.

Each timed ``translate_many`` call starts from nothing (its transition tables are per call), so every
figure includes reading and classifying the tables the addresses touch. Rates are best and median of
``--runs`` calls; the scalar walk runs once over the first ``--scalar-count`` addresses, and its
answers must equal the bulk answers field by field. Nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import small_batch
from numpy.typing import NDArray

from earlymm.arch.modes import Features
from earlymm.hw.memory import PhysMem
from earlymm.hw.walk import GP, HOLE, OK, PF, WalkPlan, compile_plan, walk
from earlymm.images import open_image
from earlymm.images.minimize import read_capture_text
from earlymm.images.monitor_text import parse_gva2gpa_file
from earlymm.tools.bulk import BulkResult, translate_many

REPO = Path(__file__).resolve().parent.parent
DEFAULT_IMAGE = REPO / "captures" / "l4" / "core.elf"
FIXTURE_IMAGE = REPO / "tests" / "fixtures" / "qemu-l4" / "core.elf.gz"
EFER = 0xD01  # SCE | LME | LMA | NXE: QEMU's core has no EFER; the captures' registers.txt say 0xd01
ADDR = 0x000F_FFFF_FFFF_F000
U64 = NDArray[np.uint64]
FIELDS = ("outcome", "pa", "page_size", "error_code", "user_page", "writable", "xd", "pkey")
OUTCOME_WORDS = {OK: "ok", PF: "#PF", GP: "#GP", HOLE: "hole"}


@dataclass
class Region:
    name: str
    va: U64  # leaf bases (uint64)
    size: U64  # leaf sizes (uint64)

    @property
    def mapped(self) -> int:
        return int(self.size.sum())


def leaves(mem: PhysMem, root: int, levels: int, limit: int = 2_000_000) -> tuple[U64, U64]:
    """(canonical VA, size) of every present leaf, aliases included: the bench's own walk over P and PS
    (no reserved bits, no rights), one numpy pass per table, so it does not lean on the code measured."""
    width = 12 + 9 * levels
    vas: list[U64] = []
    sizes: list[U64] = []
    count = 0

    def visit(table: int, depth: int, base: int) -> None:
        nonlocal count
        raw = mem.entries8(table >> 12)
        if raw is None or count >= limit:
            return
        e = np.frombuffer(raw, dtype=np.uint64)
        shift = 12 + 9 * (levels - 1 - depth)
        idx = np.flatnonzero(e & np.uint64(1))
        is_leaf = np.full(idx.size, depth == levels - 1)
        if levels - 3 <= depth < levels - 1:
            is_leaf = (e[idx] & np.uint64(0x80)) != 0
        leaf_idx = idx[is_leaf].astype(np.uint64)
        vas.append(np.uint64(base) | (leaf_idx << np.uint64(shift)))
        sizes.append(np.full(leaf_idx.size, 1 << shift, np.uint64))
        count += leaf_idx.size
        for i in idx[~is_leaf].tolist():
            visit(int(e[i]) & ADDR, depth + 1, base | (i << shift))

    visit(root, 0, 0)
    va = np.concatenate(vas) if vas else np.zeros(0, np.uint64)
    high = (va >> np.uint64(width - 1)) != 0
    va[high] |= np.uint64(((1 << 64) - 1) ^ ((1 << width) - 1))
    return va, np.concatenate(sizes) if sizes else np.zeros(0, np.uint64)


def regions(va: U64, size: U64) -> list[Region]:
    """Lower half = "user"; the upper half by 512 GiB slot (Linux gives each kernel area its own slots:
    direct map, vmalloc, vmemmap, cpu_entry_area, espfix, kernel image + modules + fixmap)."""
    order = np.argsort(va)
    va, size = va[order], size[order]
    upper = (va >> np.uint64(63)) != 0
    out = []
    if (~upper).any():
        out.append(Region("user", va[~upper], size[~upper]))
    hv, hs = va[upper], size[upper]
    if hv.size:
        cuts = np.flatnonzero(np.diff(hv >> np.uint64(39))) + 1
        for a, b in zip(np.concatenate([[0], cuts]), np.concatenate([cuts, [hv.size]]), strict=True):
            out.append(Region(f"{int(hv[a]) & ~((1 << 39) - 1):#x}", hv[a:b], hs[a:b]))
    return out


def sample_in(region: Region, n: int, rng: np.random.Generator) -> U64:
    """``n`` bytes drawn uniformly over the region's mapped bytes."""
    ends = np.cumsum(region.size)
    pick = rng.integers(0, int(ends[-1]), n, dtype=np.uint64)
    k = np.searchsorted(ends, pick, side="right")
    return region.va[k] + (pick - (ends[k] - region.size[k]))


def make_addresses(regs: list[Region], gva: list[int], n: int, width: int, rng: np.random.Generator
                   ) -> tuple[U64, dict[str, int]]:
    n_noncanon = n // 200
    n_unmapped = n // 10
    n_mapped = n - n_noncanon - n_unmapped - len(gva)
    big = max(regs, key=lambda r: r.mapped)
    weights = {r.name: 0.0 for r in regs}
    weights[big.name] = 0.45
    user = [r for r in regs if r.name == "user"]
    if user:
        weights["user"] = 0.10
    rest = [r for r in regs if r is not big and r.name != "user"]
    for r in rest:
        weights[r.name] = (1 - sum(weights.values())) / len(rest) if rest else 0
    if not rest:
        weights[big.name] += 1 - sum(weights.values())
    counts = rng.multinomial(n_mapped, [weights[r.name] for r in regs])
    parts = [sample_in(r, int(c), rng) for r, c in zip(regs, counts, strict=True)]
    mix = {f"mapped {r.name}" + (" (direct map?)" if r is big else ""): int(c)
           for r, c in zip(regs, counts, strict=True)}
    allv = np.concatenate([r.va for r in regs])
    near = allv[rng.integers(0, allv.size, n_unmapped // 2)]
    near = near + rng.integers(-(8 << 20), 8 << 20, near.size).astype(np.uint64)  # wraps mod 2**64: fine
    half = np.uint64(1 << (width - 1))
    far = rng.integers(0, 1 << (width - 1), n_unmapped - near.size, dtype=np.uint64)
    far[rng.random(far.size) < 0.5] |= np.uint64(((1 << 64) - 1) ^ ((1 << (width - 1)) - 1))
    noncanon = half + rng.integers(0, (1 << 64) - (1 << width), n_noncanon, dtype=np.uint64)
    mix |= {"near a leaf (±8 MiB)": near.size, "anywhere canonical": far.size, "non-canonical": n_noncanon,
            "gva2gpa probes": len(gva)}
    vas = np.concatenate([*parts, near, far, noncanon, np.array(gva, dtype=np.uint64)])
    rng.shuffle(vas)
    return vas, mix


def timed(fn: Callable[[], BulkResult], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        gc.collect()
        t = time.perf_counter()
        fn()  # the answer is dropped at once, so calls do not pile up arrays
        times.append(time.perf_counter() - t)
    return times


def scalar_check(mem: PhysMem, plan: WalkPlan, root: int, vas: U64, bulk: BulkResult, kind: int,
                 user: bool) -> tuple[float, int]:
    """Walk each address with the scalar walker; returns (seconds, number of field disagreements)."""
    sub = vas.tolist()
    gc.collect()
    t = time.perf_counter()
    res = [walk(mem, plan, root, va, kind, user) for va in sub]
    dt = time.perf_counter() - t
    cols = {f: getattr(bulk, f)[:len(sub)].tolist() for f in FIELDS}
    bad = 0
    for i, w in enumerate(res):
        if any(getattr(w, f) != cols[f][i] for f in FIELDS):
            bad += 1
            if bad <= 5:
                print(f"  DISAGREE {sub[i]:#x}: walk {[getattr(w, f) for f in FIELDS]} "
                      f"bulk {[cols[f][i] for f in FIELDS]}")
    return dt, bad


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--image", type=Path, default=None, help=f"QEMU core (default {DEFAULT_IMAGE}, else the fixture)")
    ap.add_argument("--count", type=int, default=10_000_000)
    ap.add_argument("--scalar-count", type=int, default=200_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--small", type=int, default=100_000, help="small-batch size (0: skip that section)")
    ap.add_argument("--small-runs", type=int, default=7, help="fresh processes for the small batch")
    args = ap.parse_args(argv)
    image = args.image or (DEFAULT_IMAGE if DEFAULT_IMAGE.exists() else FIXTURE_IMAGE)
    print(f"image: {image}  ({image.stat().st_size / 2**20:.0f} MiB)")
    print(f"python {sys.version.split()[0]}, numpy {np.__version__}")

    with open_image(image) as img:
        cpu = img.cpus[0]
        mem = PhysMem(img, absent_zero=True)
        plan = compile_plan(cpu.cr0, cpu.cr4, EFER, Features())
        root = cpu.cr3 & ADDR
        levels = len(plan.levels)
        width = 12 + 9 * levels
        print(f"CR0={cpu.cr0:#x} CR3={cpu.cr3:#x} CR4={cpu.cr4:#x} EFER={EFER:#x}: {plan.mode.value} paging")

        t = time.perf_counter()
        lva, lsize = leaves(mem, root, levels)
        regs = regions(lva, lsize)
        print(f"{lva.size} present leaves in {len(regs)} regions (enumerated in {time.perf_counter() - t:.2f} s):")
        for r in regs:
            print(f"  {r.name:>20}  {r.va.size:7d} leaves  {r.mapped / 2**20:10.1f} MiB")
        gva_text = None
        for d in (image.parent,):
            try:
                gva_text = read_capture_text(d, "gva2gpa.txt")
            except (FileNotFoundError, OSError):
                gva_text = None
        gva = parse_gva2gpa_file(gva_text) if gva_text else []

        rng = np.random.default_rng(args.seed)
        vas, mix = make_addresses(regs, [va for va, _ in gva], args.count, width, rng)
        print(f"\n{vas.size:,} addresses:")
        for k, v in mix.items():
            print(f"  {k:>32}  {v:10,d}  {100 * v / vas.size:5.1f} %")

        loads: list[int] = []
        real8 = mem.entries8

        def counting(pfn: int) -> memoryview | None:
            loads.append(pfn)
            return real8(pfn)

        mem.entries8 = counting  # type: ignore[method-assign]  # count table reads of one call
        bulk = translate_many(mem, plan, root, vas)
        mem.entries8 = real8  # type: ignore[method-assign]
        outcomes = np.bincount(bulk.outcome, minlength=4)
        print("  outcomes: " + ", ".join(f"{OUTCOME_WORDS[k]} {100 * outcomes[k] / vas.size:.1f} %"
                                         for k in (OK, PF, GP, HOLE)))
        print(f"  one call reads {len(loads)} table pages ({len(set(loads))} distinct frames)")

        if gva:
            gv = np.array([va for va, _ in gva], dtype=np.uint64)
            lo = translate_many(mem, plan, root, gv, user=True)  # gva2gpa ignores rights: ask as the owner
            hi = translate_many(mem, plan, root, gv, user=False)
            up = (gv >> np.uint64(63)) != 0
            wrong = sum(1 for i, (_, want) in enumerate(gva)
                        if ((int((hi if up[i] else lo).pa[i]) if (hi if up[i] else lo).outcome[i] == OK else None)
                            != want))
            print(f"  QEMU gva2gpa: {len(gva) - wrong}/{len(gva)} agree")

        print("\nbulk translate_many (each call from scratch):")
        best = 0.0
        for label, kind, user in (("supervisor read", 0, False), ("user write", 1, True),
                                  ("supervisor fetch", 2, False)):
            times = timed(lambda k=kind, u=user: translate_many(mem, plan, root, vas, k, u),  # type: ignore[misc]
                          args.runs)
            rate, median = vas.size / min(times), vas.size / statistics.median(times)
            best = rate if kind == 0 else best
            print(f"  {label:>17}: best {rate / 1e6:6.1f} M addr/s  median {median / 1e6:6.1f}"
                  f"  ({min(times):.3f} s … {max(times):.3f} s for {vas.size:,})")

        tracemalloc.start()
        one = translate_many(mem, plan, root, vas)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        answer = sum(getattr(one, f).itemsize for f in FIELDS)
        print(f"  peak allocation of one call: {peak / 2**20:.0f} MiB "
              f"({peak / vas.size:.1f} B/address, of which the answer arrays are {answer} B/address)")
        del one

        k = min(args.scalar_count, vas.size)
        print(f"\nscalar walk (the reference hw.walk.walk) over the first {k:,} addresses:")
        scalar = 0.0
        for label, kind, user in (("supervisor read", 0, False), ("user write", 1, True)):
            b = translate_many(mem, plan, root, vas[:k], kind, user)
            dt, bad = scalar_check(mem, plan, root, vas[:k], b, kind, user)
            scalar = scalar or k / dt
            print(f"  {label:>17}: {k / dt / 1e6:6.3f} M addr/s  ({dt:.2f} s); "
                  f"addresses where bulk and scalar answers differ: {bad}")
        print(f"\nsupervisor read: bulk {best / 1e6:.1f} M addr/s = {best / scalar:.0f}x the scalar walk; "
              f"target ≥ 10 M addr/s {'met' if best >= 10e6 else 'NOT met'}")

        if args.small and len(plan.levels) == 4:
            n = min(args.small, vas.size)
            print(f"\nsmall batch, cold: the first {n:,} addresses, translate_many's first call in a fresh process "
                  f"({args.small_runs} processes;\n  median; beside it the scalar peers' first pass over the same "
                  "addresses in the same process):")
            rate = small_batch.report(small_batch.measure(image, vas[:n], args.small_runs), n)
            print(f"target (issue): ≥ 5 M addr/s on {n:,} addresses, first call, cold -> "
                  f"{rate / 1e6:.1f} M addr/s {'MET' if rate >= 5e6 else 'NOT MET'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
