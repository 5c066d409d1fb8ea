"""Kernel-model properties that hold on every backend (issue 11 item 6): the same v3.9 kernel natively
and as a Xen PV guest — the final direct map translates every sampled RAM page to its frame (the physical
page natively, the p2m's machine frame under Xen), the kernel image is mapped at __START_KERNEL_map,
init_level4_pgt[511] links level3_kernel_pgt. Xen × current is issue 12's."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from earlymm.kernel.boot import BootResult
from earlymm.kernel.consts import START_KERNEL_MAP
from earlymm.kernel.phases import BootOutcome
from tests.kernel.conftest import make_boot
from tests.xen.conftest import xen_boot

MiB = 1 << 20


def _native(profile: str) -> BootResult:
    return make_boot(mem=256 * MiB, profile=profile)


def _xen(profile: str) -> BootResult:
    if profile != "v3.9":
        pytest.skip("the Xen PV path of the current profile is issue 12")
    return xen_boot(mem=256 * MiB)


def frame_of(r: BootResult, pa: int) -> int:
    """Where the machine keeps pseudo-physical ``pa``: itself natively, the p2m's frame under Xen."""
    p2m = getattr(r.ctx.platform, "p2m", None)
    return pa if p2m is None else (int(p2m[pa >> 12]) << 12) | (pa & 0xFFF)


@pytest.fixture(params=[("native", "v3.9"), ("native", "current"), ("xen", "v3.9"), ("xen", "current")],
                ids=lambda p: f"{p[0]}-{p[1]}")
def booted(request: pytest.FixtureRequest) -> BootResult:
    backend, profile = request.param
    run: Callable[[str], BootResult] = _native if backend == "native" else _xen
    return run(profile)


def test_boots(booted: BootResult) -> None:
    assert booted.outcome is BootOutcome.BOOTED, booted.reason
    assert all(c.ok for c in booted.observer.final())


def test_direct_map_reaches_every_sampled_page(booted: BootResult) -> None:
    ctx = booted.ctx
    for pa in (0x0, 0x9F000, 0x10_0000, 0x123_4000, 0x800_0000, 256 * MiB - 4096):
        res = ctx.cpu.mmu.probe(ctx.va(pa))
        assert res.ok and res.pa == frame_of(booted, pa), hex(pa)


def test_kernel_image_at_start_kernel_map(booted: BootResult) -> None:
    ctx = booted.ctx
    for va in (ctx.layout.text, ctx.layout.init_pgt, ctx.layout["__bss_start"]):
        res = ctx.cpu.mmu.probe(va)
        assert res.ok and res.pa == frame_of(booted, va - START_KERNEL_MAP), hex(va)


def test_top_level_links_level3_kernel_pgt(booted: BootResult) -> None:
    ctx = booted.ctx
    raw = ctx.rd(ctx.layout.init_pgt + 8 * 511)
    assert ctx.entry_val(raw) & ((1 << 46) - 1) & ~0xFFF == ctx.pa(ctx.layout["level3_kernel_pgt"])
    assert raw & ((1 << 46) - 1) & ~0xFFF == frame_of(booted, ctx.pa(ctx.layout["level3_kernel_pgt"]))
