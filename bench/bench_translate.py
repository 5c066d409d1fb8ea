"""Translation benchmark: earlymm's walker against its peers, side by side, on one QEMU core.

    python bench/bench_translate.py [--image PATH] [--count N] [--unicorn-count K] [--profile]

Every translator gets the same list of virtual addresses (a seeded random mix drawn from the core's own
page tables) and is timed over the whole list in one Python loop. In each of ``--runs`` interleaved rounds
every translator is built afresh and makes a cold first pass, then a warm second one; µs/address is the
median over rounds / N, and a ratio is the median over rounds of peer time / earlymm walker time in the
same round, so > 1 means earlymm is faster. The first cold pass's answers are checked against QEMU's
``info tlb`` (and ``gva2gpa`` where sampled).
Nothing here asserts on time; it only reports. See bench/README.md for what each row measures.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import gzip
import importlib.metadata
import io
import pstats
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchlib import git_state

from earlymm.arch.modes import Features
from earlymm.hw.fastwalk import walker_for
from earlymm.hw.memory import PhysMem
from earlymm.hw.walk import OK, compile_plan, walk
from earlymm.images import SegmentImage, open_image
from earlymm.tools.machine_view import make_cpu

REPO = Path(__file__).resolve().parent.parent
DEFAULT_IMAGE = REPO / "captures" / "l4" / "core.elf"
FIXTURE_IMAGE = REPO / "tests" / "fixtures" / "qemu-l4" / "core.elf.gz"
EFER = 0xD01  # SCE | LME | LMA | NXE: QEMU's CPU note has no EFER; registers.txt of the capture says 0xd01
ADDR_BITS = 0x000F_FFFF_FFFF_F000  # bits 51:12 of an entry
K4, M2, G1 = 1 << 12, 1 << 21, 1 << 30
MSR_EFER = 0xC000_0080
SIZE_NAMES = {K4: "4K", M2: "2M", G1: "1G"}

Result = list[int | None]  # per address: the physical address, or None (fault of any kind)


# ---------------------------------------------------------------------------------------------------
# The address set


def canonical(va: int) -> int:
    return va | (0xFFFF << 48) if va & (1 << 47) else va


def is_canonical(va: int) -> bool:
    top = va >> 47
    return top in (0, 0x1FFFF)


@dataclass(frozen=True, slots=True)
class Leaf:
    va: int
    size: int
    pa: int
    slot: tuple[int, int]  # (table physical address, index): the entry in memory that maps this VA range


def enumerate_leaves(mem: PhysMem, root: int) -> list[Leaf]:
    """Every present leaf reachable from ``root`` (4-level), aliases included, like QEMU's ``info tlb``:
    P and PS only, no reserved-bit checks. The bench's own tree walk, independent of earlymm's walker."""
    leaves: list[Leaf] = []

    def visit(table: int, level: int, base: int) -> None:
        shift = 39 - 9 * level
        for i in range(512):
            e = mem.read_u64(table + 8 * i)
            if not e & 1:
                continue
            va = base | (i << shift)
            if level == 3 or (level > 0 and e & 0x80):
                size = 1 << shift
                leaves.append(Leaf(canonical(va), size, e & ADDR_BITS & -size, (table, i)))
            else:
                visit(e & ADDR_BITS, level + 1, va)

    visit(root, 0, 0)
    return leaves


def uniform_table_on_path(mem: PhysMem, root: int, va: int) -> bool:
    """Does the 4-level walk of ``va`` read a table whose 512 entries are all the same value?"""
    table = root
    for shift in (39, 30, 21, 12):
        entries = [mem.read_u64(table + 8 * i) for i in range(512)]
        if len(set(entries)) == 1:
            return True
        e = entries[(va >> shift) & 511]
        if not e & 1 or shift == 12 or (shift != 39 and e & 0x80):
            return False
        table = e & ADDR_BITS
    return False


class LeafMap:
    """VA → PA over a set of leaf pages (page base per size)."""

    def __init__(self, leaves: Sequence[tuple[int, int, int]]) -> None:  # (va, size, pa)
        self.by_size: dict[int, dict[int, int]] = defaultdict(dict)
        for va, size, pa in leaves:
            self.by_size[size][va] = pa

    def lookup(self, va: int) -> int | None:
        if not is_canonical(va):
            return None
        for size, table in self.by_size.items():
            pa = table.get(va & -size)
            if pa is not None:
                return pa | (va & (size - 1))
        return None

    def page_size(self, va: int) -> int:
        for size, table in self.by_size.items():
            if va & -size in table:
                return size
        return 0

    def items(self) -> set[tuple[int, int, int]]:
        return {(va, size, pa) for size, t in self.by_size.items() for va, pa in t.items()}


def open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path), encoding="utf-8")  # type: ignore[arg-type]
    return open(path, encoding="utf-8")


def find_beside(image: Path, name: str) -> Path | None:
    for cand in (image.parent / name, image.parent / (name + ".gz")):
        if cand.exists():
            return cand
    return None


def parse_info_tlb(path: Path) -> LeafMap:
    """QEMU's ``info tlb``: ``VA: PA FLAGS`` per present leaf; flag letter 3 is 'P' for PS=1 (a large page).
    A large page is 1 GiB when VA and PA are 1 GiB-aligned and the next leaf is at least 1 GiB further on."""
    rows: list[tuple[int, int, str]] = []
    with open_text(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[0].endswith(":"):
                rows.append((int(parts[0][:-1], 16), int(parts[1], 16), parts[2]))
    rows.sort()
    out = []
    for k, (va, pa, flags) in enumerate(rows):
        size = K4
        if flags[2] == "P":
            nxt = rows[k + 1][0] if k + 1 < len(rows) else 1 << 64
            size = G1 if not va % G1 and not pa % G1 and nxt - va >= G1 else M2
        out.append((va, size, pa & -size))
    return LeafMap(out)


def parse_gva2gpa(path: Path) -> dict[int, int | None]:
    out: dict[int, int | None] = {}
    with open_text(path) as f:
        for line in f:
            parts = line.split()
            if not parts:
                continue
            va = int(parts[0], 16)
            out[va] = int(parts[-1], 16) if "gpa:" in parts else None
    return out


REGIONS = (  # Linux 6.1, 4-level (Documentation/x86/x86_64/mm.rst)
    (0x0000_0000_0000_0000, 0x0000_8000_0000_0000, "user"),
    (0xFFFF_8880_0000_0000, 0xFFFF_C880_0000_0000, "direct map"),
    (0xFFFF_C900_0000_0000, 0xFFFF_E900_0000_0000, "vmalloc/ioremap"),
    (0xFFFF_EA00_0000_0000, 0xFFFF_EB00_0000_0000, "vmemmap"),
    (0xFFFF_FE00_0000_0000, 0xFFFF_FE80_0000_0000, "cpu_entry_area"),
    (0xFFFF_FF00_0000_0000, 0xFFFF_FF80_0000_0000, "espfix"),
    (0xFFFF_FFFF_8000_0000, 0xFFFF_FFFF_FF00_0000, "kernel text/modules"),
    (0xFFFF_FFFF_FF00_0000, 1 << 64, "fixmap/vsyscall"),
)


def region(va: int) -> str:
    if not is_canonical(va):
        return "non-canonical"
    for lo, hi, name in REGIONS:
        if lo <= va < hi:
            return name
    return "other kernel"


@dataclass
class AddressSet:
    vas: list[int]
    kinds: list[str]  # "mapped", "unmapped-near", "unmapped-far", "non-canonical", "gva2gpa"


def make_addresses(leaves: list[Leaf], truth: LeafMap, gva: dict[int, int | None], n: int, sampling: str,
                   rng: random.Random) -> AddressSet:
    """~90 % mapped (a leaf chosen uniformly, then a byte in it); ~9.5 % canonical but unmapped (two thirds
    within 8 MiB of a mapped page, so the walk goes deep; one third anywhere); 0.5 % non-canonical (half
    anywhere, half mapped addresses with bits 63:48 corrupted); and QEMU's own gva2gpa samples.
    ``sampling``: "slots" weighs each leaf *entry in memory* equally (so the espfix area's 512-fold
    aliases of one PMD count once); "entries" weighs each VA-range mapping equally."""
    vas: list[int] = []
    kinds: list[str] = []
    gsamples = sorted(gva)[: n // 20]
    vas += gsamples
    n_gva = len(vas)
    kinds += ["gva2gpa"] * len(gsamples)
    n_noncanon = n // 200
    n_unmapped = n // 10 - n_noncanon
    n_mapped = n - len(vas) - n_unmapped - n_noncanon
    if sampling == "slots":
        groups: dict[tuple[int, int], list[Leaf]] = defaultdict(list)
        for lf in leaves:
            groups[lf.slot].append(lf)
        pools = list(groups.values())
    else:
        pools = [[lf] for lf in leaves]
    for _ in range(n_mapped):
        lf = rng.choice(rng.choice(pools))
        vas.append(lf.va + rng.randrange(lf.size))
        kinds.append("mapped")
    near = 0
    while near < n_unmapped * 2 // 3:
        lf = rng.choice(leaves)
        va = lf.va + rng.randrange(-(8 << 20), 8 << 20)
        if 0 <= va < 1 << 64 and is_canonical(va) and truth.lookup(va) is None:
            vas.append(va)
            kinds.append("unmapped-near")
            near += 1
    far = 0
    while far < n_unmapped - near:
        va = rng.randrange(1 << 47)
        va = canonical(va | (1 << 47)) if rng.random() < 0.5 else va
        if truth.lookup(va) is None:
            vas.append(va)
            kinds.append("unmapped-far")
            far += 1
    for i in range(n_noncanon):
        if i % 2:  # anywhere in the hole
            va = rng.randrange(1 << 47, (1 << 64) - (1 << 47))
        else:  # a mapped address whose bits 63:48 are not its sign extension (a corrupted pointer)
            low = rng.choice(vas[n_gva:n_gva + n_mapped]) & ((1 << 48) - 1)
            top = rng.randrange(1, 0xFFFF)
            va = (top << 48) | low  # top is neither 0 nor 0xffff, so never canonical
        vas.append(va)
        kinds.append("non-canonical")
    order = list(range(len(vas)))
    rng.shuffle(order)
    return AddressSet([vas[i] for i in order], [kinds[i] for i in order])


# ---------------------------------------------------------------------------------------------------
# The translators. Each factory builds a fresh instance (its own image, memory and caches) and returns a
# function list-of-VAs → list of PA-or-None: one plain loop.

Run = Callable[[Sequence[int]], Result]
Factory = Callable[[], Run]


def earlymm_walker(core_file: Path, cr0: int, cr4: int, root: int) -> Factory:
    """What earlymm runs: the walk specialised for the plan (``hw.fastwalk``), on a fresh ``PhysMem``."""

    def make() -> Run:
        mem = PhysMem(open_image(core_file), absent_zero=True)
        w = walker_for(mem, compile_plan(cr0, cr4, EFER, Features()))

        def run(vas: Sequence[int]) -> Result:
            out: Result = []
            app = out.append
            for va in vas:
                r = w(root, va, 0, False)
                app(r.pa if r.outcome == OK else None)
            return out

        return run

    return make


def earlymm_reference(core_file: Path, cr0: int, cr4: int, root: int) -> Factory:
    """The reference walk: ``hw.walk.walk``, one data-driven loop over the plan's levels."""

    def make() -> Run:
        mem = PhysMem(open_image(core_file), absent_zero=True)
        plan = compile_plan(cr0, cr4, EFER, Features())

        def run(vas: Sequence[int]) -> Result:
            out: Result = []
            app = out.append
            w = walk
            for va in vas:
                r = w(mem, plan, root, va, 0, False)
                app(r.pa if r.outcome == OK else None)
            return out

        return run

    return make


