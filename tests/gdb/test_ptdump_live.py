"""``earlymm-ptdump`` in a fake gdb over real-kernel fixtures: the dump of the live path must equal QEMU's
own ``info tlb`` / ``info mem`` from capture time, with every table read physically and once."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from earlymm.images.minimize import read_capture_text
from earlymm.tools.gdb import earlymm_gdb, script_path
from tests.gdb.fake_gdb import FakeStub, GdbError, make_gdb, run_command, run_command_streams
from tests.gdb.test_commands import FIXTURES, fixture_stub


@pytest.fixture
def attach(monkeypatch: pytest.MonkeyPatch) -> Any:
    def go(stub: FakeStub) -> types.ModuleType:
        gdb = make_gdb(stub)
        monkeypatch.setitem(sys.modules, "gdb", gdb)
        earlymm_gdb._earlymm_gdb_setup(str(script_path().parent))
        return gdb

    return go


def qemu_text(name: str, file: str) -> str:
    return read_capture_text(FIXTURES / name, file).replace("\r\n", "\n")


def pc_mtree(mem: int) -> str:
    """``info mtree -f``'s system flat view for ``-machine pc -m mem``: like QEMU's pc_piix, RAM above
    3 GiB moves above 4 GiB once the guest has 3.5 GiB or more."""
    low = mem if mem < 0xE000_0000 else 0xC000_0000
    ram = [(0, low)] + ([(1 << 32, (1 << 32) + mem - low)] if mem > low else [])
    body = "".join(f"  {s:016x}-{e - 1:016x} (prio 0, ram): pc.ram\n" for s, e in ram)
    return ('FlatView #0\n AS "memory", root: system\n Root memory region: system\n' + body
            + "  00000000fee00000-00000000feefffff (prio 4096, i/o): apic-msi\n")


# (fixture, guest RAM, whether QEMU's info mem is comparable: QEMU 7.2 prints nothing for 5-level)
CASES = [("qemu-l4", 512 << 20, True), ("qemu-l4-5g", 5 << 30, True), ("qemu-max-kaslr", 512 << 20, False)]


@pytest.mark.parametrize("name, mem, with_mem", CASES, ids=[c[0] for c in CASES])
def test_qemu_tlb_and_mem_match_qemu(name: str, mem: int, with_mem: bool, attach: Any) -> None:
    stub = fixture_stub(name, mtree=pc_mtree(mem))
    gdb = attach(stub)
    tlb, _err = run_command_streams(gdb, "earlymm-ptdump --format qemu-tlb")
    assert tlb == qemu_text(name, "tlb.txt")
    pages = [pa for pa, _ in stub.phys_reads]
    assert len(pages) == len(set(pages))  # each table crossed the wire once, despite espfix's aliases
    assert stub.phys_mode == 0 and stub.packets[-1] == "Qqemu.PhyMemMode:0"
    if with_mem:
        assert run_command(gdb, "earlymm-ptdump --format qemu-mem") == qemu_text(name, "mem.txt")


def test_linux_format_and_json(attach: Any) -> None:
    stub = fixture_stub("qemu-l4")
    gdb = attach(stub)
    linux = run_command(gdb, "earlymm-ptdump")
    assert "---[ Low Kernel Mapping ]---" in linux and "---[ High Kernel Mapping ]---" in linux
    doc = json.loads(run_command(gdb, "earlymm-ptdump --format json"))
    assert doc["image"] == "gdb:live"
    (space,) = doc["address_spaces"]
    assert space["cr3"] == f"{stub.registers['cr3']:#x}" and space["mode"] == "4-level" and space["runs"]


def test_output_file_and_several_spaces(attach: Any, tmp_path: Path) -> None:
    stub = fixture_stub("qemu-l4")
    gdb = attach(stub)
    cr3 = stub.registers["cr3"]
    out = tmp_path / "tlb.txt"
    msg = run_command(gdb, f"earlymm-ptdump --format qemu-tlb --output {out}")
    want = qemu_text("qemu-l4", "tlb.txt")
    assert out.read_text() == want and msg == f"{want.count(chr(10))} lines written to {out}\n"
    two = run_command(gdb, f"earlymm-ptdump --format qemu-mem --cr3 {cr3:#x} --cr3 0xfee00000")
    first, second = two.split("# cr3 0xfee00000\n")
    assert first == f"# cr3 {cr3:#x}\n" + qemu_text("qemu-l4", "mem.txt")
    assert second == ""  # a "table" in the APIC's MMIO: unreadable, never read


def test_tables_in_a_hole_are_reported(attach: Any) -> None:
    stub = fixture_stub("qemu-l4")
    stub.registers["cr3"] = 0x40000000  # beyond the guest's 512 MiB
    gdb = attach(stub)
    text, err = run_command_streams(gdb, "earlymm-ptdump --format qemu-tlb")
    assert text == "" and stub.phys_reads == []
    assert err and all(e.startswith("earlymm-ptdump: unreadable ") for e in err)


def test_audit(attach: Any) -> None:
    gdb = attach(fixture_stub("qemu-l4"))
    text, err = run_command_streams(gdb, "earlymm-ptdump --check-wx")
    # Debian's 6.1 kernel passes its own boot-time check; the log says so in the kernel's words.
    assert text == ""
    assert err[-1] == "earlymm-ptdump: 0 finding(s)"
    assert any("Checked W+X mappings: passed, no W+X pages found" in e for e in err), err


def test_pti_audit_reads_the_user_table_too(attach: Any) -> None:
    """The PTI user PGD is the page after the kernel's: found and read physically like any table."""
    gdb = attach(fixture_stub("qemu-pti"))
    text, err = run_command_streams(gdb, "earlymm-ptdump --check-user-kernel")
    assert text == ""
    assert err[-1] == "earlymm-ptdump: 0 finding(s)"
    assert "earlymm-ptdump: user/kernel isolation: 0 finding(s), 2 expected PTI share(s)" in err
    assert sum(e.startswith("earlymm-ptdump: expected: kernel-") for e in err) == 2, err


