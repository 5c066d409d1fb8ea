"""What the real 6.1 kernel of each fixture did that the table comparison (test_compare.py) does not see:
memblock — the memory it was given, the reservations it made before init_mem_mapping, and every block it
handed out (the real-mode trampoline, real_end's probe, the page-table pages past BRK), all printed by the
kernel itself under ``memblock=debug`` — and the bytes of level2_kernel_pgt, not-present entries included,
which cleanup_highmap zeroes.

The model runs in-process here (the same arguments ``earlymm boot`` gets from tests/midboot/test_compare.py),
with its memblock watched; its table pages come from that module's per-session runs.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path

import pytest

from earlymm.arch.addr import merge_ranges
from earlymm.cli.boot_cmd import machine_config, read_kernel_symbols
from earlymm.cli.main import build_parser
from earlymm.kernel import memblock as memblock_mod
from earlymm.kernel.boot import boot
from earlymm.kernel.consts import PROFILES
from earlymm.kernel.context import KernelConfig, PoolAccess, Variant
from earlymm.kernel.phases import Phase
from earlymm.tools.midboot.fixture import Fixture, load_fixture
from earlymm.tools.midboot.model import boot_args, e820_text, symbols_text
from tests.midboot.support import MIDBOOT, START_KERNEL_MAP
from tests.midboot.test_compare import model_run

IDS = [p.name for p in MIDBOOT]
HEX = r"(0x[0-9a-f]+)"
MEMORY = re.compile(rf"\] +memory\[0x[0-9a-f]+\]\s+\[{HEX}-{HEX}\]")
RESERVED = re.compile(rf"\] +reserved\[0x[0-9a-f]+\]\s+\[{HEX}-{HEX}\]")
ALLOC = re.compile(rf"memblock_phys_alloc_range: (\d+) bytes align={HEX} from={HEX} max_addr={HEX} (\w+)")
RESERVE = re.compile(rf"memblock_reserve: \[{HEX}-{HEX}\] (\w+)")


@dataclass(frozen=True)
class Found:
    """One memblock allocation: the request (size, align, from, max_addr), who asked, what it got."""

    size: int
    align: int
    start: int
    end: int
    caller: str
    got: int


@dataclass
class RealMemblock:
    memory: list[tuple[int, int]]
    reserved_at_dump: list[tuple[int, int]]  # memblock_dump_all at the end of e820__memblock_setup
    reserved_after: list[tuple[int, int]]  # memblock_reserve lines after the dump (allocations included)
    found: list[Found]


def real_memblock(fx: Fixture) -> RealMemblock:
    lines = fx.console.splitlines()
    dump = next(i for i, ln in enumerate(lines) if "MEMBLOCK configuration:" in ln)
    memory = [(int(a, 16), int(b, 16) + 1) for ln in lines if (m := MEMORY.search(ln)) for a, b in [m.groups()]]
    reserved = [(int(a, 16), int(b, 16) + 1) for ln in lines if (m := RESERVED.search(ln)) for a, b in [m.groups()]]
    after = [(int(a, 16), int(b, 16) + 1) for ln in lines[dump:] if (m := RESERVE.search(ln))
             for a, b, _who in [m.groups()]]
    found = []
    for i, ln in enumerate(lines):
        m = ALLOC.search(ln)
        if m:
            r = RESERVE.search(lines[i + 1])
            assert r and r.group(3) == "memblock_alloc_range_nid", lines[i + 1]
            size, align, start, end, caller = m.groups()
            found.append(Found(int(size), int(align, 16), int(start, 16), int(end, 16), caller, int(r.group(1), 16)))
    return RealMemblock(memory, reserved, after, found)


@dataclass
class ModelMemblock:
    memory: list[tuple[int, int]]
    reserves: list[tuple[int, int]]  # every memblock_reserve call before init_mem_mapping, in order
    found: list[tuple[int, int, int, int, int]]  # find_in_range(start, end, size, align) → result
    console: list[str]
    max_pfn: int


_MODEL: dict[str, ModelMemblock] = {}


def model_memblock(fx: Fixture, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> ModelMemblock:
    if fx.name in _MODEL:
        return _MODEL[fx.name]
    e820, syms = tmp / "m.e820", tmp / "m.kallsyms"
    e820.write_text(e820_text(fx))
    syms.write_text(symbols_text(fx))
    args = build_parser("boot").parse_args(boot_args(fx, e820, syms))
    kernel = KernelConfig(PROFILES[args.profile], Variant(args.variant), PoolAccess(args.pool_access), args.pool,
                          symbols=read_kernel_symbols(args.kernel_symbols, args.image_size))
    reserves: list[tuple[int, int]] = []
    found: list[tuple[int, int, int, int, int]] = []
    reserve, find = memblock_mod.Memblock.reserve, memblock_mod.Memblock.find_in_range
    state = {"in_imm": False}

    def spy_reserve(self: memblock_mod.Memblock, base: int, size: int) -> None:
        if not state["in_imm"]:
            reserves.append((base, size))
        reserve(self, base, size)

    def spy_find(self: memblock_mod.Memblock, start: int, end: int, size: int, align: int) -> int:
        got = find(self, start, end, size, align)
        found.append((start, end, size, align, got))
        if size == 2 << 20:  # real_end's probe: init_mem_mapping has begun
            state["in_imm"] = True
        return got

    monkeypatch.setattr(memblock_mod.Memblock, "reserve", spy_reserve)
    monkeypatch.setattr(memblock_mod.Memblock, "find_in_range", spy_find)
    r = boot(machine_config(args), kernel, until=Phase.INIT_MEM_MAPPING, trace=False)
    assert r.outcome.value == "stopped", r.reason
    _MODEL[fx.name] = ModelMemblock(list(r.ctx.mm.memblock.memory), reserves, found, list(r.ctx.console),
                                    r.ctx.mm.max_pfn)
    return _MODEL[fx.name]


E820_LINES = ("BIOS-provided physical RAM map:", "BIOS-e820: ", "user-defined physical RAM map:", "user: ")


@pytest.mark.parametrize("path", MIDBOOT, ids=IDS)
def test_the_e820_map_is_printed_as_the_kernel_printed_it(path: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """e820__memory_setup prints the firmware's map (sanitised) as BIOS-e820; e820__finish_early_params, after
    mem=/memmap=, the edited one as 'user:' — line for line what the kernel wrote to its console."""
    fx = load_fixture(path)
    real = [ln.split("] ", 1)[1] for ln in fx.console.splitlines() if "] " in ln]
    real = [ln for ln in real if ln.startswith(E820_LINES)]
    model = [ln for ln in model_memblock(fx, tmp_path, monkeypatch).console if ln.startswith(E820_LINES)]
    assert model == real


@pytest.mark.parametrize("path", MIDBOOT, ids=IDS)
def test_max_pfn_is_the_end_of_ram_the_kernel_printed(path: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """e820__end_of_ram_pfn: the end of the highest E820 RAM entry (reserved ones above it, like QEMU's
    0xfd00000000 window, do not count); setup_arch prints it as 'last_pfn = … max_arch_pfn = …' (the first
    such line: the second is max_low_pfn)."""
    fx = load_fixture(path)
    m = re.search(r"last_pfn = (0x[0-9a-f]+) max_arch_pfn", fx.console)
    assert m
    assert model_memblock(fx, tmp_path, monkeypatch).max_pfn == int(m.group(1), 16)


@pytest.mark.parametrize("path", MIDBOOT, ids=IDS)
def test_memblock_memory_is_what_the_kernel_printed(path: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """e820__memblock_setup: the e820 RAM (after trim_bios_range, mem=, memmap=) added, partial pages
    trimmed; the dump's memory[] lines."""
    fx = load_fixture(path)
    assert model_memblock(fx, tmp_path, monkeypatch).memory == real_memblock(fx).memory


