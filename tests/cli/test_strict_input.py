"""Strict numbers, sizes and batch lines (issue 7 item 5): each bad value is one line saying what was
expected, exit 2 — never a guess, a traceback or an internal message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from earlymm.cli.main import main
from earlymm.tools import qemu_capture

CORE = Path(__file__).resolve().parents[1] / "fixtures" / "qemu-l4" / "core.elf.gz"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str], needle: str) -> str:
    code, out, err = run(capsys, *argv)
    assert (code, out) == (2, ""), (argv, err)
    assert err.count("\n") == 1 and needle in err and "Traceback" not in err and "internal" not in err, (argv, err)
    return err


@pytest.mark.parametrize("va, needle", [
    ("+5", "has a sign"), ("-5", "has a sign"), ("1_000", "digit separators"), ("0x7f'00", "digit separators"),
    ("١٢", "non-ASCII"), ("１２", "non-ASCII"),
    ("00007f0000000000", "write 0x00007f0000000000"),  # info tlb's column, pasted
    ("0000000000400000", "ambiguous"), ("0400", "ambiguous"),
    ("0x1ffffffffffffffff", "does not fit in 64 bits"), ("18446744073709551616", "does not fit in 64 bits"),
    ("9" * 5000, "does not fit in 64 bits"), ("ffff8880", "no 0x"), ("0x", "expected 0x"), ("1e5", "no 0x"),
    ("", "empty"),
])
def test_addresses(va: str, needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    one_line_exit_2(capsys, ["translate", str(CORE), "--", va], needle)


def test_double_dash_before_addresses(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--", "0x400000"], ["--json", "--", "0x400000"], ["0x400000", "--", "4194304"]):
        code, out, err = run(capsys, "translate", str(CORE), "--gva2gpa", *argv)
        assert (code, err) == (0, "") and "gpa: 0x330e000" in out, argv


BATCH = [
    ('{"va": true}', "not a boolean"), ('{"va": 1.5}', "not a fractional number"),
    ('{"va": "4096"}', 'must be "0x"'), ('{"va": "0x1000", "ac": 1}', "ac must be true or false"),
    ('{"va": "0x1000", "ac": "yes"}', "ac must be true or false"), ('{"va": "0x1000", "cpl": "3"}', "cpl must be"),
    ('{"va": "0x1000", "cpl": true}', "cpl must be"), ('{"va": "0x1000", "cpl": 3.0}', "cpl must be"),
    ('{"va": "0x1000", "cpl": 1}', "cpl must be"), ('{"va": "0x1000", "access": 1}', "access must be a string"),
    ('{"va": "0x1000", "acess": "read"}', "unknown key(s) 'acess'"), ('{"va": Infinity}', "Infinity"),
    ('{"va": NaN}', "NaN"), ('{"va": -Infinity}', "Infinity"), ('{"va": 1e400}', "fractional"),
    ('{"va": 123456789012345678901234567890}', "too large"), ('{"va": -1}', "out of range"),
    ('{"va": 18446744073709551616}', "out of range"), ('{"va": "0x1", "va": "0x2"}', "given twice"),
    ('[{"va": 1}]', "must be a JSON object"), ("[" * 100_000 + "]" * 100_000, "line longer"),
    ("[" * 5000 + "]" * 5000, "nested too deeply"), ('{"va": {"va": 1}}', "not an object"),
    ('{"va": "0x1_000"}', "digit separators"), ('{"va": "0x10000000000000000"}', "does not fit in 64 bits"),
    ('{"va": null}', "not null"), ("{'va': 1}", "Expecting property name"),
]


@pytest.mark.parametrize("line, needle", BATCH, ids=[b[1] + str(i) for i, b in enumerate(BATCH)])
def test_batch_lines(line: str, needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    batch = tmp_path / "b.jsonl"
    batch.write_text('{"va": "0x400000"}\n' + line + "\n")
    err = one_line_exit_2(capsys, ["translate", str(CORE), "--batch", str(batch)], needle)
    assert f"{batch}:2: " in err


def test_a_strict_batch_still_reads_every_valid_form(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    batch = tmp_path / "b.jsonl"
    batch.write_text('{"va": 4194304, "access": "write", "cpl": 3, "ac": false}\n\n'
                     '{"va": "0x400000", "access": "exec", "cpl": 0, "ac": true}\n{"va": "0X400000"}\n')
    code, out, _ = run(capsys, "translate", str(CORE), "--batch", str(batch), "--json")
    docs = json.loads(out)
    assert code == 0 and [(d["va"], d["access"], d["cpl"]) for d in docs] == [
        ("0x400000", "write", 3), ("0x400000", "exec", 0), ("0x400000", "read", 0)]


@pytest.mark.parametrize("argv, needle", [
    (["boot", "--mem", "1.0e400"], "not a size"), (["boot", "--mem", "inf"], "not a size"),
    (["boot", "--mem", "nan"], "not a size"), (["boot", "--mem=-4G"], "not a size"),
    (["boot", "--mem", "4P"], "at most 64 TiB"), (["boot", "--mem", "65T"], "at most 64 TiB"),
    (["boot", "--mem", "0.3K"], "not a whole number of bytes"), (["boot", "--mem", "17E"], "more than 16 EiB"),
    (["boot", "--mem", "0004"], "ambiguous"),
    (["boot", "--image-size", "0x0"], "must be positive"), (["boot", "--pool", "1_0"], "digit separators"),
    (["boot", "--pool", "٣"], "non-ASCII"), (["boot", "--pool", "+3"], "has a sign"),
    (["boot", "--pool", "4097"], "out of range"), (["boot", "--kernel-at", "0x1_000000"], "digit separators"),
    (["boot", "--ramdisk", "0x14000:4K"], "overlaps boot_params"),  # was "max() arg is an empty sequence"
    (["boot", "--ramdisk", "0x13000:8K"], "overlaps boot_params"), (["boot", "--ramdisk", "0x8000000:"], "not a size"),
    (["boot", "--cmdline-at", "0x14800"], "overlaps the command line"),
    (["boot", "--boot-params-at", "0x60000"], "overlaps the boot loader's page tables"),
    (["translate", str(CORE), "0x1", "--pkru", "0x100000000"], "PKRU is a 32-bit register"),
    (["translate", str(CORE), "0x1", "--pkrs", "0x1ffffffff"], "PKRS is a 32-bit register"),
    (["translate", str(CORE), "0x1", "--cpl", "３"], "must be 0 (supervisor) or 3 (user)"),
    (["translate", str(CORE), "0x1", "--cpu", "1e3"], "no 0x"),
    (["translate", str(CORE), "0x1", "--max-inflate", "1.0e400"], "not a size"),
    (["ptdump", str(CORE), "--max-tables", "1e3"], "no 0x"), (["ptdump", str(CORE), "--max-leaves", "-1"], "sign"),
    (["ptdump", str(CORE), "--cr3", "0x1_000"], "digit separators"),
])
def test_numbers_and_sizes(argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    one_line_exit_2(capsys, argv, needle)


@pytest.mark.parametrize("argv", [["--mem", "1.5G"], ["--mem", "١G"], ["--mem", "0"], ["--timeout", "nan"],
                                  ["--timeout", "inf"], ["--timeout", "-1"], ["--timeout", "1e9"], ["--bogus"],
                                  ["minimize"], ["minimize", "a", "b", "c"]])
def test_capture_tool_arguments(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert qemu_capture.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
