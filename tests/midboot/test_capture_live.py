"""The mid-boot capture end to end: a real kernel under QEMU, stopped by gdb, recorded over QMP, and the
recording passes every check the committed fixtures pass (QEMU's own ``info tlb`` as the oracle for the
enumerator, the kernel's counters against its tables, the printed RAM against the final direct map).
When the fetched kernel and QEMU are those the committed 512 MiB fixture was made with, the fresh
recording must have the same leaves and links at every stop: the capture is reproducible."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from earlymm.tools.midboot.fixture import STOP_ORDER, load_fixture
from tests.midboot.support import (
    MIDBOOT,
    check_direct_map,
    check_stop_basics,
    check_tlb,
    check_zero_page_e820,
    pool_pages_linked,
    space,
)
from tests.qemu_support import need_tools


@pytest.mark.slow
@pytest.mark.qemu
@pytest.mark.ci_qemu
def test_midboot_capture_of_a_small_machine(tmp_path: Path) -> None:
    kernel = need_tools("qemu-system-x86_64", "gdb")
    from earlymm.tools.qemu_capture import main as capture_main

    out = tmp_path / "midboot-qemu64-512m"
    assert capture_main(["midboot", "--kernel", str(kernel), "--cpu", "qemu64", "--mem", "512M",
                         "--out", str(out), "--timeout", "300"]) == 0
    fx = load_fixture(out)
    assert [s.name for s in fx.stops] == list(STOP_ORDER)
    for stop in fx.stops:
        assert check_stop_basics(fx, stop) == []
        assert check_tlb(fx, stop) == []
        assert pool_pages_linked(fx, stop) == stop.next_early_pgt
    assert check_direct_map(fx, fx.stop("idt_setup_early_pf")) == []
    assert check_zero_page_e820(fx) == []
    assert [e["function"].split("+")[0] for e in fx.stop("init_mem_mapping").early_exceptions][:1] == ["copy_bootdata"]

    committed = load_fixture(next(p for p in MIDBOOT if p.name == out.name))
    qemu = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True, check=True).stdout
    if committed.meta["kernel_release"] != fx.meta["kernel_release"] or committed.meta["qemu_version"] not in qemu:
        return  # another kernel or QEMU: the checks above are all that can be asked
    for stop in fx.stops:
        mine, theirs = space(fx, stop), space(committed, committed.stop(stop.name))
        assert mine.leaves == theirs.leaves, stop.name
        assert mine.links == theirs.links, stop.name
        assert stop.next_early_pgt == committed.stop(stop.name).next_early_pgt
