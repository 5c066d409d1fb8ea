"""The gdb commands with ``--symbols``, over a fake gdb serving the KASLR capture: names from the file resolve
(with the slide derived from the live tables) where the guest's kallsyms and QEMU's gva2gpa say, without gdb
knowing any symbol, and ptdump's lines are labelled."""

from __future__ import annotations

import json
import sys
import types
from typing import Any

import pytest

from earlymm.tools.gdb import earlymm_gdb, script_path
from tests.gdb.fake_gdb import GdbError, make_gdb, run_command, run_command_streams
from tests.gdb.test_commands import fixture_stub
from tests.inspect.support import KASLR, NOKASLR, guest_address, gva2gpa, kallsyms


@pytest.fixture
def gdb(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    g = make_gdb(fixture_stub(KASLR.name))
    monkeypatch.setitem(sys.modules, "gdb", g)
    earlymm_gdb._earlymm_gdb_setup(str(script_path().parent))
    return g


@pytest.mark.parametrize("symbols", [KASLR, NOKASLR], ids=["same-boot kallsyms", "link-time (nokaslr) kallsyms"])
def test_translate_symbol_names(symbols: Any, gdb: types.ModuleType) -> None:
    names = ["init_top_pgt", "idt_table+0x18", "phys_base"]
    out: list[dict[str, Any]] = json.loads(run_command(gdb, f"earlymm-translate --json --symbols {kallsyms(symbols)} "
                                                            + " ".join(names)))
    want = [guest_address(KASLR, "init_top_pgt"), guest_address(KASLR, "idt_table") + 0x18,
            guest_address(KASLR, "phys_base")]
    assert [int(d["va"], 16) for d in out] == want
    qemu = gva2gpa(KASLR)
    assert [int(d["pa"], 16) for d in out] == [qemu[va] for va in want]
    assert [d["va_symbol"] for d in out] == names
    assert gdb.stub.phys_mode == 0  # type: ignore[attr-defined]


def test_gdb_expressions_still_work_beside_names(gdb: types.ModuleType) -> None:
    out = json.loads(run_command(gdb, f"earlymm-translate --json --symbols {kallsyms(KASLR)} $rip init_top_pgt"))
    assert int(out[0]["va"], 16) == gdb.stub.registers["rip"]  # type: ignore[attr-defined]


def test_ptdump_lines_are_labelled(gdb: types.ModuleType) -> None:
    text, _err = run_command_streams(gdb, f"earlymm-ptdump --format qemu-tlb --symbols {kallsyms(KASLR)}")
    start = guest_address(KASLR, "_text")
    assert f"{start:016x}: " in text
    assert next(ln for ln in text.splitlines() if ln.startswith(f"{start:016x}: ")).endswith("  <startup_64>")


def test_bad_symbol_file_is_a_gdb_error(gdb: types.ModuleType, tmp_path: Any) -> None:
    with pytest.raises(GdbError, match="not a regular file"):
        run_command(gdb, f"earlymm-translate --symbols {tmp_path} init_top_pgt")
    with pytest.raises(GdbError, match='No symbol "nosuch"'):  # not in the file: left to gdb, which knows none
        run_command(gdb, f"earlymm-translate --symbols {kallsyms(KASLR)} nosuch")
    assert gdb.stub.phys_mode == 0  # type: ignore[attr-defined]