def earlymm_mmu(core_file: Path, regs: tuple[int, int, int, int], method: str, stats: list[object]) -> Factory:
    """``Mmu.probe`` or ``Mmu.translate`` of a fresh ``Cpu``; ``stats`` collects each instance's TLB."""

    def make() -> Run:
        cpu = make_cpu(open_image(core_file), regs, Features(), absent_zero=True, tlb=method == "translate")
        mmu = cpu.mmu
        stats.append(mmu.tlb)
        fn = mmu.probe if method == "probe" else mmu.translate

        def run(vas: Sequence[int]) -> Result:
            out: Result = []
            app = out.append
            for va in vas:
                r = fn(va)
                app(r.pa if r.outcome == OK else None)
            return out

        return run

    return make


def naive_walker(core_file: Path, root: int) -> Factory:
    """The straightforward translation-only walk: read each 8-byte entry with ``read_u64``, follow P and
    PS, nothing else (no rights, no reserved bits, no A/D)."""

    def make() -> Run:
        read_u64 = PhysMem(open_image(core_file), absent_zero=True).read_u64

        def translate(va: int) -> int | None:
            if not is_canonical(va):
                return None
            table = root
            for shift in (39, 30, 21, 12):
                e = read_u64(table + ((va >> shift) & 511) * 8)
                if not e & 1:
                    return None
                if shift == 12 or (shift != 39 and e & 0x80):
                    low = (1 << shift) - 1
                    return (e & ADDR_BITS & ~low) | (va & low)
                table = e & ADDR_BITS
            return None

        def run(vas: Sequence[int]) -> Result:
            out: Result = []
            app = out.append
            for va in vas:
                app(translate(va))
            return out

        return run

    return make


