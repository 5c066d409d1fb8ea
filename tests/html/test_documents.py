"""The page data without a browser: recording snapshots changes nothing in the boot, the snapshots show
the tables as the event stream says they were, and bad --html targets are refused before any work."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from earlymm.arch.modes import Features
from earlymm.kernel.boot import boot
from earlymm.kernel.consts import PROFILES
from earlymm.kernel.context import KernelConfig, PoolAccess
from earlymm.platform.pc import MachineConfig, pc_e820
from earlymm.tools.boot_report import to_json
from earlymm.tools.html import BootRecorder
from earlymm.tools.html.documents import boot_document


def _boot(recorder: BootRecorder | None, **kernel: object) -> object:
    machine = MachineConfig(e820=tuple(pc_e820(4 << 30)), kernel_at=0x3000000,
                            features=Features(la57=False, pks=False))
    return boot(machine, KernelConfig(PROFILES["v3.9"], **kernel), trace=True,  # type: ignore[arg-type]
                pv=recorder.attach if recorder else None, listeners=[recorder.on_event] if recorder else [])


@pytest.mark.parametrize("kernel", [{}, {"pool_access": PoolAccess.PAGE_OFFSET}])  # booted; nested faults, halt
def test_recording_changes_nothing_in_the_run(kernel: dict[str, object]) -> None:
    rec = BootRecorder()
    with_rec, without = _boot(rec, **kernel), _boot(None, **kernel)
    a, b = to_json(with_rec, events=True), to_json(without, events=True)  # type: ignore[arg-type]
    assert a == b  # events, figures (memory pages touched and TLB hits included), invariants
    assert rec.views and all(v["event"] >= 0 for v in rec.views)


def test_snapshots_follow_the_cr3_writes_and_share_unchanged_tables() -> None:
    rec = BootRecorder()
    result = _boot(rec)
    doc = boot_document(result, rec)  # type: ignore[arg-type]
    events = result.ctx.trace.events  # type: ignore[attr-defined]
    for v in doc["views"]:
        # the CR3 a snapshot shows is the last CR3 written before its event
        writes = [e.new for e in events[:v["event"] + 1] if e.kind == "cr_write" and e.reg == "cr3"]
        assert int(v["cr3"], 16) == writes[-1]
    # a table that did not change is one node however many snapshots show it
    keys = [(n[0], n[1], json.dumps(n[2])) for n in doc["nodes"]]
    assert len(keys) == len(set(keys))
    assert len(doc["nodes"]) < 4 * len(doc["views"])


def test_bad_html_targets_are_refused_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from earlymm.cli.main import main

    link = tmp_path / "link.html"
    link.symlink_to(tmp_path / "elsewhere.html")
    for argv in (["boot", "--html", str(tmp_path)], ["boot", "--html", str(link)],
                 ["ptdump", "/nonexistent.core", "--html", "/dev/null"]):
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "HTML file" in err, err
    assert not (tmp_path / "elsewhere.html").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.html"]


def test_a_hostile_string_cannot_end_the_data_script(tmp_path: Path) -> None:
    from earlymm.tools.html.page import render

    html = render({"kind": "ptdump", "title": "</script><script>alert(1)</script>", "source": "</script>",
                   "modes": {}, "nodes": [], "flags": [], "views": []})
    assert html.count("</script>") == 2  # the data element's and the code's own
    data = re.search(r'id="earlymm-data">(.*?)</script>', html, re.S)
    assert data is not None and json.loads(data[1])["source"] == "</script>"


def test_a_long_pool_series_is_thinned_keeping_its_range() -> None:
    from earlymm.tools.html.documents import thin

    series = [[i, (i % 7) if i % 1000 else 64] for i in range(100_000)]  # thousands of resets, a few peaks
    got = thin(series)
    assert len(got) <= 4 * 2000 and got[0] == series[0] and got[-1] == series[-1]
    assert got == sorted(got) and {p[1] for p in got} == {p[1] for p in series}
    assert [p for p in got if p[1] == 64] == [p for p in series if p[1] == 64]
    short = [[0, 0], [5, 2]]
    assert thin(short) == short
