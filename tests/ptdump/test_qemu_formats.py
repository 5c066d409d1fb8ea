"""``--format qemu-tlb`` / ``qemu-mem`` against what QEMU 7.2 itself printed for the same guest."""

from __future__ import annotations

from pathlib import Path

import pytest

from earlymm.images.monitor_text import parse_info_tlb
from tests.ptdump.support import FIXTURE_IDS, FIXTURES, cli, core_of, is_la57, raw_text

FOUR_LEVEL = [p for p in FIXTURES if not is_la57(p)]
FIVE_LEVEL = [p for p in FIXTURES if is_la57(p)]


@pytest.mark.parametrize("fixture", FIXTURES, ids=FIXTURE_IDS)
def test_info_tlb_is_byte_identical(fixture: Path, capsys: pytest.CaptureFixture[str]) -> None:
    r = cli(capsys, str(core_of(fixture)), "--format", "qemu-tlb", "--crlf")
    assert r.code == 0 and r.err == ""
    want = raw_text(fixture, "tlb.txt").decode()
    assert r.out == want


def test_info_tlb_without_crlf_has_plain_newlines(capsys: pytest.CaptureFixture[str]) -> None:
    fixture = FIXTURES[0]
    r = cli(capsys, str(core_of(fixture)), "--format", "qemu-tlb")
    assert r.out == raw_text(fixture, "tlb.txt").decode().replace("\r\n", "\n")


@pytest.mark.parametrize("fixture", FOUR_LEVEL, ids=[p.name for p in FOUR_LEVEL])
def test_info_mem_is_byte_identical_for_4_level(fixture: Path, capsys: pytest.CaptureFixture[str]) -> None:
    r = cli(capsys, str(core_of(fixture)), "--format", "qemu-mem", "--crlf")
    assert r.code == 0 and r.err == ""
    assert r.out == raw_text(fixture, "mem.txt").decode()


def mem_from_tlb(tlb_text: str, va_bits: int) -> str:
    """An independent ``info mem`` oracle from QEMU's own ``info tlb``: runs of equal U/W over the leaf
    flags, assuming every upper-level entry allows what its leaves do (true of Linux's tables: upper
    entries are _PAGE_TABLE or _KERNPG_TABLE). Run ends are computed on raw VAs, like QEMU."""
    raw, sign = (1 << va_bits) - 1, 1 << (va_bits - 1)
    high = ((1 << 64) - 1) ^ ((sign << 1) - 1)

    def canon(a: int) -> int:
        a &= (1 << 64) - 1
        return a | high if a & sign else a

    runs: list[list[int]] = []  # [start, end, prot]
    lines = parse_info_tlb(tlb_text)
    for i, t in enumerate(lines):
        size = 1 << 12
        if t.flags[2] == "P":  # PS: 2 MiB, or 1 GiB when aligned so and nothing follows within 1 GiB
            nxt = lines[i + 1].va if i + 1 < len(lines) else 1 << 64
            g = (1 << 30) - 1
            size = 1 << 30 if not t.va & g and not t.pa & g and nxt - t.va >= 1 << 30 else 1 << 21
        va = t.va & raw
        prot = (4 if t.flags[7] == "U" else 0) | (2 if t.flags[8] == "W" else 0)
        if runs and runs[-1][1] == va and runs[-1][2] == prot:
            runs[-1][1] = va + size
        else:
            runs.append([va, va + size, prot])
    return "".join(f"{canon(s):016x}-{canon(e):016x} {canon(e - s):016x} {'u' if p & 4 else '-'}r"
                   f"{'w' if p & 2 else '-'}\r\n" for s, e, p in runs)


def test_the_oracle_reproduces_qemu_on_4_level_guests() -> None:
    for fixture in FOUR_LEVEL:
        assert mem_from_tlb(raw_text(fixture, "tlb.txt").decode(), 48) == raw_text(fixture, "mem.txt").decode()


@pytest.mark.parametrize("fixture", FIVE_LEVEL, ids=[p.name for p in FIVE_LEVEL])
def test_info_mem_for_5_level_is_what_qemu_would_print_without_its_bug(
        fixture: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert raw_text(fixture, "mem.txt") == b""  # QEMU 7.2's inverted present test: nothing at all
    r = cli(capsys, str(core_of(fixture)), "--format", "qemu-mem", "--crlf")
    assert r.code == 0 and r.out
    assert r.out == mem_from_tlb(raw_text(fixture, "tlb.txt").decode(), 57)


def test_qemu_tlb_of_a_real_guest_twice_is_the_same(capsys: pytest.CaptureFixture[str]) -> None:
    """A second run in one process (warm imports, inflated image) prints the same dump; its speed is
    bench/bench_ptdump.py's business, not a test's."""
    fixture = FIXTURES[0]
    first = cli(capsys, str(core_of(fixture)), "--format", "qemu-tlb")
    r = cli(capsys, str(core_of(fixture)), "--format", "qemu-tlb")
    assert r.out.count("\n") > 70_000 and r.out == first.out