def volatility_layer(core_file: Path, cr3: int, cls_name: str) -> Factory:
    """volatility3's Intel 4-level layer stacked on its own ELF layer over the same file, as its Linux
    automagic would build it (``memory_layer`` → Elf64Layer → FileLayer, ``page_map_offset`` = CR3); each
    instance has its own context, so its table and translation caches start empty."""
    from volatility3.framework import contexts, exceptions
    from volatility3.framework.layers import elf, intel, physical

    def make() -> Run:
        return _volatility_run(core_file, cr3, cls_name, contexts.Context(), exceptions.InvalidAddressException,
                               elf, intel, physical)

    make()  # import errors surface here, before the timing starts
    return make


def _volatility_run(core_file: Path, cr3: int, cls_name: str, ctx: Any, invalid: type[Exception], elf: Any,
                    intel: Any, physical: Any) -> Run:
    base = f"bench.{cls_name}"
    ctx.config[f"{base}.file.location"] = core_file.resolve().as_uri()
    ctx.add_layer(physical.FileLayer(ctx, f"{base}.file", f"{cls_name}-file"))
    ctx.config[f"{base}.elf.base_layer"] = f"{cls_name}-file"
    ctx.add_layer(elf.Elf64Layer(ctx, f"{base}.elf", f"{cls_name}-elf"))
    ctx.config[f"{base}.vm.memory_layer"] = f"{cls_name}-elf"
    ctx.config[f"{base}.vm.page_map_offset"] = cr3 & ~0xFFF
    layer = getattr(intel, cls_name)(ctx, f"{base}.vm", f"{cls_name}-vm")
    ctx.add_layer(layer)

    def run(vas: Sequence[int]) -> Result:
        out: Result = []
        app = out.append
        tr = layer._translate
        for va in vas:
            try:
                app(tr(va)[0])
            except invalid:
                app(None)
        return out

    return run


