"""The capture tool's guest files (kallsyms, /sys/firmware/memmap) without QEMU: what /init runs, how the
second serial port's text is split, and what a fixture keeps of it."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from earlymm.tools import capture_symbols
from earlymm.tools.initramfs import FILE_MARK, FILES_END, READY, build_initramfs, init_script, split_guest_files
from tests.images.test_capture_helpers import read_newc
from tests.inspect.support import NOKASLR

REPORT = (f"{FILE_MARK} /proc/kallsyms\r\n0000000000000000 A fixed_percpu_data\r\nffffffff81000000 T _text\r\n"
          f"ffffffff81000000 T startup_64\r\nffffffff81000010 t not_kept\r\nffffffff82a10000 D init_top_pgt\r\n"
          f"{FILE_MARK} /sys/firmware/memmap\r\n/sys/firmware/memmap/0/start:0x0\r\n"
          f"/sys/firmware/memmap/0/end:0x9fbff\r\n/sys/firmware/memmap/0/type:System RAM\r\n{FILES_END}\r\n")


def test_init_reports_before_it_says_ready() -> None:
    script = init_script(report_files=True)
    assert script.index("/proc/kallsyms") < script.index(READY) and "> /dev/ttyS1" in script
    assert "kptr_restrict" in script and "grep -r . /sys/firmware/memmap" in script
    assert "/dev/ttyS1" not in init_script() and READY in init_script(busy_user=True)


def test_initramfs_has_the_second_serial_port(tmp_path: Path) -> None:
    busybox = tmp_path / "busybox"
    busybox.write_bytes(b"\x7fELF")
    entries = {name: (mode, rdev) for name, mode, _d, rdev in read_newc(gzip.decompress(
        build_initramfs(busybox, report_files=True)))}
    assert entries["dev/ttyS1"][1] == (4, 65)  # COM2: major 4, minor 64 + 1


def test_the_report_is_split_by_file() -> None:
    files = split_guest_files(REPORT)
    assert files["/proc/kallsyms"].splitlines()[1] == "ffffffff81000000 T _text"
    assert files["/sys/firmware/memmap"].count("\n") == 3
    with pytest.raises(ValueError, match="incomplete"):
        split_guest_files(REPORT.replace(FILES_END, ""))


def test_capture_and_fixture_files(tmp_path: Path) -> None:
    cap, fix = tmp_path / "cap", tmp_path / "fix"
    cap.mkdir()
    fix.mkdir()
    meta = capture_symbols.save_guest_files(REPORT, cap)
    assert meta["kallsyms_lines"] == 5 and (cap / "memmap.txt").exists()
    assert capture_symbols.symbol_samples((cap / "kallsyms.txt").read_text()) == [
        0xFFFF_FFFF_8100_0000, 0xFFFF_FFFF_8100_0018, 0xFFFF_FFFF_8100_0000, 0xFFFF_FFFF_8100_0018,
        0xFFFF_FFFF_82A1_0000, 0xFFFF_FFFF_82A1_0018]
    (fix / "meta.json").write_text('{"kaslr": false}')
    entry = capture_symbols.add_to_fixture(cap, fix)
    assert entry is not None and entry["kept_lines"] == 4 and entry["guest_lines"] == 5
    assert "not_kept" not in (fix / "kallsyms").read_text()
    saved = json.loads((fix / "meta.json").read_text())
    assert saved["kaslr"] is False and saved["kallsyms"]["filter"] == capture_symbols.FILTER_TEXT
    with pytest.raises(ValueError, match="garbled"):
        capture_symbols.save_guest_files(f"{FILE_MARK} /proc/kallsyms\nnot a symbol\n{FILES_END}\n", cap)


def test_the_committed_fixtures_keep_what_the_filter_says() -> None:
    kept = {ln.split()[2] for ln in (NOKASLR / "kallsyms").read_text().splitlines()}
    assert kept == set(capture_symbols.KEPT)
