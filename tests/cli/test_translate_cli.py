"""``earlymm translate``: the CLI contract (JSON keys, batch semantics, bad input → one line, exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from earlymm.arch.flags import Cr0, Cr4
from earlymm.arch.modes import PagingMode
from earlymm.cli.main import main
from earlymm.hw.mapper import FrameAllocator, Mapper
from earlymm.hw.memory import PhysMem
from earlymm.images import CpuState, write_qemu_core
from earlymm.images.cpustate import Segment

LONG_CR0 = int(Cr0.PE | Cr0.ET | Cr0.WP | Cr0.PG)


def _cs64() -> tuple[Segment, ...]:
    segs = [Segment() for _ in range(10)]
    segs[0] = Segment(0x10, 0xFFFFFFFF, 1 << 21 | 1 << 15, 0)
    return tuple(segs)


@pytest.fixture
def core(tmp_path: Path) -> Path:
    """A 4-level core: 0x400000 → 0x123000 RW user 4K page with A clear; 0x600000 2M read-only."""
    mem = PhysMem()
    mp = Mapper(mem, PagingMode.LONG4, FrameAllocator(mem, 0x10000, 0x80000), table_flags=0x7)
    mp.map_page(0x400000, 0x123000, 4096, 0x2 | 0x4)
    mp.map_page(0x600000, 0x800000, 1 << 21, 0x0)
    cpu = CpuState(cr0=LONG_CR0, cr3=mp.root, cr4=int(Cr4.PAE), segments=_cs64(), rip=0xFFFFFFFF81000000)
    path = tmp_path / "core.elf"
    write_qemu_core(path, ((p, mem.frames[p]) for p in sorted(mem.frames)), [cpu])
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_json_contract(core: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "translate", str(core), "0x400abc", "0x601000", "--json", "--absent", "zero")
    assert code == 0
    a, b = json.loads(out)
    assert set(a) >= {"va", "access", "cpl", "ok", "pa", "page_size", "levels", "fault", "ad_updates"}
    assert a["ok"] and a["pa"] == "0x123abc" and a["page_size"] == "0x1000" and a["fault"] is None
    assert [lv["level"] for lv in a["levels"]] == ["PML4", "PDPT", "PD", "PT"]
    assert set(a["levels"][0]) >= {"level", "table", "index", "entry_addr", "entry"}
    assert len(a["ad_updates"]) == 4  # every entry used gets A
    assert b["pa"] == "0x801000" and b["page_size"] == "0x200000"


def test_write_fault_error_code(core: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "translate", str(core), "0x600010", "--access", "write", "--cpl", "3",
                       "--json", "--absent", "zero")
    (r,) = json.loads(out)
    assert code == 0 and not r["ok"] and r["pa"] is None
    # present, write, user: the 2M page is supervisor and read-only
    assert r["fault"] == {**r["fault"], "vector": 14, "error_code": "0x7", "cr2": "0x600010"}


def test_noncanonical_is_gp(core: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run(capsys, "translate", str(core), "0x0000800000000000", "--json", "--absent", "zero")
    (r,) = json.loads(out)
    assert r["fault"]["vector"] == 13 and r["levels"] == []


def test_batch_runs_in_order_on_one_machine(core: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    batch = tmp_path / "b.jsonl"
    batch.write_text('{"va": "0x400000", "access": "read", "cpl": 3}\n'
                     '{"va": "0x400008", "access": "write", "cpl": 3}\n'
                     '{"va": "0x400010", "access": "write", "cpl": 3}\n')
    before = core.read_bytes()
    _, out, _ = run(capsys, "translate", str(core), "--batch", str(batch), "--json", "--absent", "zero")
    r1, r2, r3 = json.loads(out)
    assert len(r1["ad_updates"]) == 4
    assert [u["new"] for u in r2["ad_updates"]] == ["0x123067"]  # A already set by the read; only D now
    assert r3["ad_updates"] == []
    assert core.read_bytes() == before  # the image is never modified


def test_holes_reported_without_absent_zero(core: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run(capsys, "translate", str(core), "0x400000", "--cr3", "0x7000000", "--json")
    (r,) = json.loads(out)
    assert not r["ok"] and r["fault"] is None and r["unreadable"] == "0x7000000"


@pytest.mark.parametrize("argv, needle", [
    (["translate", "{core}", "0xzz"], "not an address"),
    (["translate", "{core}"], "no virtual address"),
    (["translate", "{core}", "0x1", "--cr4", "0x80000000"], "reserved"),
    (["translate", "{core}", "0x1", "--cr3", "0x1000000000000000"], "reserved"),
    (["translate", "{core}", "0x1", "--maxphyaddr", "60"], "MAXPHYADDR"),
    (["translate", "{core}", "0x1", "--features", "nx,warp"], "unknown CPU feature"),
    (["translate", "{notelf}", "0x1"], "CPU state"),
    (["translate", "{missing}", "0x1"], ""),
    (["translate", "{core}", "--batch", "{empty}"], "no accesses"),
    (["translate", "{core}", "--batch", "{badbatch}"], ":2:"),
    (["translate", "{core}", "0x1", "--access", "jump"], "unknown access"),
])
def test_bad_input_one_line_exit_2(core: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                   argv: list[str], needle: str) -> None:
    notelf = tmp_path / "x.bin"
    notelf.write_bytes(b"hello" * 100)
    empty = tmp_path / "e.jsonl"
    empty.write_text("\n")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"va": "0x1"}\n{"va": "nope"}\n')
    subst = {"core": core, "notelf": notelf, "missing": tmp_path / "none.elf", "empty": empty, "badbatch": bad}
    code, out, err = run(capsys, *[a.format(**subst) for a in argv])
    assert code == 2
    assert err.count("\n") == 1 and needle in err and "Traceback" not in err
    assert out == ""


def test_truncated_core_is_a_usage_error(core: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    t = tmp_path / "t.elf"
    t.write_bytes(core.read_bytes()[:200])
    code, _, err = run(capsys, "translate", str(t), "0x1")
    assert code == 2 and err.count("\n") == 1


def test_self_map_levels_show_what_the_cpu_saw(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """PML4[0x1ed] points at the PML4 with A clear: 0x1ed at all four indices reads that entry four
    times. The first read stores A; the three later ones see it (spec §1.6, QEMU's walker order), so
    ``levels`` shows A from the second level on and ``ad_updates`` has one store, then only D for a
    write."""
    mem = PhysMem()
    mp = Mapper(mem, PagingMode.LONG4, FrameAllocator(mem, 0x10000, 0x80000), table_flags=0x7)
    mp.map_page(0x400000, 0x123000, 4096, 0x2 | 0x4)
    slot = mp.root + 8 * 0x1ED
    mem.write_u64(slot, mp.root | 0x3)
    cpu = CpuState(cr0=LONG_CR0, cr3=mp.root, cr4=int(Cr4.PAE), segments=_cs64(), rip=0xFFFFFFFF81000000)
    path = tmp_path / "self.elf"
    write_qemu_core(path, ((p, mem.frames[p]) for p in sorted(mem.frames)), [cpu])
    va = 0xFFFF_F6FB_7DBE_D000 | 0x18  # 0x1ed at every level, sign-extended
    batch = tmp_path / "b.jsonl"
    batch.write_text(f'{{"va": "{va:#x}", "access": "read"}}\n{{"va": "{va:#x}", "access": "write"}}\n')
    code, out, _ = run(capsys, "translate", str(path), "--batch", str(batch), "--json", "--absent", "zero")
    r1, r2 = json.loads(out)
    assert code == 0 and r1["ok"] and r1["pa"] == hex(mp.root + 0x18)
    e = mp.root | 0x3
    assert [lv["entry_addr"] for lv in r1["levels"]] == [hex(slot)] * 4
    assert [lv["entry"] for lv in r1["levels"]] == [hex(e)] + [hex(e | 0x20)] * 3
    assert r1["ad_updates"] == [{"addr": hex(slot), "old": hex(e), "new": hex(e | 0x20)}]
    assert [lv["entry"] for lv in r2["levels"]] == [hex(e | 0x20)] * 4
    assert r2["ad_updates"] == [{"addr": hex(slot), "old": hex(e | 0x20), "new": hex(e | 0x60)}]