class UnicornRunner:
    """QEMU's softmmu walker (Unicorn 2.1) over the core's RAM: one ``mov al,[rdi]`` per address at CPL 0
    with the core's CR0/CR3/CR4/EFER. The instruction is written over the guest's RIP in Unicorn's copy of
    RAM (the only place the guest's own tables certainly map executable). A MEM_READ / READ_UNMAPPED hook
    records the physical address reached (hooks see physical addresses in 2.1.x); a fault is caught by
    UC_HOOK_INTR, after which the CPU context saved at start-up is restored (otherwise the next fault
    becomes #DF). ``flush``: flush QEMU's TLB before every access (a cold walk each time)."""

    def __init__(self, image: SegmentImage, core_file: Path, regs: tuple[int, int, int, int], code_pa: int,
                 rip: int) -> None:
        from unicorn import (
            UC_ARCH_X86,
            UC_HOOK_INTR,
            UC_HOOK_MEM_READ,
            UC_HOOK_MEM_READ_UNMAPPED,
            UC_MODE_64,
            UC_PROT_ALL,
            Uc,
        )
        from unicorn.x86_const import UC_X86_REG_CR0, UC_X86_REG_CR3, UC_X86_REG_CR4, UC_X86_REG_MSR

        cr0, cr3, cr4, efer = regs
        uc = self.uc = Uc(UC_ARCH_X86, UC_MODE_64)
        t = time.perf_counter()
        spans: list[list[int]] = []
        for s in image.segments:
            lo, hi = s.start & ~0xFFF, (s.start + s.size + 0xFFF) & ~0xFFF
            if spans and lo <= spans[-1][1]:
                spans[-1][1] = max(spans[-1][1], hi)
            else:
                spans.append([lo, hi])
        if not any(lo <= code_pa < hi for lo, hi in spans):
            spans.append([code_pa & ~0xFFF, (code_pa & ~0xFFF) + 0x1000])
        for lo, hi in spans:
            uc.mem_map(lo, hi - lo, UC_PROT_ALL)
        opener = gzip.open if core_file.suffix == ".gz" else open
        with opener(core_file, "rb") as f:
            for s in image.segments:
                f.seek(s.offset)
                pos = 0
                while pos < s.size:
                    chunk = f.read(min(16 << 20, s.size - pos))
                    uc.mem_write(s.start + pos, chunk)
                    pos += len(chunk)
        self.load_seconds = time.perf_counter() - t
        self.mapped_bytes = sum(hi - lo for lo, hi in spans)
        uc.mem_write(code_pa, b"\x8a\x07")  # mov al, [rdi]
        uc.reg_write(UC_X86_REG_CR4, cr4)
        uc.reg_write(UC_X86_REG_MSR, (MSR_EFER, efer))
        uc.reg_write(UC_X86_REG_CR3, cr3)
        uc.reg_write(UC_X86_REG_CR0, cr0)
        self.rip = rip
        self.ctx0 = uc.context_save()
        self.vector: int | None = None
        self.pa: int | None = None
        self.vectors_by: dict[bool, Counter[int]] = {}
        uc.hook_add(UC_HOOK_INTR, self._intr)
        uc.hook_add(UC_HOOK_MEM_READ, self._read)
        uc.hook_add(UC_HOOK_MEM_READ_UNMAPPED, self._unmapped)

    def _intr(self, uc: object, intno: int, _ud: object) -> None:
        self.vector = intno
        self.uc.emu_stop()

    def _read(self, uc: object, access: int, address: int, size: int, value: int, _ud: object) -> None:
        if self.pa is None:
            self.pa = address

    def _unmapped(self, uc: object, access: int, address: int, size: int, value: int, _ud: object) -> bool:
        if self.pa is None:
            self.pa = address
        return False

    def runner(self, flush: bool) -> Callable[[Sequence[int]], Result]:
        from unicorn import UC_CTL_IO_WRITE, UC_CTL_TLB_FLUSH, UcError
        from unicorn.x86_const import UC_X86_REG_RDI

        uc, rip, end = self.uc, self.rip, self.rip + 2

        def run(vas: Sequence[int]) -> Result:
            out: Result = []
            app = out.append
            self.vectors_by[flush] = vectors = Counter()
            for va in vas:
                self.vector = self.pa = None
                if flush:
                    uc.ctl(UC_CTL_TLB_FLUSH, UC_CTL_IO_WRITE)
                uc.reg_write(UC_X86_REG_RDI, va)
                try:
                    uc.emu_start(rip, end, count=1)
                except UcError:
                    uc.context_restore(self.ctx0)  # READ_UNMAPPED (an MMIO hole): pa was recorded
                if self.vector is not None:
                    vectors[self.vector] += 1
                    uc.context_restore(self.ctx0)
                    app(None)
                else:
                    app(self.pa)
            return out

        return run


