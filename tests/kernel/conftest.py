from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from earlymm.arch.modes import Features
from earlymm.kernel.boot import BootResult, boot
from earlymm.kernel.consts import PROFILES
from earlymm.kernel.context import KernelConfig, PoolAccess, Variant
from earlymm.kernel.phases import Phase
from earlymm.platform.pc import MachineConfig, pc_e820

GiB, MiB = 1 << 30, 1 << 20


def make_boot(*, mem: int = 4 * GiB, e820: Any = None, profile: str = "v3.9", variant: str = "merged",
              pool: int = 64, pool_access: str = "high-map", until: Phase | None = None, nx: bool = True,
              force_nx: bool = False, image_size: int = 24 * MiB, trace: bool = True, pv: Any = None,
              **machine: Any) -> BootResult:
    feats = Features(nx=nx, la57=False, pks=False, pge=machine.pop("pge", True), gbpages=machine.pop("gbpages", True),
                     pse=machine.pop("pse", True))
    cfg = MachineConfig(e820=tuple(e820 if e820 is not None else pc_e820(mem)), features=feats, **machine)
    kcfg = KernelConfig(PROFILES[profile], Variant(variant), PoolAccess(pool_access), pool, force_nx=force_nx)
    return boot(cfg, kcfg, until=until, trace=trace, image_size=image_size, pv=pv)


@pytest.fixture
def booted() -> Callable[..., BootResult]:
    return make_boot
