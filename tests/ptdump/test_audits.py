"""``--check-wx`` against the kernel's own boot verdict, and ``--check-user-kernel``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from earlymm.arch.modes import Level, PagingMode
from tests.ptdump.support import FIXTURE_IDS, FIXTURES, build, cli, core_of
from tests.ptdump.test_linux_format import parse

NX = 1 << 63


def kernel_verdict(fixture: Path) -> list[str]:
    """The W+X lines the kernel logged at boot (CONFIG_DEBUG_WX), timestamps removed."""
    text = (fixture / "console.log").read_text(errors="replace")
    return [m[1] for m in re.finditer(r"^\[[ \d.]+\] (x86/mm: Check(?:ed W\+X|ing user).*?)\r?$", text, re.M)]


@pytest.mark.parametrize("fixture", FIXTURES, ids=FIXTURE_IDS)
def test_check_wx_agrees_with_the_kernels_boot_verdict(fixture: Path, capsys: pytest.CaptureFixture[str]) -> None:
    want = kernel_verdict(fixture)
    assert want  # every fixture's kernel ran the check
    r = cli(capsys, str(core_of(fixture)), "--check-wx")
    assert r.err.splitlines() == want
    passed = all("passed" in line for line in want if "Checked" in line)
    assert (r.code, r.out) == ((0, "") if passed else (1, r.out))


def test_pti_image_checks_both_page_tables_like_the_kernel(capsys: pytest.CaptureFixture[str]) -> None:
    fixture = next(p for p in FIXTURES if "pti" in p.name)
    assert "x86/mm: Checking user space page tables" in kernel_verdict(fixture)
    # The kernel CR3 alone (bit 12 clear) is recognised as PTI's by the NX on its user half.
    r = cli(capsys, str(core_of(fixture)), "--check-wx", "--cr3", "0x4866000")
    assert r.err.splitlines() == kernel_verdict(fixture)


def test_a_writable_executable_kernel_page_is_one_finding(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from earlymm.images import write_qemu_core
    from earlymm.images.cpustate import CpuState

    b = build(PagingMode.LONG4)
    b.mapper.map(0xFFFF_FFFF_8100_0000, 0x40_0000, 0x3000, 0x2)  # RW, no NX: W+X
    b.mapper.map(0xFFFF_FFFF_8200_0000, 0x50_0000, 0x1000, 0x2 | NX)  # RW+NX: fine
    core = tmp_path / "wx.elf"
    write_qemu_core(core, [(p, bytes(b.mem.frame(p) or b"")) for p in b.mem.written_pfns()],
                    [CpuState(cr0=0x8005_0033, cr3=b.mapper.root, cr4=0x20)])
    r = cli(capsys, str(core), "--check-wx", "--efer", "0xd01")
    assert r.code == 1
    assert r.out.splitlines() == ["W+X: 0xffffffff81000000-0xffffffff81003000 12K 3 pages pte [High Kernel Mapping] "
                                  f"kernel CR3 {b.mapper.root:#x}"]
    assert r.err.splitlines() == ["x86/mm: Checked W+X mappings: FAILED, 3 W+X pages found."]


def test_user_code_is_executable_from_the_kernel_without_smep_or_pti(capsys: pytest.CaptureFixture[str]) -> None:
    fixture = next(p for p in FIXTURES if p.name == "qemu-l4")
    r = cli(capsys, str(core_of(fixture)), "--check-user-kernel")
    assert r.code == 1
    lines = r.out.splitlines()
    assert lines and all(ln.startswith("user-exec-from-kernel: 0x0000") for ln in lines)
    # Each starts where the Linux dump has a user, executable line.
    _m, dump = parse(cli(capsys, str(core_of(fixture))).out)
    exec_user = {s for s, _e, cols, _l in dump if cols.startswith("USR") and cols.endswith("x  ")}
    assert {int(ln.split()[1][2:18], 16) for ln in lines} <= exec_user


def test_smep_leaves_no_findings(capsys: pytest.CaptureFixture[str]) -> None:
    fixture = next(p for p in FIXTURES if p.name == "qemu-max-5g")  # -cpu max: SMEP on, no PTI
    r = cli(capsys, str(core_of(fixture)), "--check-user-kernel")
    assert (r.code, r.out) == (0, "")
    assert "no PTI user page table found" in r.err


def test_pti_user_page_table_findings(capsys: pytest.CaptureFixture[str]) -> None:
    fixture = next(p for p in FIXTURES if "pti" in p.name)
    r = cli(capsys, str(core_of(fixture)), "--check-user-kernel")
    # PTI (pti=on) shares the 2 MiB around the entry text (global) and cpu_tss_rw at its direct-map
    # address on purpose: both are reported as expected shares, not findings; the kernel PGD's user half
    # carries NX, so no user code is executable from the kernel even without SMEP.
    assert r.code == 0 and r.out == ""
    assert "kernel CR3 0x4866000, PTI user CR3 0x4867000" in r.err
    expected = [ln for ln in r.err.splitlines() if ln.startswith("expected: ")]
    kinds = sorted(ln.removeprefix("expected: ").split(":")[0] for ln in expected)
    assert kinds == ["kernel-data-in-user-cr3", "kernel-text-in-user-cr3"]
    text = next(ln for ln in expected if "kernel-text" in ln)
    assert " 2M " in text and "High Kernel Mapping" in text and "global" in text
    assert "cpu_tss_rw" in next(ln for ln in expected if "kernel-data" in ln)
    assert "0 finding(s), 2 expected PTI share(s)" in r.err


def test_user_accessible_kernel_half_page_is_found(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from earlymm.images import write_qemu_core
    from earlymm.images.cpustate import CpuState

    b = build(PagingMode.LONG4)
    b.mapper.map(0xFFFF_FFFF_FF60_0000, 0x40_0000, 0x1000, 0x4 | NX)  # a vsyscall-like user page
    e = b.mapper.get_entry(0xFFFF_FFFF_FF60_0000, Level.PML4)
    assert e is not None and e & 0x4
    core = tmp_path / "u.elf"
    write_qemu_core(core, [(p, bytes(b.mem.frame(p) or b"")) for p in b.mem.written_pfns()],
                    [CpuState(cr0=0x8005_0033, cr3=b.mapper.root, cr4=0x20 | 1 << 20)])  # SMEP on
    r = cli(capsys, str(core), "--check-user-kernel", "--efer", "0xd01")
    assert r.code == 1
    assert r.out.splitlines() == ["kernel-half-user-accessible: 0xffffffffff600000-0xffffffffff601000 4K read-only "
                                  f"[Fixmap Area] in kernel CR3 {b.mapper.root:#x}"]