@pytest.mark.parametrize("args, message", [
    ("--format tlb", "argument --format: invalid choice: 'tlb'"),
    ("--max-tables 0", "--max-tables 0 is out of range"),
    ("--cr3 nope", "argument --cr3: not a number: 'nope'"),
])
def test_usage_errors(args: str, message: str, attach: Any) -> None:
    stub = fixture_stub("qemu-l4")
    gdb = attach(stub)
    with pytest.raises(GdbError) as e:
        run_command(gdb, f"earlymm-ptdump {args}")
    assert str(e.value).startswith("earlymm-ptdump: ") and message in str(e.value)
    assert stub.packets == []


def test_mode_restored_when_the_engine_fails(attach: Any) -> None:
    stub = fixture_stub("qemu-l4")
    gdb = attach(stub)
    stub.fail_reads_with = ZeroDivisionError
    with pytest.raises(GdbError, match="internal error: ZeroDivisionError"):
        run_command(gdb, "earlymm-ptdump")
    assert stub.phys_mode == 0


def test_output_refuses_a_fifo_before_reading_the_guest(attach: Any, tmp_path: Path) -> None:
    import os
    import stat

    stub = fixture_stub("qemu-l4")
    gdb = attach(stub)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(GdbError, match="a FIFO, not a regular file"):
        run_command(gdb, f"earlymm-ptdump --output {fifo}")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and stub.phys_reads == []


def test_audit_of_an_unreadable_table_is_incomplete_not_passed(attach: Any) -> None:
    stub = fixture_stub("qemu-l4")
    stub.registers["cr3"] = 0x40000000  # beyond the guest's 512 MiB: the top-level table cannot be read
    gdb = attach(stub)
    text, err = run_command_streams(gdb, "earlymm-ptdump --check-wx --check-user-kernel")
    assert text.splitlines() == ["incomplete: unreadable 0x0000000000000000-0x10000000000000000: top-level table "
                                 "0x40000000 is not in the image"]
    assert not any("passed" in e for e in err), err
    assert err[-1] == "earlymm-ptdump: 0 finding(s); incomplete: 1 range(s) not examined"
