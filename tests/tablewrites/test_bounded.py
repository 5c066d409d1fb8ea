"""The trace stays bounded: a builder's run of new leaves (``set_many``, 512 consecutive 2 MiB entries per PMD
page, init_64.c's phys_pmd_init) is one record, not one per entry; VA bases never follow a cycle."""

from __future__ import annotations

from collections import Counter

from earlymm.arch.modes import Features
from earlymm.kernel.boot import boot
from earlymm.kernel.consts import PROFILES
from earlymm.kernel.context import KernelConfig
from earlymm.platform.pc import MachineConfig, pc_e820
from earlymm.tools.tablewrites import WriteTracer
from earlymm.tools.tablewrites.tables import Table


def test_direct_map_leaves_fold() -> None:
    tr = WriteTracer()
    machine = MachineConfig(e820=tuple(pc_e820(256 << 30)), features=Features(gbpages=False))
    boot(machine, KernelConfig(PROFILES["v3.9"]), instrument=tr.attach)
    leaves = [r for r in tr.runs if r.function == "phys_pmd_init" and r.new & 0x81 == 0x81]
    assert leaves
    # 2 MiB leaves of consecutive physical addresses: each run steps by PMD_SIZE …
    assert all(r.new_step == 2 << 20 for r in leaves if r.count > 1)
    # … and a PMD page of the direct map holds at most a few of them (RAM holes split a page's run)
    per_table = Counter(id(r.table) for r in leaves)
    assert max(per_table.values()) <= 3
    mapped = sum(r.count for r in leaves)
    assert mapped >= (250 << 30) >> 21  # most of 256 GiB is mapped with 2 MiB pages
    assert len(tr.runs) * 100 < tr.totals.entries


def test_self_link_is_not_followed() -> None:
    root = Table("root", 0x1000, 4, "symbol", root=True)
    t = Table("t", 0x2000, 3, "linked", links=[(root, 1)])
    t.link(t, 5)  # a hostile self-map: the page's entry 5 points at itself
    assert t.bases({}) == [(1 << 39, 4)]