@pytest.mark.parametrize("path", MIDBOOT, ids=IDS)
def test_early_reservations_match_the_dump(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What memblock held reserved when e820__memblock_setup dumped it: the kernel and BRK, [0, 64K), the
    ramdisk, the BIOS regions (and the MP table inside them, which the model does not scan for) — every
    reservation the model makes before init_mem_mapping but reserve_real_mode's two, merged."""
    fx = load_fixture(path)
    mod = model_memblock(fx, tmp_path, monkeypatch)
    tramp = next(f for f in mod.found if f[1] == 1 << 20)  # reserve_real_mode's find: (0, 1M, size, align, got)
    early = [(b, b + s) for b, s in mod.reserves if (b, s) not in ((tramp[4], tramp[2]), (0, 1 << 20))]
    assert merge_ranges(early) == merge_ranges(real_memblock(fx).reserved_at_dump)


def test_61_reserves_the_low_64k_before_the_dump(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """6.1 setup.c early_reserve_memory: ``memblock_reserve(0, SZ_64K)`` right after the kernel, before
    e820__memory_setup — so [0, 64K) is in e820__memblock_setup's dump, and reserved before
    reserve_real_mode looks below 1 MiB: everything reserved before the trampoline is the dump."""
    fx = load_fixture(MIDBOOT[0])
    mod = model_memblock(fx, tmp_path, monkeypatch)
    tramp = next(f for f in mod.found if f[1] == 1 << 20)[4]
    before = mod.reserves[:next(i for i, (b, _s) in enumerate(mod.reserves) if b == tramp)]
    assert merge_ranges([(b, b + s) for b, s in before]) == merge_ranges(real_memblock(fx).reserved_at_dump)


@pytest.mark.parametrize("path", MIDBOOT, ids=IDS)
def test_every_memblock_allocation_matches_the_kernels(path: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Each memblock_phys_alloc_range the kernel printed — reserve_real_mode's trampoline (below 1 MiB),
    memory_map_top_down's real_end probe (PMD_SIZE at PMD_SIZE alignment in [1M, max_pfn)), and each
    alloc_low_pages page (from min_pfn_mapped to max_pfn_mapped: the top-down rounds' state) — is the
    model's find_in_range with the same size, alignment and range, finding the same block; then the
    trampoline and the first 1 MiB are reserved as the kernel printed."""
    fx = load_fixture(path)
    real, mod = real_memblock(fx), model_memblock(fx, tmp_path, monkeypatch)
    assert [(s, e, sz, al, got) for s, e, sz, al, got in mod.found] == \
        [(f.start, f.end, f.size, f.align, f.got) for f in real.found]
    assert [f.caller for f in real.found][:2] == ["reserve_real_mode", "init_mem_mapping"]
    tramp = real.found[0]
    i = mod.reserves.index((tramp.got, tramp.size))
    assert mod.reserves[i:i + 2] == [(tramp.got, tramp.size), (0, 1 << 20)] == \
        [(a, b - a) for a, b in real.reserved_after[:2]]


def _l2(stop_pages: dict[int, bytes], pa: int) -> tuple[int, ...]:
    return struct.unpack("<512Q", stop_pages[pa >> 12])


@pytest.mark.parametrize("until", ["setup_arch", "init_mem_mapping"])
@pytest.mark.parametrize("path", MIDBOOT, ids=IDS)
def test_level2_kernel_pgt_bytes_below_512m(path: Path, until: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    """cleanup_highmap sets every non-none level2_kernel_pgt entry outside [_text, roundup(_brk_end, 2M))
    to 0 — the not-present ones __startup_64 left behind too (pmd_none is 'no bits set'). The first 256
    entries (512 MiB) byte for byte, as the real kernel holds them."""
    fx = load_fixture(path)
    stop = next(s for s in fx.stops if s.model_until == until)
    model = model_run(fx, until, tmp_path_factory)
    real_pa = fx.symbol("level2_kernel_pgt") - START_KERNEL_MAP + int(stop.info["phys_base"], 16)
    syms = model.state["symbols"]
    model_pa = int(syms["level2_kernel_pgt"], 16) - START_KERNEL_MAP + int(model.state["phys_base"], 16)
    real = _l2(stop.pages, real_pa)
    mine = struct.unpack("<512Q", model.memory.frame(model_pa >> 12) or bytes(4096))
    assert mine[:256] == real[:256]


def test_level2_kernel_pgt_bytes_above_512m(tmp_path_factory: pytest.TempPathFactory) -> None:
    fx = load_fixture(MIDBOOT[0])
    stop = next(s for s in fx.stops if s.model_until == "setup_arch")
    model = model_run(fx, "setup_arch", tmp_path_factory)
    real_pa = fx.symbol("level2_kernel_pgt") - START_KERNEL_MAP + int(stop.info["phys_base"], 16)
    model_pa = (int(model.state["symbols"]["level2_kernel_pgt"], 16) - START_KERNEL_MAP
                + int(model.state["phys_base"], 16))
    assert _l2(stop.pages, real_pa)[256:] == (0,) * 256
    assert struct.unpack("<512Q", model.memory.frame(model_pa >> 12) or bytes(4096))[256:] == (0,) * 256


def test_level2_kernel_pgt_bytes_at_x86_64_start_kernel(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Before cleanup_highmap: head_64.S fills level2_kernel_pgt with PMDS(0, __PAGE_KERNEL_LARGE_EXEC,
    KERNEL_IMAGE_SIZE/PMD_SIZE) — 512 entries, KERNEL_IMAGE_SIZE being 1 GiB with RANDOMIZE_BASE — and
    __startup_64 (head64.c @ v6.1:300-310) only clears _PAGE_PRESENT outside _text.._end, so the entries
    above 512 MiB still hold bytes at x86_64_start_kernel. All 512, byte for byte, as the real kernel has them."""
    fx = load_fixture(MIDBOOT[0])
    stop = next(s for s in fx.stops if s.model_until == "startup_64")
    model = model_run(fx, "startup_64", tmp_path_factory)
    real_pa = fx.symbol("level2_kernel_pgt") - START_KERNEL_MAP + int(stop.info["phys_base"], 16)
    model_pa = (int(model.state["symbols"]["level2_kernel_pgt"], 16) - START_KERNEL_MAP
                + int(model.state["phys_base"], 16))
    real = _l2(stop.pages, real_pa)
    assert any(real[256:])  # the real kernel's own evidence that its image has 1 GiB of PMDs
    assert struct.unpack("<512Q", model.memory.frame(model_pa >> 12) or bytes(4096)) == real
