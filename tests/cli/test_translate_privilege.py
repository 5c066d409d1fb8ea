"""``translate``'s privilege level comes from the image's CPU note, and ``--gva2gpa`` answers what QEMU's
``gva2gpa`` answered for every fixture (issue 7 item 4)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from earlymm.cli.main import main
from earlymm.images.minimize import read_capture_text
from earlymm.images.monitor_text import lines

FIXTURES = sorted(p for p in (Path(__file__).resolve().parents[1] / "fixtures").glob("qemu-*") if p.is_dir())
IDS = [p.name for p in FIXTURES]
PTI = next(p for p in FIXTURES if p.name == "qemu-pti")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("fixture", FIXTURES, ids=IDS)
def test_default_cpl_is_the_cpl_qemu_reported(fixture: Path, capsys: pytest.CaptureFixture[str]) -> None:
    want = int(re.search(r"\bCPL=(\d)", read_capture_text(fixture, "registers.txt"))[1])  # type: ignore[index]
    code, out, _ = run(capsys, "translate", str(fixture / "core.elf.gz"), "0xffffffff81000000", "--json")
    assert code == 0 and json.loads(out)[0]["cpl"] == want


def test_a_core_stopped_in_user_mode_walks_at_cpl_3(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    core = str(PTI / "core.elf.gz")
    # The PTI user page table maps cpu_entry_area supervisor-only: user mode faults on it (U/S), ring 0 not.
    code, out, _ = run(capsys, "translate", core, "0xfffffe0000000000", "--json")
    (r,) = json.loads(out)
    assert code == 0 and r["cpl"] == 3 and r["fault"]["vector"] == 14 and int(r["fault"]["error_code"], 16) & 4
    (r0,) = json.loads(run(capsys, "translate", core, "0xfffffe0000000000", "--json", "--cpl", "0")[1])
    assert r0["cpl"] == 0 and r0["ok"]
    # A batch line without "cpl" takes the same default; with it, its own.
    batch = tmp_path / "b.jsonl"
    batch.write_text('{"va": "0xfffffe0000000000"}\n{"va": "0xfffffe0000000000", "cpl": 0}\n')
    a, b = json.loads(run(capsys, "translate", core, "--batch", str(batch), "--json")[1])
    assert (a["cpl"], a["ok"], b["cpl"], b["ok"]) == (3, False, 0, True)


def test_help_says_where_the_cpl_comes_from(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "translate", "--help")
    text = " ".join(out.split())
    assert code == 0 and "CPL in the image's CPU note" in text and "--gva2gpa" in text


@pytest.mark.parametrize("fixture", FIXTURES, ids=IDS)
def test_gva2gpa_mode_reproduces_qemu_for_every_sample(fixture: Path, capsys: pytest.CaptureFixture[str]) -> None:
    want = lines(read_capture_text(fixture, "gva2gpa.txt"))  # 'VA<TAB>reply' as QEMU answered it
    vas = [ln.split("\t")[0] for ln in want]
    code, out, err = run(capsys, "translate", str(fixture / "core.elf.gz"), "--gva2gpa", "--", *vas)
    assert (code, err) == (0, "")
    assert out.splitlines() == want


def test_gva2gpa_ignores_what_the_checked_walk_refuses(capsys: pytest.CaptureFixture[str]) -> None:
    """A user-mode stop: the checked walk at CPL 3 faults on cpu_entry_area, gva2gpa (no checks) maps it."""
    core = str(PTI / "core.elf.gz")
    want = dict(ln.split("\t") for ln in lines(read_capture_text(PTI, "gva2gpa.txt")))
    va = next(v for v, reply in want.items() if v.startswith("0xfffffe") and reply.startswith("gpa:"))
    code, out, _ = run(capsys, "translate", core, "--gva2gpa", va, "--json")
    (doc,) = json.loads(out)
    assert code == 0 and doc["reply"] == want[va] and doc["checks"] is False
    (checked,) = json.loads(run(capsys, "translate", core, va, "--json")[1])
    assert not checked["ok"]


@pytest.mark.parametrize("extra", [["--access", "write"], ["--cpl", "3"], ["--ac"], ["--tlb"]])
def test_gva2gpa_refuses_options_it_would_ignore(extra: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "translate", str(PTI / "core.elf.gz"), "--gva2gpa", "0x1000", *extra)
    assert (code, out) == (2, "") and err.count("\n") == 1 and "do not apply" in err