# ---------------------------------------------------------------------------------------------------
# Timing and comparison


@dataclass
class Row:
    """One translator. ``fresh``: every round builds a new instance (cold caches); otherwise one instance
    serves all rounds (Unicorn: loading 512 MiB into it per round would measure the loading)."""

    name: str
    factory: Factory
    vas: Sequence[int]
    note: str = ""
    fresh: bool = True
    answers: Result = field(default_factory=list)
    cold: list[float] = field(default_factory=list)  # seconds of the first pass of each round's instance
    warm: list[float] = field(default_factory=list)  # seconds of its second pass
    instance: Run | None = None

    @property
    def n(self) -> int:
        return len(self.vas)

    def us(self, which: str = "cold") -> float:
        return statistics.median(self.cold if which == "cold" else self.warm) / self.n * 1e6

    def runner(self) -> Run:
        if self.fresh or self.instance is None:
            self.instance = self.factory()
        return self.instance


def timed_pass(fn: Run, vas: Sequence[int]) -> tuple[float, Result]:
    """One pass with the GC off (as timeit does): (seconds, answers)."""
    gc.collect()
    gc.disable()
    try:
        t = time.perf_counter()
        out = fn(vas)
        return time.perf_counter() - t, out
    finally:
        gc.enable()


def interleaved(rows: Sequence[Row], runs: int, warm: bool = True) -> None:
    """``runs`` rounds; in each, every row builds its instance and makes its first (cold) pass, then a
    second (warm) one. Round r starts at row r (rotated order), so neither position nor a burst of load
    favours one translator."""
    for rnd in range(runs):
        k = rnd % len(rows)
        for r in [*rows[k:], *rows[:k]]:
            fn = r.runner()
            dt, out = timed_pass(fn, r.vas)
            r.cold.append(dt)
            if not r.answers:
                r.answers = out
            if warm:
                r.warm.append(timed_pass(fn, r.vas)[0])


def median_ratio(peer: Row, base: Row, which: str = "cold") -> float:
    """Median over rounds of peer time / base time in the same round (per address)."""
    a, b = (peer.cold, base.cold) if which == "cold" else (peer.warm, base.warm)
    return statistics.median((x / peer.n) / (y / base.n) for x, y in zip(a, b, strict=True))


def compare(answers: Result, ref: Result) -> tuple[int, Counter[str]]:
    agree = 0
    bad: Counter[str] = Counter()
    for a, b in zip(answers, ref, strict=True):
        if a == b:
            agree += 1
        elif a is None:
            bad["says unmapped"] += 1
        elif b is None:
            bad["says mapped"] += 1
        else:
            bad["other PA"] += 1
    return agree, bad


def same_results(core_file: Path, cr0: int, cr4: int, root: int, vas: Sequence[int]) -> int:
    """How many addresses get the same ``WalkResult`` from the specialised walker and from ``walk``."""
    mem = PhysMem(open_image(core_file), absent_zero=True)
    plan = compile_plan(cr0, cr4, EFER, Features())
    fast = walker_for(mem, plan)
    return sum(1 for va in vas if fast(root, va) == walk(mem, plan, root, va))


def short(name: str) -> str:
    for prefix, label in (("earlymm walker", "earlymm"), ("earlymm walk()", "walk() ref"),
                          ("earlymm Mmu.translate", "Mmu.translate"),
                          ("naive", "naive"), ("volatility3 LinuxIntel32e", "vol3 Linux32e")):
        if name.startswith(prefix):
            return label
    return name[:14]


