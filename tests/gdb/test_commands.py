"""The gdb command file and ``earlymm-translate`` against a fake gdb over real-kernel fixtures.

The fake stub serves a QEMU capture's memory and registers, so the command must give the answers QEMU's
own ``gva2gpa`` gave at capture time, reading the tables in physical-memory mode and leaving the stub
in the mode it found it, whatever happens.
"""

from __future__ import annotations

import importlib
import json
import re
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from earlymm.images import open_image
from earlymm.images.minimize import read_capture_text
from earlymm.images.monitor_text import parse_gva2gpa_file
from earlymm.tools.gdb import earlymm_gdb, script_path
from tests.gdb.fake_gdb import FakeStub, GdbError, make_gdb, run_command, run_command_streams

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def fixture_stub(name: str, **kw: Any) -> FakeStub:
    """A stub holding the capture's memory, with the registers QEMU's gdbstub would report."""
    image = open_image(FIXTURES / name / "core.elf.gz")
    note = image.cpus[0]
    regs = read_capture_text(FIXTURES / name, "registers.txt")
    m = re.search(r"EFER=([0-9a-f]+)", regs)
    assert m
    registers = {"cr0": note.cr0, "cr3": note.cr3, "cr4": note.cr4, "efer": int(m[1], 16), "rip": note.rip}
    return FakeStub(image, registers, **kw)


