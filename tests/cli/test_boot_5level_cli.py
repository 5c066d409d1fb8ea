"""``earlymm boot --paging 5``: the decompressor in the timeline, --until decompressor, a 5-level core that
``translate`` walks, and bad BDA/EBDA/loader input (one line, exit 2) — issue 10 items 5, 7, 8."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from earlymm.cli.main import main

PAGE_OFFSET_L5 = 0xFF11_0000_0000_0000  # page_offset_base in 5-level mode (6.1 page_64_types.h)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_until_decompressor_shows_the_switch(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "boot", "--paging", "5", "--until", "decompressor")
    assert code == 0 and err == ""
    assert "== decompressor" in out and "== startup_64" not in out
    assert "trampoline at 0x9d000" in out  # SeaBIOS-like BDA: 6.1's placement (see test_decompressor)
    steps = [line.strip() for line in out.splitlines() if "CPU now in" in line or "cr4 0x20 -> " in line]
    # after the loader's two switches: compatibility mode, paging off (protected mode), LA57 set,
    # paging on (compatibility mode), the far jump back to 64-bit mode
    assert steps[2:] == ["CPU now in compatibility mode", "CPU now in protected mode", "cr4 0x20 -> 0x1020",
                         "CPU now in compatibility mode", "CPU now in 64-bit mode"]


def test_v414_above_4g_loses_control_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "boot", "--paging", "5", "--decompressor", "v4.14", "--kernel-at", "0x180000000",
                       "--mem", "8G", "--json")
    doc = json.loads(out)
    assert code == 1 and doc["outcome"] == "lost_control" and doc["phase"] == "decompressor"
    assert "above 4 GiB" in doc["reason"]


def test_saved_5_level_core_is_walked_by_translate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    core = tmp_path / "l5.elf"
    code, _, _ = run(capsys, "boot", "--paging", "5", "--mem", "8G", "--save-core", str(core))
    assert code == 0 and core.exists()
    va = PAGE_OFFSET_L5 + 0x1_2345_6000
    code, out, err = run(capsys, "translate", str(core), hex(va), "--json", "--absent", "zero")
    assert code == 0, err
    (doc,) = json.loads(out)
    assert doc["ok"] and int(doc["pa"], 16) == 0x1_2345_6000
    assert [lv["level"] for lv in doc["levels"]][:2] == ["PML5", "PML4"]


@pytest.mark.parametrize("argv, words", [
    (["--paging", "5", "--bda-base", "0x10000"], "--bda-base"),
    (["--paging", "5", "--bda-base", "-1"], "--bda-base"),
    (["--paging", "5", "--ebda", "0x10000"], "--ebda"),
    (["--paging", "5", "--ebda", "-1"], "--ebda"),
    (["--paging", "5", "--ebda", "banana"], "--ebda"),
    (["--loader-paging", "5", "--no-la57"], "without LA57"),
    (["--paging", "5", "--loader-paging", "5", "--no-la57"], "without LA57"),
    (["--loader-paging", "5", "--no-la57", "--decompressor", "merged", "--mem", "8G"], "without LA57"),
    (["--paging", "5", "--profile", "v3.9"], "--profile current"),
    (["--paging", "5", "--mem", "4P"], "52-bit"),
])
def test_bad_input_one_line_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str], words: str) -> None:
    with pytest.raises(SystemExit) as ex:
        code = main(["boot", *argv])
        raise SystemExit(code)
    err = capsys.readouterr().err
    assert ex.value.code == 2
    assert len(err.strip().splitlines()) == 1 and words in err and "Traceback" not in err


@pytest.mark.parametrize("argv, words", [
    (["--loader-paging", "5", "--no-la57"], "without LA57"),
    (["--paging", "5", "--bda-base", "0x10000"], "16-bit word"),
    (["--paging", "5", "--ebda", "0x1ffff"], "16-bit word"),
])
def test_bad_input_as_a_process_one_line_exit_2(tmp_path: Path, argv: list[str], words: str) -> None:
    """The same refusals end to end: a real ``earlymm`` process, nothing on stdout, nothing written."""
    import subprocess
    import sys

    core = tmp_path / "core.elf"
    p = subprocess.run([sys.executable, "-m", "earlymm", "boot", *argv, "--save-core", str(core)], capture_output=True,
                       text=True, check=False, cwd=tmp_path)
    assert p.returncode == 2 and p.stdout == ""
    assert len(p.stderr.strip().splitlines()) == 1 and words in p.stderr and "Traceback" not in p.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("field, value", [("bda_base_kib", 0x10000), ("ebda_segment", -1)])
def test_api_refuses_a_bda_word_out_of_range(field: str, value: int) -> None:
    """Through the API (no CLI check in front): the machine's validation refuses what the 16-bit BDA word
    cannot hold, with one line."""
    from earlymm.arch.modes import Features
    from earlymm.kernel.boot import boot
    from earlymm.kernel.consts import PROFILES
    from earlymm.kernel.context import KernelConfig
    from earlymm.platform.pc import MachineConfig

    machine = MachineConfig(features=Features(la57=True, pks=False), **{field: value})
    with pytest.raises(ValueError, match="16-bit word") as ex:
        boot(machine, KernelConfig(PROFILES["current"], decompressor="merged"))
    assert "\n" not in str(ex.value)
