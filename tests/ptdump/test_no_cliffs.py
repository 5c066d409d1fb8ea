"""No cliffs (issue 7 item 7): ``--format json`` on small self-referencing 32-bit/PAE tables costs about what
its output weighs, like the other formats; ``.gz`` images are inflated without holding them in memory,
and a gzip bomb is one line, exit 2."""

from __future__ import annotations

import json
import struct
import tracemalloc
import zlib
from pathlib import Path

import pytest

from earlymm.arch.modes import Features
from earlymm.hw.memory import PhysMem
from earlymm.images import CpuState, ImageError, open_image, write_qemu_core
from earlymm.tools.ptdump import render
from earlymm.tools.ptdump.engine import DEFAULT_MAX_LEAVES, DEFAULT_MAX_TABLES, expand
from earlymm.tools.ptdump.runs import space_json
from earlymm.tools.ptdump.space import Space, open_space
from tests.ptdump.support import cli

CR0 = 0x8000_0011  # PE ET PG


def self_referencing(mode: str, n: int) -> tuple[PhysMem, tuple[int, int, int, int]]:
    """A 32-bit PD whose first ``n`` entries point back at it, or a PAE PDPT whose four slots name one PD
    whose first ``n`` entries point back at that PD: the table is its own page table."""
    mem = PhysMem()
    if mode == "32":
        mem.write(0x1000, struct.pack("<1024I", *([0x1000 | 7] * n + [0] * (1024 - n))))
        return mem, (CR0, 0x1000, 0, 0)
    mem.write(0x1000, struct.pack("<4Q", *[0x2000 | 1] * 4))  # the PDPT: four times the same PD
    mem.write(0x2000, struct.pack("<512Q", *([0x2000 | 7] * n + [0] * (512 - n))))
    return mem, (CR0, 0x1000, 0x20, 0)


def space_of(mode: str, n: int) -> Space:
    mem, regs = self_referencing(mode, n)
    return open_space(mem, regs, Features())


@pytest.mark.parametrize("mode, n", [("32", 256), ("pae", 128)])
def test_json_runs_equal_the_leaf_by_leaf_reference(mode: str, n: int) -> None:
    """Refactoring guard: the DAG renderer lists exactly the runs ``merge(expand(tree))`` gives."""
    space = space_of(mode, n)
    doc = json.loads(render.dump([space], "json", "x", max_tables=DEFAULT_MAX_TABLES,
                                 max_leaves=DEFAULT_MAX_LEAVES).text)["address_spaces"][0]
    tree = space.tree("arch")
    want = space_json(tree, expand(tree), space.cr3)
    assert doc == {**want, "runs": want["runs"], "notes": want["notes"]}
    # n entries reach the table again, which holds n leaves: n*n leaves (PAE: 4 PDPT slots), none merging
    assert len(doc["runs"]) == doc["leaves"] == (n * n if mode == "32" else 4 * n * n)


@pytest.mark.parametrize("mode, n", [("32", 512), ("pae", 256)])
def test_json_of_self_referencing_tables_costs_what_its_output_weighs(mode: str, n: int) -> None:
    space = space_of(mode, n)
    tracemalloc.start()
    try:
        out = render.dump([space], "json", "x", max_tables=DEFAULT_MAX_TABLES, max_leaves=DEFAULT_MAX_LEAVES)
        size = sum(map(len, out.parts))
        _now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert size > 40 << 20  # 262,144 one-leaf runs: the output itself is large
    # Leaf tuples, LeafRun objects and a dict per run cost ~7x the text; the parts are the text itself.
    assert peak < 1.5 * size + (16 << 20), (peak >> 20, size >> 20)


def _gzip_file(path: Path, chunks: list[bytes | int]) -> None:
    """Stream-compress ``chunks`` (bytes, or an int: that many zero bytes) without holding the output."""
    z = zlib.compressobj(1, wbits=31)
    zero = bytes(1 << 20)
    with open(path, "wb") as f:
        for c in chunks:
            if isinstance(c, int):
                for _ in range(c >> 20):
                    f.write(z.compress(zero))
            else:
                f.write(z.compress(c))
        f.write(z.flush())


def test_a_gz_image_is_not_inflated_into_memory(tmp_path: Path) -> None:
    marker = b"earlymm!" * 512
    path = tmp_path / "big.raw.gz"
    _gzip_file(path, [256 << 20, marker])  # 256 MiB of zeros, then one marked page
    tracemalloc.start()
    try:
        with open_image(path) as img:
            assert img.ranges() == [(0, (256 << 20) + 4096)]
            assert bytes(img.frame(256 << 8) or b"") == marker
            assert bytes(img.frame(12345) or b"") == bytes(4096)
        _now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, peak >> 20


def test_a_gzip_bomb_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bomb = tmp_path / "bomb.gz"
    _gzip_file(bomb, [128 << 20])
    for argv in (["translate", str(bomb), "0x1", "--cr3", "0x1000", "--max-inflate", "16M"],
                 ["ptdump", str(bomb), "--cr3", "0x1000", "--max-inflate", "16M"]):
        from earlymm.cli.main import main

        code = main(argv)
        out, err = capsys.readouterr()
        assert (code, out) == (2, "") and err.count("\n") == 1 and "gzip bomb" in err and "16M" in err, err
    with pytest.raises(ImageError, match="inflates to more than 1M"):
        open_image(bomb, max_inflated=1 << 20)


def test_a_truncated_gz_core_is_still_dumped_from_what_survives(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    mem, _regs = self_referencing("32", 1)
    whole = tmp_path / "c.core"
    write_qemu_core(whole, [(1, bytes(mem.frame(1) or b""))] + [(p, bytes(4096)) for p in range(16, 4096)],
                    [CpuState(cr0=CR0, cr3=0x1000, cr4=0)])
    cut = tmp_path / "c.core.gz"
    _gzip_file(cut, [whole.read_bytes()])
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])  # the stream stops halfway
    r = cli(capsys, str(cut), "--format", "qemu-tlb")
    assert r.code == 0 and r.out == "0000000000000000: 0000000000001000 -------UW\n" and "truncated" in r.err
