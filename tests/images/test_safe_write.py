"""Every option that writes a file refuses what is not a regular file, never follows a symlink, and leaves
nothing behind on a full disk (issue 7 item 1)."""

from __future__ import annotations

import errno
import json
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from earlymm.cli.main import main
from earlymm.images import safe_write
from earlymm.images.safe_write import WriteError, check_target, write_atomically, write_bytes
from earlymm.tools import qemu_capture

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "qemu-l4"


@pytest.fixture
def specials(tmp_path: Path) -> Iterator[dict[str, Path]]:
    """A FIFO, a socket, a directory, a symlink to a regular file and a dangling symlink, in tmp_path."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    sock_path = tmp_path / "sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(sock_path))
    (tmp_path / "dir").mkdir()
    real = tmp_path / "real.txt"
    real.write_text("keep me")
    (tmp_path / "link").symlink_to(real)
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    try:
        yield {"fifo": fifo, "socket": sock_path, "dir": tmp_path / "dir", "link": tmp_path / "link",
               "dangling": tmp_path / "dangling"}
    finally:
        sock.close()


KINDS = {"fifo": "a FIFO", "socket": "a socket", "dir": "a directory", "link": "a symbolic link",
         "dangling": "a symbolic link"}


def _snapshot(d: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (os.lstat(p).st_mode, os.lstat(p).st_ino) for p in d.iterdir()}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_helper_refuses_non_regular_targets_and_leaves_them(kind: str, specials: dict[str, Path],
                                                            tmp_path: Path) -> None:
    before = _snapshot(tmp_path)
    with pytest.raises(WriteError, match=KINDS[kind]):
        write_bytes(specials[kind], b"data")
    assert _snapshot(tmp_path) == before  # nothing replaced, nothing left beside it
    assert (tmp_path / "real.txt").read_text() == "keep me"  # the symlink was not written through


def test_dev_full_is_refused_not_replaced() -> None:
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    with pytest.raises(WriteError, match="character device"):
        write_bytes("/dev/full", b"x")
    assert stat.S_ISCHR(os.lstat("/dev/full").st_mode)


@pytest.mark.parametrize("path, needle", [("", "empty"), ("out/", "names a directory"), ("a\0b", "NUL"),
                                          ("missing-dir/x.core", "No such file")])
def test_bad_paths(path: str, needle: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(WriteError, match=needle):
        check_target(path)


def test_enospc_leaves_old_file_and_no_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(safe_write.os, "fsync", full)
    with pytest.raises(WriteError, match="no space left"):
        write_bytes(target, b"new" * 1000)
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["out.bin"]


def test_a_failing_producer_leaves_nothing(tmp_path: Path) -> None:
    def produce(out: object) -> None:
        out.write(b"partial")  # type: ignore[attr-defined]
        raise RuntimeError("producer failed")

    with pytest.raises(RuntimeError):
        write_atomically(tmp_path / "x", produce)
    assert os.listdir(tmp_path) == []


def test_replacing_keeps_the_mode_and_a_new_file_follows_the_umask(tmp_path: Path) -> None:
    old = tmp_path / "old"
    old.write_bytes(b"1")
    old.chmod(0o600)
    write_bytes(old, b"2")
    assert old.read_bytes() == b"2" and stat.S_IMODE(old.stat().st_mode) == 0o600
    mask = os.umask(0o027)
    try:
        write_bytes(tmp_path / "new", b"3")
    finally:
        os.umask(mask)
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o640


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_boot_save_core_refuses_before_booting(kind: str, specials: dict[str, Path], tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    before = _snapshot(tmp_path)
    code, out, err = run(capsys, "boot", "--save-core", str(specials[kind]))
    assert (code, out) == (2, "") and err.count("\n") == 1 and KINDS[kind] in err and "Traceback" not in err
    assert _snapshot(tmp_path) == before


def test_boot_save_core_on_a_full_disk(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(safe_write.os, "fsync", full)
    code, out, err = run(capsys, "boot", "--until", "startup_64", "--save-core", str(tmp_path / "c.core"))
    assert (code, out) == (2, "") and err.count("\n") == 1 and "no space left" in err
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("path, needle", [("", "empty"), ("{tmp}/", "names a directory")])
def test_boot_save_core_bad_paths(path: str, needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = run(capsys, "boot", "--save-core", path.format(tmp=tmp_path))
    assert code == 2 and err.count("\n") == 1 and needle in err


def test_save_core_help_states_the_symlink_policy(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _err = run(capsys, "boot", "--help")
    assert code == 0 and "symbolic links are refused" in " ".join(out.split())


def test_capture_tool_output_paths(specials: dict[str, Path], tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    before = _snapshot(tmp_path)
    for argv in (["--out", str(specials["fifo"])], ["--out", str(tmp_path / "real.txt")],
                 ["--fetch-kernel", str(specials["socket"])], ["minimize", str(FIXTURE), str(specials["fifo"])],
                 ["minimize", str(FIXTURE), ""]):
        assert qemu_capture.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err, (argv, err)
    assert _snapshot(tmp_path) == before


def test_minimize_refuses_a_fifo_among_its_outputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "fixture"
    out.mkdir()
    os.mkfifo(out / "minimize.json")
    assert qemu_capture.main(["minimize", str(FIXTURE), str(out)]) == 2
    assert "a FIFO" in capsys.readouterr().err
    assert stat.S_ISFIFO(os.lstat(out / "minimize.json").st_mode)


def test_minimize_round_trip_through_the_safe_writer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "fixture"
    assert qemu_capture.main(["minimize", str(FIXTURE), str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["table_pages"] == json.loads((FIXTURE / "minimize.json").read_text())["table_pages"]
    assert not [p for p in out.iterdir() if p.name.endswith(safe_write.TEMP_SUFFIX)]