@pytest.fixture
def gdb_for(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Source the command file into a fake gdb attached to ``stub``; returns the fake module."""

    def attach(stub: FakeStub) -> types.ModuleType:
        gdb = make_gdb(stub)
        monkeypatch.setitem(sys.modules, "gdb", gdb)
        earlymm_gdb._earlymm_gdb_setup(str(script_path().parent))
        assert {"earlymm-translate", "earlymm-ptdump"} <= set(gdb.registered)
        return gdb

    return attach


def translate_json(gdb: types.ModuleType, args: str) -> list[dict[str, Any]]:
    out = json.loads(run_command(gdb, f"earlymm-translate --json {args}"))
    assert isinstance(out, list)
    return out


@pytest.mark.parametrize("name", ["qemu-l4", "qemu-l5"])
def test_translate_agrees_with_gva2gpa(name: str, gdb_for: Any) -> None:
    stub = fixture_stub(name)
    gdb = gdb_for(stub)
    samples = parse_gva2gpa_file(read_capture_text(FIXTURES / name, "gva2gpa.txt"))
    # gva2gpa checks no permissions; a CPL 0 read with EFLAGS.AC=1 is refused by none of these guests.
    results = translate_json(gdb, "--ac " + " ".join(f"{va:#x}" for va, _ in samples))
    assert len(results) == len(samples)
    bad = []
    for (va, want), got in zip(samples, results, strict=True):
        if want is None:
            if got["ok"] or got["fault"]["vector"] not in (13, 14):
                bad.append(f"{va:#x}: QEMU Unmapped, earlymm {got['pa']}")
        elif got["pa"] != f"{want:#x}":
            bad.append(f"{va:#x}: QEMU {want:#x}, earlymm {got['pa']} {got['fault']}")
    assert bad == []
    assert stub.phys_mode == 0
    # Mode 1 for the walk, then back: query, on, off (the dcache flush is not a packet).
    assert stub.packets == ["qqemu.PhyMemMode", "Qqemu.PhyMemMode:1", "Qqemu.PhyMemMode:0"]
    # Each table frame crosses the wire once, however many addresses walk through it.
    pages = [pa for pa, _ in stub.phys_reads]
    assert len(pages) == len(set(pages)) and all(n == 4096 for _, n in stub.phys_reads)


def test_text_output_and_expressions(gdb_for: Any) -> None:
    stub = fixture_stub("qemu-l4")
    gdb = gdb_for(stub)
    text = run_command(gdb, "earlymm-translate $rip --access exec")
    rip = stub.registers["rip"]
    assert text.startswith(f"{rip:#018x} exec cpl=0 [4-level paging]\n")
    assert "=> pa 0x" in text and "exec)" in text
    # gdb expressions are evaluated in the stub's normal mode, before the switch (see fake parse_and_eval).
    assert stub.packets[0] == "qqemu.PhyMemMode"


def test_before_a_direct_map(gdb_for: Any) -> None:
    """Tables reachable only physically: the answer must not depend on the guest's own mappings."""
    stub = fixture_stub("qemu-l4")
    gdb = gdb_for(stub)
    (direct,) = translate_json(gdb, f"{0xFFFF888000000000 + stub.registers['cr3']:#x}")
    # The fixture's guest has a direct map; the point is that the walk read 4 KiB physical frames, not
    # the fake's virtual filler (0xAA…), which would decode as garbage entries.
    assert direct["ok"] and direct["pa"] == f"{stub.registers['cr3']:#x}"
    assert all(e["entry"] != "0xaaaaaaaaaaaaaaaa" for e in direct["levels"])


def test_mode_restored_after_a_failure(gdb_for: Any) -> None:
    stub = fixture_stub("qemu-l4")
    gdb = gdb_for(stub)
    stub.fail_reads_with = ZeroDivisionError  # not a gdb error: an unexpected failure mid-walk
    with pytest.raises(GdbError, match=r"^earlymm-translate: internal error: ZeroDivisionError"):
        run_command(gdb, "earlymm-translate 0xffffffff81000000")
    assert stub.phys_mode == 0 and stub.packets[-1] == "Qqemu.PhyMemMode:0"


def test_previous_physical_mode_is_kept(gdb_for: Any) -> None:
    stub = fixture_stub("qemu-l4")
    gdb = gdb_for(stub)
    stub.phys_mode = 1  # the user switched it on for their own x/ commands
    translate_json(gdb, "0xffffffff81000000")
    assert stub.phys_mode == 1 and stub.packets[-1] == "Qqemu.PhyMemMode:1"


def test_read_errors_are_holes(gdb_for: Any) -> None:
    from tests.gdb.fake_gdb import Error

    stub = fixture_stub("qemu-l4")
    gdb = gdb_for(stub)
    stub.fail_reads_with = Error
    (r,) = translate_json(gdb, "0xffffffff81000000")
    assert not r["ok"] and r["unreadable"] == f"{stub.registers['cr3']:#x}"
    assert stub.phys_mode == 0


def test_tables_in_mmio_are_unreadable_and_never_read(gdb_for: Any) -> None:
    stub = fixture_stub("qemu-l4")
    stub.registers["cr3"] = 0xFEE00000  # the local APIC: a physical read would reach the device
    gdb = gdb_for(stub)
    text = run_command(gdb, "earlymm-translate 0x1000")
    assert "unreadable" in text
    assert stub.phys_reads == []


def test_unknown_memory_map_is_said(gdb_for: Any) -> None:
    stub = fixture_stub("qemu-l4", mtree=None)
    gdb = gdb_for(stub)
    text, err = run_command_streams(gdb, "earlymm-translate 0xffffffff81000000")
    assert "=> pa 0x1000000 " in text
    assert err == ["earlymm-translate: QEMU's memory map is unavailable (monitor info mtree -f): unassigned "
                   "physical memory reads as zeros"]


def test_not_qemu(gdb_for: Any) -> None:
    stub = fixture_stub("qemu-l4", phys_mode_supported=False)
    gdb = gdb_for(stub)
    with pytest.raises(GdbError, match=r"refused Qqemu\.PhyMemMode:1.*QEMU's gdbstub"):
        run_command(gdb, "earlymm-translate 0x1000")
    assert stub.phys_reads == []


def test_registers_missing_and_overrides(gdb_for: Any) -> None:
    stub = fixture_stub("qemu-l4")
    cr3 = stub.registers["cr3"]
    stub.registers = {"cr0": stub.registers["cr0"], "cr4": stub.registers["cr4"]}
    gdb = gdb_for(stub)
    with pytest.raises(GdbError, match=r"does not report cr3 .*give --cr3$"):
        run_command(gdb, "earlymm-translate 0x1000")
    text, err = run_command_streams(gdb, f"earlymm-translate --cr3 {cr3:#x} 0xffffffff81000000")
    assert [e.split(":")[1] for e in err] == [" the stub does not report EFER"]
    assert "=> pa 0x1000000 " in text


@pytest.mark.parametrize("args, message", [
    ("", "the following arguments are required: va"),
    ("0x1000 --cpl 2", "argument --cpl: CPL '2': must be 0 (supervisor) or 3 (user)"),
    ("0x1000 --access jump", "unknown access kind 'jump'"),
    ("0x1000 --bogus", "unrecognized arguments: --bogus"),
    ("0x1000 --features warp", "unknown CPU feature 'warp'"),
    ("0x1000 --cr3 zz", "argument --cr3: not a number: 'zz'"),
    ("0x1000 --maxphyaddr 64", "MAXPHYADDR 64 is out of range: must be 32..52"),
    ("nosuchsymbol", "cannot evaluate 'nosuchsymbol' as an address"),
    ("0x10000000000000000", "does not fit in 64 bits"),
])
def test_usage_errors_are_one_line(args: str, message: str, gdb_for: Any) -> None:
    gdb = gdb_for(fixture_stub("qemu-l4"))
    with pytest.raises(GdbError) as e:
        run_command(gdb, f"earlymm-translate {args}".strip())
    text = str(e.value)
    assert text.startswith("earlymm-translate: ") and message in text and "\n" not in text


def test_help(gdb_for: Any) -> None:
    gdb = gdb_for(fixture_stub("qemu-l4"))
    text = run_command(gdb, "earlymm-translate --help")
    assert text.startswith("usage: earlymm-translate") and "--access" in text and "--json" in text
    assert "physical-memory mode" in (gdb.registered["earlymm-translate"].__doc__ or "")


def test_missing_dependency_is_one_clear_line(monkeypatch: pytest.MonkeyPatch, gdb_for: Any) -> None:
    real = importlib.import_module

    def without_numpy(name: str, package: str | None = None) -> Any:
        if name.startswith("earlymm."):
            raise ModuleNotFoundError("No module named 'numpy'", name="numpy")
        return real(name, package)

    monkeypatch.setattr(importlib, "import_module", without_numpy)  # what the command file calls
    gdb = gdb_for(fixture_stub("qemu-l4"))
    (warning,) = [t for t, stream in gdb.output if stream == gdb.STDERR]
    assert warning.startswith("earlymm: gdb's Python ") and "cannot import 'numpy'" in warning
    assert "apt-get install python3-numpy" in warning and warning.count("\n") == 1
    for name in ("earlymm-translate", "earlymm-ptdump"):
        with pytest.raises(GdbError, match=rf"^{name}: gdb's Python .* cannot import 'numpy'"):
            run_command(gdb, name)


def test_too_old_python_is_one_clear_line(monkeypatch: pytest.MonkeyPatch, gdb_for: Any) -> None:
    monkeypatch.setattr(earlymm_gdb, "MIN_PYTHON", (99, 0))
    gdb = gdb_for(fixture_stub("qemu-l4"))
    with pytest.raises(GdbError, match=r"earlymm needs 99\.0 or newer"):
        run_command(gdb, "earlymm-translate 0x1000")


def test_translate_defaults_to_the_vcpus_cpl(gdb_for: Any) -> None:
    """Issue 7 item 4, live: a guest stopped in user mode (SS = 0x2b, RPL 3) walks at CPL 3."""
    stub = fixture_stub("qemu-pti")
    regs = read_capture_text(FIXTURES / "qemu-pti", "registers.txt")
    m = re.search(r"^SS =([0-9a-f]{4})", regs, re.M)
    assert m and re.search(r"\bCPL=3\b", regs)
    stub.registers["ss"] = int(m[1], 16)
    gdb = gdb_for(stub)
    (r,) = translate_json(gdb, "0xfffffe0000000000")  # cpu_entry_area: supervisor-only
    assert r["cpl"] == 3 and not r["ok"] and int(r["fault"]["error_code"], 16) & 4
    (r0,) = translate_json(gdb, "0xfffffe0000000000 --cpl 0")
    assert r0["cpl"] == 0 and r0["ok"]
    del stub.registers["ss"]
    assert translate_json(gdb, "0xfffffe0000000000")[0]["cpl"] == 0  # no SS from the stub: ring 0
