"""The types of 2.6.21's i386 ``paravirt_ops`` (the MMU/CPU ops of :mod:`earlymm.kernel.paravirt.ops` plus
the boot-time members seed 002 added), apart from their implementations in :mod:`.paravirt` so that the
kernel context can name them without importing the backends."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from earlymm.arch.addr import VirtAddr
from earlymm.kernel.paravirt.ops import PvOps


class PvInitOps(Protocol):
    """The boot-time members of 2.6.21's ``paravirt_ops``: ``memory_setup`` (setup_arch's memory map; returns
    who provided it) and ``pagetable_setup_start``/``pagetable_setup_done`` (called by ``pagetable_init``
    with ``swapper_pg_dir``)."""

    name: str

    def memory_setup(self) -> str: ...

    def pagetable_setup_start(self, base: VirtAddr) -> None: ...

    def pagetable_setup_done(self, base: VirtAddr) -> None: ...


@dataclass
class I386PvOps(PvOps):
    init: PvInitOps = field(kw_only=True)
