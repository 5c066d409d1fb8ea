"""The same comparisons on the full 512 MiB / 5 GiB captures under captures/ (gitignored; slow)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.ptdump.support import CAPTURES, cli, core_of, is_la57, raw_text
from tests.ptdump.test_audits import kernel_verdict
from tests.ptdump.test_qemu_formats import mem_from_tlb

FULL = sorted(p for p in CAPTURES.glob("*") if (p / "core.elf").exists() and (p / "tlb.txt").exists())

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not FULL, reason="no full captures (python -m earlymm.tools.qemu_capture)")]


@pytest.mark.parametrize("capture", FULL, ids=[p.name for p in FULL])
def test_full_capture_matches_qemu_and_the_kernel(capture: Path, capsys: pytest.CaptureFixture[str]) -> None:
    core = str(core_of(capture))
    r = cli(capsys, core, "--format", "qemu-tlb", "--crlf")
    assert r.code == 0 and r.out == raw_text(capture, "tlb.txt").decode()
    r = cli(capsys, core, "--format", "qemu-mem", "--crlf")
    assert r.code == 0
    if is_la57(capture):
        assert raw_text(capture, "mem.txt") == b""
        assert r.out == mem_from_tlb(raw_text(capture, "tlb.txt").decode(), 57)
    else:
        assert r.out == raw_text(capture, "mem.txt").decode()
    r = cli(capsys, core, "--check-wx")
    assert r.err.splitlines() == kernel_verdict(capture)
