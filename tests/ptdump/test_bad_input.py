"""Bad input: unreadable tables are reported and the rest dumped; usage errors are one line, exit 2."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from earlymm.arch.modes import PagingMode
from earlymm.images import open_image, write_qemu_core
from earlymm.images.cpustate import CpuState
from earlymm.images.monitor_text import parse_info_tlb
from earlymm.tools.ptdump.partial import open_partial
from tests.ptdump.support import FIXTURES, build, cli, core_of, raw_text

L4 = next(p for p in FIXTURES if p.name == "qemu-l4")


def _frames(path: Path) -> tuple[dict[int, bytes], list[CpuState]]:
    with open_image(path) as img:
        frames = {p: bytes(img.frame(p) or b"") for lo, hi in img.ranges() for p in range(lo >> 12, hi >> 12)}
        return frames, list(img.cpus)


def test_cr3_outside_the_image_is_reported_not_fatal(capsys: pytest.CaptureFixture[str]) -> None:
    for fmt in ("qemu-tlb", "qemu-mem", "linux", "json"):
        r = cli(capsys, str(core_of(L4)), "--cr3", "0x7ff00000000", "--format", fmt)
        assert r.code == 0, fmt
        assert "unreadable" in r.err and "top-level table 0x7ff00000000 is not in the image" in r.err
        if fmt == "qemu-tlb":
            assert r.out == ""
        if fmt == "json":
            assert '"kind": "unreadable"' in r.out


def test_a_table_in_a_hole_is_reported_and_the_rest_dumped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    frames, cpus = _frames(core_of(L4))
    tlb = parse_info_tlb(raw_text(L4, "tlb.txt").decode())
    # Drop the PTE table behind the first vmalloc page: its 2 MiB go unreadable, nothing else changes.
    victim_va = next(t.va for t in tlb if t.va >= 0xFFFF_C900_0000_0000)
    r = cli(capsys, str(core_of(L4)), "--format", "json")
    assert r.code == 0
    with open_image(core_of(L4)) as img:
        from earlymm.arch.modes import Features
        from earlymm.hw.walk import walk
        from earlymm.tools.machine_view import RegOverrides, infer_registers
        from earlymm.tools.ptdump.space import open_space

        space = open_space(img, infer_registers(img.cpus[0], RegOverrides()), Features())
        pt = walk(space.mem, space.plan, space.root("arch"), victim_va).path[-2]
    del frames[pt >> 12]
    core = tmp_path / "hole.elf"
    write_qemu_core(core, sorted(frames.items()), cpus)
    r = cli(capsys, str(core), "--format", "qemu-tlb", "--crlf")
    assert r.code == 0
    lo, hi = victim_va & ~0x1F_FFFF, (victim_va & ~0x1F_FFFF) + 0x20_0000
    want = "".join(ln + "\n" for ln in raw_text(L4, "tlb.txt").decode().split("\n")[:-1]
                   if not lo <= int(ln[:16], 16) < hi)
    assert r.out == want
    assert f"unreadable 0x{lo:016x}-0x{hi:016x}: PDE" in r.err and f"{pt:#x}, which is not in the image" in r.err
    # Linux and JSON formats keep going too.
    assert cli(capsys, str(core)).code == 0
    assert '"kind": "unreadable"' in cli(capsys, str(core), "--format", "json").out


def test_a_truncated_core_dumps_what_survived(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = gzip.decompress(core_of(L4).read_bytes())
    cut = tmp_path / "cut.elf"
    cut.write_bytes(data[:len(data) - 200 * 4096 - 123])  # lose the last ~200 pages mid-page
    with pytest.raises(Exception, match="truncated"):
        open_image(cut)
    part = open_partial(cut)
    assert part.cpus and part.missing
    r = cli(capsys, str(cut), "--format", "qemu-tlb")
    assert r.code == 0
    assert "truncated: physical [" in r.err
    assert r.out.count("\n") > 0 or "unreadable" in r.err
    # Gzip cut short: the partial stream is used the same way.
    cutgz = tmp_path / "cut.elf.gz"
    cutgz.write_bytes(core_of(L4).read_bytes()[:-5000])
    r = cli(capsys, str(cutgz), "--format", "linux")
    assert r.code == 0 and "truncated" in r.err and r.out.startswith("---[ User Space ]---")


def test_a_core_cut_inside_its_headers_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cut = tmp_path / "tiny.elf"
    cut.write_bytes(gzip.decompress(core_of(L4).read_bytes())[:100])
    r = cli(capsys, str(cut))
    assert r.code == 2 and r.out == "" and r.err.count("\n") == 1 and "error:" in r.err


@pytest.mark.parametrize("argv, fragment", [
    (["--format", "nope"], "invalid choice"),
    (["--cr3", "xyz"], "not a number"),
    (["--cpu", "5"], "the image has 1 CPU"),
    (["--max-tables", "0"], "--max-tables 0 is out of range"),
    (["--features", "bogus"], "unknown CPU feature"),
    (["--cr0", "0x11"], "paging is disabled"),
])
def test_usage_errors_are_one_line_exit_2(argv: list[str], fragment: str, capsys: pytest.CaptureFixture[str]) -> None:
    r = cli(capsys, str(core_of(L4)), *argv)
    assert r.code == 2 and r.out == ""
    assert r.err.count("\n") == 1 and fragment in r.err, r.err


def test_missing_file_and_32_bit_linux_format_are_usage_errors(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    r = cli(capsys, str(tmp_path / "nope.elf"))
    assert r.code == 2 and r.err.count("\n") == 1
    b = build(PagingMode.LEGACY32)
    b.mapper.map(0x40_0000, 0x9000, 0x1000, 0x2)
    raw = tmp_path / "mem.raw"
    raw.write_bytes(b"".join(bytes(b.mem.frame(p) or bytes(4096)) for p in range(0x800)))
    base = [str(raw), "--cr0", "0x80000011", "--cr3", hex(b.mapper.root), "--cr4", "0x10", "--efer", "0"]
    r = cli(capsys, *base)
    assert r.code == 2 and "32-bit paging has no such layout" in r.err
    r = cli(capsys, *base, "--format", "qemu-tlb")
    assert (r.code, r.out) == (0, "0000000000400000: 0000000000009000 --------W\n")
    r = cli(capsys, *base, "--check-wx")
    assert r.code == 2 and r.err.count("\n") == 1


def test_several_cr3s_are_dumped_in_turn(capsys: pytest.CaptureFixture[str]) -> None:
    pti = next(p for p in FIXTURES if "pti" in p.name)
    r = cli(capsys, str(core_of(pti)), "--format", "qemu-mem", "--cr3", "0x4867000", "--cr3", "0x4866000")
    assert r.code == 0
    heads = [ln for ln in r.out.splitlines() if ln.startswith("#")]
    assert heads == ["# cr3 0x4867000", "# cr3 0x4866000"]
    user_part = r.out.split("# cr3 0x4866000\n")[0].split("\n", 1)[1]
    assert user_part == raw_text(pti, "mem.txt").decode().replace("\r\n", "\n")
