"""``earlymm boot --pv xen``: bad combinations are one line and exit 2; the bug class Xen catches is
reported in Xen's words (issue 11 items 5 and 7)."""

from __future__ import annotations

from pathlib import Path

import pytest

from earlymm.cli.main import main
from earlymm.kernel.phases import BootOutcome
from tests.xen.conftest import xen_boot


@pytest.mark.parametrize("argv, words", [
    (["--pv", "hyperv"], "--pv"),
    (["--xen-write-cr3", "late"], "--xen-write-cr3 needs --pv xen"),
    (["--xen-domid", "3"], "--xen-domid needs --pv xen"),
    (["--pv", "xen", "--kernel-at", "0x2000000"], "--kernel-at means nothing for a Xen PV domain"),
    (["--pv", "xen", "--e820", "/dev/null"], "--e820 means nothing"),
    (["--pv", "xen", "--paging", "5"], "--paging means nothing"),
    (["--pv", "xen", "--bda-base", "639"], "--bda-base means nothing"),
    (["--pv", "xen", "--profile", "current"], "--profile v3.9"),
    (["--pv", "xen", "--mem", "16M"], "at least 64 MiB"),
    (["--pv", "xen", "--xen-domid", "0"], "--xen-domid"),
    (["--pv", "xen", "--xen-write-cr3", "sometimes"], "--xen-write-cr3"),
])
def test_bad_input(capsys: pytest.CaptureFixture[str], argv: list[str], words: str) -> None:
    with pytest.raises(SystemExit) as ex:
        raise SystemExit(main(["boot", *argv]))
    err = capsys.readouterr().err
    assert ex.value.code == 2 and len(err.strip().splitlines()) == 1 and words in err, err
    assert "Traceback" not in err


def test_a_writable_page_table_is_refused_at_the_pin() -> None:
    """Xen will not take a frame as a page table while any writable mapping of it exists."""
    r = xen_boot(bug="writable-pagetable")
    assert r.outcome is BootOutcome.PANIC and "kernel BUG at arch/x86/xen/mmu.c" in r.reason
    console = "\n".join(r.ctx.platform.xen.console)  # type: ignore[attr-defined]
    assert "Bad type (saw 7000000000000001 != exp 2000000000000000)" in console  # writable ×1, wanted L2
    assert "Error while pinning" in console


def test_superpages_asked_for_by_a_kernel_that_believes_pse() -> None:
    """A raw CPUID shows PSE; v3.9's set_pte ignores mmu_update's result, so the refused 2 MiB entries stay
    empty and the kernel later faults on its own direct map."""
    r = xen_boot(bug="native-cpuid")
    console = r.ctx.platform.xen.console  # type: ignore[attr-defined]
    assert any(line.endswith("Attempt to map superpage without allowsuperpage flag in hypervisor")
               for line in console)
    assert r.outcome.crashed


def test_saved_core_holds_machine_frames(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Like a real Xen dump: CR3 and the entries are machine addresses; translate walks them."""
    import json

    from earlymm.platform.xen.domain import DomainConfig  # noqa: F401  (documentation of where p2m comes from)

    core = tmp_path / "domu.elf"
    assert main(["boot", "--pv", "xen", "--mem", "256M", "--save-core", str(core)]) == 0
    capsys.readouterr()
    r = xen_boot()  # the same configuration: the same shuffle (seed 2013)
    p2m = r.ctx.platform.p2m  # type: ignore[attr-defined]
    assert main(["translate", str(core), "0xffff880001234000", "--json"]) == 0
    (doc,) = json.loads(capsys.readouterr().out)
    assert int(doc["pa"], 16) == int(p2m[0x1234]) << 12 and int(p2m[0x1234]) != 0x1234
