"""``earlymm boot``: exit codes, JSON contract, --until/--save-core round trip through translate, and
bad input (one line on stderr, exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from earlymm.cli.main import main
from earlymm.images import open_image

PO = 0xFFFF_8800_0000_0000


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_default_boot_text(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "boot")
    assert code == 0 and err == ""
    assert "outcome: booted" in out and "FAIL" not in out
    assert "== startup_64" in out and "== init_mem_mapping" in out and "#PF cr2=0xffff880000014000" in out


def test_json_contract(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "boot", "--json", "--trace")
    doc = json.loads(out)
    assert code == 0 and doc["outcome"] == "booted" and doc["phase"] == "end"
    assert {"page_faults", "pool_resets", "pool_high_water"} <= set(doc["stats"])
    assert doc["invariants"] and all(set(i) >= {"name", "ok"} and i["ok"] for i in doc["invariants"])
    kinds = {e["event"] for e in doc["events"]}
    assert {"phase_entered", "fault_raised", "pool_alloc", "pool_reset", "cr_write"} <= kinds


def test_crash_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "boot", "--pool", "1", "--json")
    assert code == 1 and json.loads(out)["outcome"] == "livelock"
    code, out, _ = run(capsys, "boot", "--pool-access", "page-offset", "--json")
    assert code == 1 and json.loads(out)["outcome"] == "halt"


@pytest.mark.parametrize("phase, checks", [
    ("startup_64", [("0x1000000", "0x1000000"), ("0xffffffff81000000", "0x1000000")]),
    ("x86_64_start_kernel", [(hex(PO + 0x14000), "0x14000"), ("0x1000000", None)]),
    ("init_mem_mapping", [(hex(PO + 0xC0000000 - 8), "0xbffffff8"), (hex(PO + 0x120000000), "0x120000000")]),
    ("end", [(hex(PO + 0x9F000), "0x9f000"), ("0xffffffff81234567", "0x1234567")]),
])
def test_saved_core_answers_translate(tmp_path: Path, capsys: pytest.CaptureFixture[str], phase: str,
                                      checks: list[tuple[str, str | None]]) -> None:
    core = tmp_path / f"{phase}.core"
    code, _, _ = run(capsys, "boot", "--until", phase, "--save-core", str(core))
    assert code == 0 and core.stat().st_size < 4 << 20  # sparse: only pages the simulation wrote
    # Default options: the core's EARLYMM note says absent memory is zero (issue 7 item 3).
    code, out, _ = run(capsys, "translate", str(core), "--json", *[va for va, _ in checks])
    assert code == 0
    for (va, want), got in zip(checks, json.loads(out), strict=True):
        assert got["unreadable"] is None and got["pa"] == (None if want is None else want), (phase, va, got)
    code, _out, err = run(capsys, "ptdump", str(core))
    assert code == 0 and "unreadable" not in err and "not in the image" not in err
    code, _out, err = run(capsys, "ptdump", str(core), "--check-wx")
    assert code in (0, 1) and "incomplete" not in err


def test_saved_core_reads_in_other_tools(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """pyelftools sees QEMU's layout plus the EARLYMM note; volatility3's own ELF and Intel layers
    translate the spec's addresses (the referenced page tables are in the file, zero or not)."""
    from elftools.elf.elffile import ELFFile

    core = tmp_path / "end.core"
    assert run(capsys, "boot", "--save-core", str(core))[0] == 0
    with open(core, "rb") as f:
        elf = ELFFile(f)
        assert elf["e_type"] == "ET_CORE" and elf["e_machine"] == "EM_X86_64"
        segs = list(elf.iter_segments())
        assert segs[0]["p_type"] == "PT_NOTE" and all(s["p_type"] == "PT_LOAD" for s in segs[1:])
        names = [n["n_name"] for n in segs[0].iter_notes()]
        assert names == ["CORE", "QEMU", "EARLYMM"]
    pytest.importorskip("volatility3")
    from volatility3.framework import contexts
    from volatility3.framework.layers import elf as vol_elf
    from volatility3.framework.layers import intel, physical

    cr3 = json.loads(run(capsys, "translate", str(core), "0", "--json")[1])[0]["levels"][0]["table"]
    ctx = contexts.Context()
    ctx.config["t.file.location"] = core.resolve().as_uri()
    ctx.add_layer(physical.FileLayer(ctx, "t.file", "file"))
    ctx.config["t.elf.base_layer"] = "file"
    ctx.add_layer(vol_elf.Elf64Layer(ctx, "t.elf", "elf"))
    ctx.config["t.vm.memory_layer"] = "elf"
    ctx.config["t.vm.page_map_offset"] = int(cr3, 16)
    vm = intel.Intel32e(ctx, "t.vm", "vm")
    for va, pa in ((PO + 0x9F000, 0x9F000), (0xFFFF_FFFF_8123_4567, 0x123_4567), (PO + 0x1_2000_0000, 0x1_2000_0000)):
        assert vm._translate(va)[0] == pa, hex(va)  # the data page itself need not be in a sparse core
    with open_image(core) as img:  # boot_params (at 0x14000), which the loader wrote: the same bytes
        assert vm.read(PO + 0x14000, 4096) == bytes(img.frame(0x14) or b"")


@pytest.mark.parametrize("argv, needle", [
    (["boot", "--kernel-at", "0x1100000"], "not 2 MiB aligned"),
    (["boot", "--mem", "2M"], "smaller than the kernel"),
    (["boot", "--mem", "8M"], "not inside RAM"),
    (["boot", "--ramdisk", "0x1000000:16M"], "overlaps the kernel"),
    (["boot", "--ramdisk", "0x7000000000:16M"], "not inside RAM"),
    (["boot", "--ramdisk", "zz:16M"], "--ramdisk"),
    (["boot", "--until", "nowhere"], "unknown phase"),
    (["boot", "--mem", "lots"], "not a size"),
    (["boot", "--pool", "0"], "--pool"),
    (["boot", "--e820", "{overlap}"], "overlaps"),
    (["boot", "--e820", "{badtype}"], "unknown type"),
    (["boot", "--e820", "{missing}"], "cannot read"),
    (["boot", "--profile", "v2.6"], "invalid choice"),
])
def test_bad_input_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str],
                                   needle: str) -> None:
    overlap = tmp_path / "o.e820"
    overlap.write_text("0 0x9fc00 ram\n0x100000 0x40000000 ram\n0x30000000 0x50000000 reserved\n")
    badtype = tmp_path / "b.e820"
    badtype.write_text("0 0x9fc00 ram\n0x100000 0x40000000 dram\n")
    subst = {"overlap": overlap, "badtype": badtype, "missing": tmp_path / "none"}
    code, out, err = run(capsys, *[a.format(**subst) for a in argv])
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and needle in err and "Traceback" not in err


def test_e820_file_boot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "m.e820"
    f.write_text("# a small PC\n0 0x9fc00 ram\n0x9fc00 0xa0000 reserved\n0x100000 0x20000000 ram\n")
    code, out, _ = run(capsys, "boot", "--e820", str(f), "--json")
    doc = json.loads(out)
    assert code == 0 and doc["outcome"] == "booted", doc["reason"]
