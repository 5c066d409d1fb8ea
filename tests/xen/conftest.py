from __future__ import annotations

from functools import cache

from earlymm.kernel.boot import BootResult
from earlymm.kernel.boot_xen import boot_xen
from earlymm.kernel.consts import PROFILES
from earlymm.kernel.context import KernelConfig
from earlymm.platform.xen.domain import DomainConfig

MiB = 1 << 20


@cache
def xen_boot(mem: int = 256 * MiB, late: bool = False, bug: str = "", seed: int = 2013) -> BootResult:
    """One boot per configuration for the whole session (the results are only read)."""
    return boot_xen(DomainConfig(nr_pages=mem >> 12, seed=seed), KernelConfig(PROFILES["v3.9"]),
                    write_cr3_late=late, trace=True, bug=bug)
