"""``earlymm boot --trace-writes`` as a command: its JSON contract, its filters, its bad input, and the other
boot paths (i386's head.S, Xen PV's machine frames). Expected values come from the Linux source (head.S's
0x007 PDEs and PTEs, head_64.S's fix-ups) and from the domain's own p2m, not from the tracer."""

from __future__ import annotations

import json

import pytest

from earlymm.kernel.boot import boot
from earlymm.kernel.consts import PROFILES
from earlymm.kernel.context import KernelConfig
from earlymm.platform.pc import MachineConfig, pc_e820
from tests.inspect.support import Cli, cli

KEYS = {"function", "table", "table_pa", "level", "index", "va", "old", "new", "decoded"}


def bad(r: Cli, *words: str) -> None:
    assert r.code == 2 and r.out == ""
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.err, r.err
    for w in words:
        assert w in lines[0], lines[0]


def test_json_keys_and_text_section(capsys: pytest.CaptureFixture[str]) -> None:
    r = cli(capsys, "boot", "--trace-writes", "--json", "--until", "x86_64_start_kernel")
    assert r.code == 0
    doc = json.loads(r.out)
    writes = doc["table_writes"]
    assert writes and all(set(w) >= KEYS for w in writes)
    assert {w["function"] for w in writes} >= {"startup_64", "reset_early_page_tables", "early_make_pgtable",
                                               "x86_64_start_kernel"}
    # head_64.S step 4: early_level4_pgt[511] += load_delta (0 at 16 MiB): an addq that stores the same value
    top511 = next(w for w in writes if w["table"] == "early_level4_pgt" and w["index"] == 511)
    assert top511["old"] == top511["new"] and top511["decoded"]["new"]["flags"] == ["P", "RW", "US", "A", "D"]
    assert top511["va"] == ["0xffffff8000000000", "0x10000000000000000"]
    t = cli(capsys, "boot", "--trace-writes", "--until", "startup_64")
    assert t.code == 0 and "== table writes (all)" in t.out and "early_dynamic_pgts[1][8..19] ×12" in t.out


def test_filters(capsys: pytest.CaptureFixture[str]) -> None:
    r = cli(capsys, "boot", "--json", "--until", "startup_64", "--trace-writes-table", "early_dynamic_pgts[1]",
            "--trace-writes-va", "0x1000000-0x1400000")
    writes = json.loads(r.out)["table_writes"]
    # two 2 MiB entries of the 12-entry run map [16 MiB, 20 MiB): PMD[8] and PMD[9], clipped from the run
    assert [(w["table"], w["index"], w["count"]) for w in writes] == [("early_dynamic_pgts[1]", 8, 2)]
    pa = json.loads(r.out)["table_writes_stats"]["tables"]
    pool1 = next(t["table_pa"] for t in pa if t["table"] == "early_dynamic_pgts[1]")
    by_pa = json.loads(cli(capsys, "boot", "--json", "--until", "startup_64", "--trace-writes-table", pool1).out)
    assert {w["table"] for w in by_pa["table_writes"]} == {"early_dynamic_pgts[1]"}
    every_pool = json.loads(cli(capsys, "boot", "--json", "--until", "startup_64",
                                "--trace-writes-table", "early_dynamic_pgts").out)
    assert {w["table"] for w in every_pool["table_writes"]} == {"early_dynamic_pgts[0]", "early_dynamic_pgts[1]"}


@pytest.mark.parametrize(("argv", "words"), [
    (["--trace-writes-va", "0x2000-0x1000"], ["--trace-writes-va", "END"]),
    (["--trace-writes-va", "0x1000"], ["START-END"]),
    (["--trace-writes-va", "zz-0x1000"], ["start"]),
    (["--trace-writes-va", "0x0-0x20000000000000000"], ["end"]),
    (["--trace-writes-table", "no_such_pgt"], ["no_such_pgt", "no such table"]),
    (["--trace-writes-table", "early_dynamic_pgts[x]"], ["no such table"]),
    (["--trace-writes-table", "level3_ident_pgt"], ["level3_ident_pgt"]),  # a Xen build's table
    (["--trace-writes-table", "0x1234000"], ["0x1234000", "no page table"]),  # checked after the boot
])
def test_bad_input(capsys: pytest.CaptureFixture[str], argv: list[str], words: list[str]) -> None:
    bad(cli(capsys, "boot", "--until", "startup_64", *argv), *words)


def test_off_changes_nothing() -> None:
    """Without the option the machine's methods are the classes' own (the boot runs the unchanged code)."""
    r = boot(MachineConfig(e820=tuple(pc_e820(4 << 30))), KernelConfig(PROFILES["v3.9"]))
    assert "write_int" not in vars(r.ctx.platform.mem) and "store" not in vars(r.ctx.cpu)


def test_i386_head_s(capsys: pytest.CaptureFixture[str]) -> None:
    """2.6.21 head.S: PDE i and PDE 768 + i → pg0 page i with 0x007; its PTEs 0x007 + n·4 KiB."""
    r = cli(capsys, "boot", "--arch", "i386", "--json", "--until", "startup_32", "--trace-writes")
    writes = json.loads(r.out)["table_writes"]
    pdes = [w for w in writes if w["table"] == "swapper_pg_dir" and w["function"] == "build_boot_page_tables"]
    pg0 = sorted({int(w["new"], 16) & ~0xFFF for w in pdes})
    assert {(w["index"], int(w["new"], 16)) for w in pdes} == \
        {(i + off, pa | 0x007) for i, pa in enumerate(pg0) for off in (0, 768)}
    ptes = [w for w in writes if w["table"].startswith("pg0[")]
    assert ptes and all(w["count"] == 1024 and w["new_step"] == "0x1000" and w["level"] == 1 for w in ptes)
    assert [int(w["new"], 16) for w in ptes] == [0x007 + k * (4 << 20) for k in range(len(ptes))]
    assert all(w["decoded"]["new"]["leaf"] == "4K" for w in ptes)


def test_xen_machine_frames(capsys: pytest.CaptureFixture[str]) -> None:
    """Under Xen PV the tables hold mfns: every decoded leaf's mfn is the p2m's frame for its pfn."""
    from earlymm.cli.boot_cmd import run_xen
    from earlymm.cli.main import build_parser
    from earlymm.cli.trace_writes_args import trace_writes
    from earlymm.kernel.phases import Phase
    from earlymm.tools.tablewrites import Filter
    from earlymm.tools.tablewrites.report import select, view_json

    args = build_parser().parse_args(["boot", "--pv", "xen", "--trace-writes"])
    tw = trace_writes(args, "xen-pv")
    assert tw is not None
    result = run_xen(args, Phase.SETUP_ARCH, tw)
    p2m = result.ctx.platform.p2m
    docs = [view_json(tw.tracer, v) for v in select(tw.tracer, Filter())]
    leaves = [d for d in docs if d["decoded"]["new"]["leaf"] and "pfn" in d["decoded"]["new"]
              and not int(d["decoded"]["new"]["pfn"], 16) >> 63]
    assert len(leaves) >= 10
    for d in leaves:
        assert int(p2m[int(d["decoded"]["new"]["pfn"], 16)]) == int(d["decoded"]["new"]["mfn"], 16)
    ops = {d["op"] for d in docs}
    assert any("mmu_update" in o for o in ops) and any("pin validation" in o for o in ops)
    assert all("table_pfn" in d for d in docs)