def dist_version(pkg: str) -> str:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def profile_pass(label: str, fn: Callable[[Sequence[int]], Result], vas: Sequence[int], top: int = 12) -> None:
    prof = cProfile.Profile()
    prof.enable()
    fn(vas)
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(top)
    lines = [ln for ln in buf.getvalue().splitlines() if ln.strip()]
    start = next((i for i, ln in enumerate(lines) if "ncalls" in ln), 0)
    print(f"\ncProfile of one {label} pass over {len(vas)} addresses (sorted by own time):")
    for ln in lines[start:start + top + 1]:
        print("   " + ln)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", type=Path, default=DEFAULT_IMAGE, help=f"QEMU ELF core (default {DEFAULT_IMAGE})")
    ap.add_argument("--count", type=int, default=200_000, help="addresses (default 200000)")
    ap.add_argument("--unicorn-count", type=int, default=None,
                    help="addresses for Unicorn, the first K of the same list (default: all of them)")
    ap.add_argument("--runs", type=int, default=5,
                    help="interleaved rounds (a fresh instance of each translator per round); medians are reported")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--sampling", choices=("slots", "entries"), default="slots",
                    help="mapped addresses: each leaf entry in memory equally likely (slots, default) or each "
                         "VA mapping equally likely (entries: 89%% espfix aliases on the l4 capture)")
    ap.add_argument("--no-unicorn", action="store_true")
    ap.add_argument("--no-volatility", action="store_true")
    ap.add_argument("--profile", action="store_true", help="also cProfile one earlymm walk and one naive pass")
    args = ap.parse_args(argv)

    image_path: Path = args.image
    print("== bench_translate")
    if not image_path.exists():
        if args.image != DEFAULT_IMAGE:
            print(f"error: {image_path} does not exist", file=sys.stderr)
            return 2
        print(f"NOTE: {image_path} is missing; falling back to the committed small fixture {FIXTURE_IMAGE} "
              "(a minimized copy of the same capture: page tables and a few data pages only, zero elsewhere)")
        image_path = FIXTURE_IMAGE
    tmpdir = tempfile.TemporaryDirectory(prefix="earlymm-bench-")
    core_file = image_path
    if image_path.suffix == ".gz":  # volatility3 wants a plain file
        core_file = Path(tmpdir.name) / image_path.stem
        with gzip.open(image_path) as src, open(core_file, "wb") as dst:
            shutil.copyfileobj(src, dst)

    image = open_image(image_path)
    cpu0 = image.cpus[0]
    cr0, cr3, cr4 = cpu0.cr0, cpu0.cr3, cpu0.cr4
    regs = (cr0, cr3, cr4, EFER)
    root = cr3 & ~0xFFF
    print(f"image: {image_path} ({sum(s.size for s in image.segments) >> 20} MiB in {len(image.segments)} "
          f"segments); CR0={cr0:#x} CR3={cr3:#x} CR4={cr4:#x} EFER={EFER:#x} (4-level)")
    print(f"python {sys.version.split()[0]}; earlymm at git {git_state()}")

    # -- ground truth -------------------------------------------------------------------------------------
    t = time.perf_counter()
    leaves = enumerate_leaves(PhysMem(image, absent_zero=True), root)
    mine = LeafMap([(lf.va, lf.size, lf.pa) for lf in leaves])
    slots = {lf.slot for lf in leaves}
    by_size = Counter(lf.size for lf in leaves)
    print(f"page tables: {len(leaves)} present leaves (4K {by_size[K4]}, 2M {by_size[M2]}, 1G {by_size[G1]}) "
          f"in {len(slots)} distinct leaf entries  [{time.perf_counter() - t:.2f}s]")
    tlb_path = find_beside(image_path, "tlb.txt")
    gva_path = find_beside(image_path, "gva2gpa.txt")
    qemu = parse_info_tlb(tlb_path) if tlb_path else None
    gva = parse_gva2gpa(gva_path) if gva_path else {}
    if qemu is not None:
        a, b = qemu.items(), mine.items()
        print(f"QEMU info tlb ({tlb_path.name}): {len(a)} leaves; the bench's own tree walk agrees on "
              f"{len(a & b)}, QEMU only {len(a - b)}, tree walk only {len(b - a)}")
    truth = qemu if qemu is not None else mine
    rng = random.Random(args.seed)
    aset = make_addresses(leaves, mine, gva, args.count, args.sampling, rng)
    vas = aset.vas
    ref = [truth.lookup(va) for va in vas]
    kinds = Counter(aset.kinds)
    regions = Counter(region(va) for va, k in zip(vas, aset.kinds, strict=True) if k == "mapped")
    print(f"addresses: {len(vas)} (seed {args.seed}, sampling={args.sampling}): "
          + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])))
    print("  mapped ones by region: " + ", ".join(f"{k} {v}" for k, v in regions.most_common()))
    gva_bad = sum(1 for va, r in zip(vas, ref, strict=True) if va in gva and gva[va] != r)
    if gva:
        print(f"  QEMU gva2gpa samples: {sum(1 for va in vas if va in gva)}; disagreeing with info tlb: {gva_bad}")

    # -- timing -------------------------------------------------------------------------------------------
    rows: list[Row] = []
    mem = PhysMem(image, absent_zero=True)
    rows.append(Row("earlymm walker, full rights checks", earlymm_walker(core_file, cr0, cr4, root), vas,
                    "hw.fastwalk.walker_for(mem, plan)(root, va, 0, False): what Mmu runs"))
    rows.append(Row("earlymm walk() (the reference loop)", earlymm_reference(core_file, cr0, cr4, root), vas,
                    "hw.walk.walk(mem, plan, root, va, 0, False)"))
    rows.append(Row("earlymm Mmu.probe", earlymm_mmu(core_file, regs, "probe", []), vas, "no TLB, no A/D"))
    tlbs: list[object] = []
    trans_row = Row("earlymm Mmu.translate, TLB on", earlymm_mmu(core_file, regs, "translate", tlbs), vas,
                    "TLB and paging-structure caches on; a cold pass fills them, a warm pass hits them")
    rows.append(trans_row)
    rows.append(Row("naive walker (read_u64, P/PS only)", naive_walker(core_file, root), vas, "this file"))
    if not args.no_volatility:
        try:
            for cls in ("LinuxIntel32e", "Intel32e"):
                rows.append(Row(f"volatility3 {cls}._translate", volatility_layer(core_file, cr3, cls), vas,
                                "on its Elf64Layer over the same file"))
        except ImportError as e:
            print(f"volatility3 not importable ({e}); skipped")
    ucr: UnicornRunner | None = None
    if not args.no_unicorn:
        try:
            k = min(args.unicorn_count or len(vas), len(vas))
            w = walk(mem, compile_plan(cr0, cr4, EFER, Features()), root, cpu0.rip, 2, False)
            if w.outcome != OK:
                raise RuntimeError(f"the guest RIP {cpu0.rip:#x} does not translate for a fetch")
            ucr = UnicornRunner(image, core_file, regs, w.pa, cpu0.rip)
            print(f"Unicorn: {ucr.mapped_bytes >> 20} MiB of guest RAM mapped and written in {ucr.load_seconds:.2f}s; "
                  f"it translates the first {k} addresses")
            flushed, warm_uc = ucr.runner(True), ucr.runner(False)
            rows.append(Row("Unicorn mov al,[rdi], TLB flushed each", lambda: flushed, vas[:k],
                            "QEMU 5 softmmu walk + emu_start per address", fresh=False))
            rows.append(Row("Unicorn mov al,[rdi], TLB warm", lambda: warm_uc, vas[:k],
                            "no flush: a TLB hit, so this is Unicorn's per-instruction floor", fresh=False))
        except ImportError as e:
            print(f"Unicorn not importable ({e}); skipped")
        except Exception as e:  # report, do not hide the rest of the results
            print(f"Unicorn impractical here: {type(e).__name__}: {e}")

    print(f"\ntiming: {args.runs} rounds; in each, every translator builds a fresh instance (its own image, memory "
          "and caches)\n  and makes its first pass over the list (cold), then a second one (warm); the rounds rotate "
          "the order,\n  so a burst of load hits all of them alike. Medians over rounds; ratios are the median of the "
          "per-round\n  ratios; time.perf_counter; GC off during a pass. Unicorn keeps one instance (see its rows).")
    interleaved(rows, args.runs)
    if ucr is not None:
        rows[-2].note += "; vectors " + ", ".join(f"#{v}×{c}" for v, c in sorted(ucr.vectors_by[True].items()))
    for r in rows:
        print(f"  {r.name:<44} cold " + ", ".join(f"{x:.3f}" for x in r.cold) + " s; warm "
              + ", ".join(f"{x:.3f}" for x in r.warm) + " s")
    if tlbs:
        st = tlbs[-1].stats  # type: ignore[attr-defined]
        trans_row.note += f"; TLB of one instance over its two passes: {st.hits} hits, {st.misses} misses"

    # -- table --------------------------------------------------------------------------------------------
    base = rows[0]
    print(f"\n{'translator':<44} {'N':>7} {'cold µs':>8} {'÷ earlymm':>10} {'warm µs':>8} {'÷ earlymm':>10} "
          f"{'= QEMU':>7} {'= earlymm':>9} {'wrong':>6}")
    wrong_detail: dict[str, list[tuple[int, int | None, int | None]]] = {}
    for r in rows:
        n = r.n
        agree_q, _ = compare(r.answers, ref[:n])
        agree_e, _ = compare(r.answers, base.answers[:n])
        print(f"{r.name:<44} {n:>7} {r.us('cold'):>8.3f} {median_ratio(r, base):>9.2f}× {r.us('warm'):>8.3f} "
              f"{median_ratio(r, base, 'warm'):>9.2f}× {agree_q:>7} {agree_e:>9} {n - agree_q:>6}")
        if n - agree_q:
            wrong_detail[r.name] = [(va, got, want) for va, got, want in zip(vas[:n], r.answers, ref[:n], strict=True)
                                    if got != want]
    print("(µs per address, median over rounds; ÷ earlymm = median over rounds of this row's time over the earlymm "
          "walker's\n in the same round: > 1 means earlymm is faster; = QEMU / = earlymm: identical answers, PA or "
          "'unmapped')")
    for r in rows:
        if r.note:
            print(f"  {r.name}: {r.note}")
    same = same_results(core_file, cr0, cr4, root, vas)
    print(f"earlymm walker vs the reference walk(), every WalkResult field (path, rights, A/D, error code…): "
          f"{same}/{len(vas)} identical")

    if wrong_detail:
        print("\nwrong answers (against QEMU info tlb), by region and kind. volatility3's Intel._get_valid_table "
              "returns None\nfor a table whose entries are all identical (a heuristic for Windows' repeated PTEs), so "
              "such a table reads\nas not present; and Intel._translate_entry masks the address to 48 bits, so a "
              "non-canonical address\ntranslates as its low 48 bits (hardware raises #GP; QEMU's gva2gpa says "
              "unmapped):")
        for name, items in wrong_detail.items():
            by: Counter[tuple[str, str]] = Counter()
            example: dict[tuple[str, str], tuple[int, int | None, int | None]] = {}
            for va, got, want in items:
                kind = "says unmapped" if got is None else "says mapped" if want is None else "other PA"
                key = (region(va), kind)
                by[key] += 1
                example.setdefault(key, (va, got, want))
            uniform = sum(1 for va, _, _ in items if uniform_table_on_path(mem, root, va))
            print(f"  {name}: {len(items)}; {uniform} of them walk through a table whose 512 entries are all equal")
            for key, c in by.most_common():
                va, got, want = example[key]
                g = "unmapped" if got is None else f"{got:#x}"
                w_ = "unmapped" if want is None else f"{want:#x}"
                print(f"     {c:>6}  {key[0]:<20} {key[1]:<14} e.g. {va:#018x}: got {g}, QEMU {w_}")

    # -- where the time goes ------------------------------------------------------------------------------
    picks = [r for r in rows
             if r is base or r.name.startswith(("earlymm walk()", "naive", "volatility3 LinuxIntel32e"))]
    cats: dict[str, list[int]] = defaultdict(list)
    for va, k, want in zip(vas, aset.kinds, ref, strict=True):
        size = mine.page_size(va) if want is not None else 0
        cats[f"mapped {SIZE_NAMES[size]}" if size else f"{k} (unmapped)" if k == "gva2gpa" else k].append(va)
    print(f"\nµs/address by kind of address (same translators, fresh instances, {args.runs} interleaved cold "
          "passes over each subset, median):")
    print(f"  {'kind':<22} {'N':>7} " + " ".join(f"{short(r.name):>14}" for r in picks))
    for cat_name in sorted(cats, key=lambda c: -len(cats[c])):
        sub = cats[cat_name]
        if len(sub) < 50:
            continue
        subrows = [Row(r.name, r.factory, sub) for r in picks]
        interleaved(subrows, args.runs, warm=False)
        print(f"  {cat_name:<22} {len(sub):>7} " + " ".join(f"{r.us():>14.3f}" for r in subrows))

    # -- targets ------------------------------------------------------------------------------------------
    print("\ntargets (issue): the earlymm walker, cold, ≥ 5× faster than volatility3 _translate, and no slower than "
          "the naive walker")
    for r in rows:
        if r.name.startswith("volatility3 LinuxIntel32e"):
            x = median_ratio(r, base)
            print(f"  vs volatility3 LinuxIntel32e: {x:.2f}× faster ({r.us():.3f} vs {base.us():.3f} µs/address) -> "
                  f"{'MET' if x >= 5 else 'NOT MET'}")
        if r.name.startswith("naive"):
            x = median_ratio(r, base)
            print(f"  vs naive walker: {x:.2f}× ({'faster' if x >= 1 else 'slower'}) -> "
                  f"{'MET' if x >= 1 else 'NOT MET'}")
    print("versions: " + ", ".join(f"{pkg} {dist_version(pkg)}" for pkg in ("earlymm", "volatility3", "unicorn")))

    if args.profile:
        profile_pass("earlymm walker", earlymm_walker(core_file, cr0, cr4, root)(), vas[:50_000])
        profile_pass("reference walk()", earlymm_reference(core_file, cr0, cr4, root)(), vas[:50_000])
        profile_pass("naive walker", naive_walker(core_file, root)(), vas[:50_000])
    tmpdir.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
