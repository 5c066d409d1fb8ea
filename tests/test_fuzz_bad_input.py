"""Generated bad input through every command (issue 7, "Done when").

Each example is a command line that must be refused: ``translate``, ``ptdump``, ``boot``, ``gdb-script``,
``rmap``, ``diff``, bad ``--symbols`` and ``--regs`` files,
the capture tool's argument parsing, and the gdb commands' argument parsing. For every one: exit status
2 (the gdb commands: one ``CommandError``), exactly one line on stderr, no traceback and no "internal
error"; no file opened for writing, created, renamed, removed or re-moded outside the test's directory
(a Python audit hook sees every such call); a bounded time and a bounded traced-memory peak.

Most examples are refused while parsing; some reach the image readers, the CPU's register checks or the
platform's loader checks. Derandomized, so the suite is reproducible; ``TALLY`` counts what ran.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import shutil
import socket
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from earlymm.cli.main import main
from earlymm.tools import qemu_capture
from earlymm.tools.gdb import commands, dump
from earlymm.tools.gdb.target import TargetError

FIXTURE_CORE = Path(__file__).resolve().parent / "fixtures" / "qemu-l4" / "core.elf.gz"
SECONDS = 10.0  # per example: parse-time refusals take milliseconds, model checks well under a second
PEAK = 64 << 20  # traced Python memory per example
TALLY: dict[str, int] = {}
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
MUTATING = {"os.rename": 2, "os.remove": 1, "os.rmdir": 1, "os.mkdir": 1, "os.chmod": 1, "os.chown": 1,
            "os.truncate": 1, "os.symlink": 2, "os.link": 2, "os.utime": 1, "os.mkfifo": 1, "os.mknod": 1,
            "shutil.rmtree": 1, "shutil.copyfile": 2, "tempfile.mkstemp": 1, "tempfile.mkdtemp": 1}


class WriteWatch:
    """Records paths written while ``active`` (audit hooks cannot be removed: one for the session)."""

    def __init__(self) -> None:
        self.root: str | None = None
        self.outside: list[tuple[str, str]] = []
        sys.addaudithook(self.hook)

    def hook(self, event: str, args: tuple[Any, ...]) -> None:
        if self.root is None:
            return
        if event == "open":
            path, mode, flags = (*args, None, None)[:3]
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or \
                (isinstance(flags, int) and bool(flags & WRITE_FLAGS))
            if writing:
                self.check(event, path)
        elif event in MUTATING:
            for path in args[:MUTATING[event]]:
                self.check(event, path)

    def check(self, event: str, path: object) -> None:
        if not isinstance(path, str | bytes | os.PathLike):
            return  # a file descriptor: opened (and so checked) before
        full = os.path.realpath(os.fsdecode(path))
        assert self.root is not None
        if full != self.root and not full.startswith(self.root + os.sep):
            self.outside.append((event, full))

    @contextlib.contextmanager
    def watching(self, root: Path) -> Iterator[None]:
        self.root, self.outside = os.path.realpath(root), []
        try:
            yield
        finally:
            self.root = None


WATCH = WriteWatch()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Bad (and some good) inputs on disk, made once; the commands run with this as cwd and TMPDIR."""
    d = tmp_path_factory.mktemp("fuzz")
    core = d / "core.elf"
    core.write_bytes(gzip.decompress(FIXTURE_CORE.read_bytes()))
    (d / "header-only.elf").write_bytes(core.read_bytes()[:64])
    elf = bytearray(core.read_bytes()[:4096])
    elf[18] = 3  # EM_386
    (d / "i386.elf").write_bytes(bytes(elf))
    (d / "noise.bin").write_bytes(os.urandom(3000))
    (d / "empty.bin").write_bytes(b"")
    (d / "bad.gz").write_bytes(b"\x1f\x8b\x08\x00" + b"\xff" * 100)
    with gzip.open(d / "bomb.gz", "wb", compresslevel=1) as g:
        for _ in range(40):
            g.write(bytes(1 << 20))
    (d / "dir").mkdir()
    os.mkfifo(d / "fifo")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(d / "sock"))
    (d / "regular.txt").write_text("keep")
    (d / "link").symlink_to(d / "regular.txt")
    (d / "reserved-only.e820").write_text("0 0x9fc00 reserved\n0x100000 0x40000000 reserved\n")
    try:
        yield {k: str(d / v) if v else str(d) for k, v in {
            "root": "", "core": "core.elf", "gzcore": "", "header": "header-only.elf", "i386": "i386.elf",
            "noise": "noise.bin", "empty": "empty.bin", "badgz": "bad.gz", "bomb": "bomb.gz", "dir": "dir",
            "fifo": "fifo", "sock": "sock", "regular": "regular.txt", "link": "link", "missing": "missing",
            "reserved": "reserved-only.e820"}.items()} | {"gzcore": str(FIXTURE_CORE)}
    finally:
        sock.close()
        shutil.rmtree(d, ignore_errors=True)


@contextlib.contextmanager
def isolated(root: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    with monkeypatch.context() as m:
        m.chdir(root)
        m.setattr(tempfile, "tempdir", root)
        m.setattr(sys, "dont_write_bytecode", True)
        yield


def check_refused(kind: str, call: Callable[[], int | None], root: str) -> None:
    """Run ``call`` with stdio captured; assert the refusal contract. ``call`` returns an exit status, or
    None when it is a gdb command (which raises CommandError instead)."""
    out, err = io.StringIO(), io.StringIO()
    tracemalloc.start()
    t0 = time.monotonic()
    try:
        with WATCH.watching(Path(root)), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = call()
            except commands.CommandError as e:
                code, message = 2, f"{e}\n"
                err.write(message)
        elapsed = time.monotonic() - t0
        _now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    text = err.getvalue()
    assert code == 2, (kind, code, text, out.getvalue()[:200])
    assert text.count("\n") == 1 and text.endswith("\n"), (kind, text)
    assert "Traceback" not in text and "internal error" not in text, (kind, text)
    assert out.getvalue() == "", (kind, out.getvalue()[:200])
    assert WATCH.outside == [], (kind, WATCH.outside)
    assert elapsed < SECONDS, (kind, elapsed)
    assert peak < PEAK, (kind, peak >> 20)
    TALLY[kind] = TALLY.get(kind, 0) + 1


# --- strategies ----------------------------------------------------------------------------------------

DIGITS = st.text("0123456789", min_size=1, max_size=24)
BAD_NUMBER = st.one_of(
    st.sampled_from(["", " ", "+5", "-1", "1_000", "0x", "0x-1", "0o17", "0b101", "1e5", "1.0e400", "inf", "nan",
                     "Infinity", "0x1ffffffffffffffff", "18446744073709551616", "ffff8880", "0xzz", "1,000",
                     "0x7f'00", "0x1_0", "00007f0000000000", "0000000000400000", "٣", "１２", "0x１"]),
    st.builds(lambda s, d: s + d, st.sampled_from(["+", "-", "0", "0_", " +"]), DIGITS),
    st.builds(lambda d: d[:1] + "_" + d[1:], st.text("0123456789", min_size=2, max_size=12)),
    st.text(st.characters(categories=["Nd"], exclude_characters="0123456789"), min_size=1, max_size=6),
    st.integers(1 << 64, 1 << 300).map(hex),
    st.integers(1 << 64, 1 << 300).map(str),
    st.text("abcdefghijklmnopqrstuvwxyz!@#%^&*()[]{};:,.<>?/|~`", min_size=1, max_size=12),
)
BAD_SIZE = st.one_of(st.sampled_from(["1.0e400", "inf", "nan", "=-4G", "0", "0x0", "0.3K", "17E", "4 G", "G", "4Q",
                                      "", "0004", "1.5", "4PiBs", "0x1_000", "٤G"]),
                     st.text("KMGTPEiBkb!. ", min_size=1, max_size=6))
BAD_CPL = st.sampled_from(["1", "2", "4", "-0", "03", "３", "user", "0x3", ""])
BAD_ACCESS = st.text("abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=8).filter(
    lambda s: s not in ("read", "r", "write", "w", "exec", "x", "fetch", "execute"))
BAD_FEATURES = st.sampled_from(["nx,warp", "la58", "-", "all,none,", "smap=1"])
BAD_BATCH_LINE = st.one_of(
    st.sampled_from(['{"va": true}', '{"va": 1.5}', '{"va": "4096"}', '{"va": null}', '{"va": [1]}', '{"va": {}}',
                     '{"va": Infinity}', '{"va": NaN}', '{"va": 1e400}', '{"va": -1}', '{"va": "0x1", "va": "0x2"}',
                     '[{"va": 1}]', "{'va': 1}", '{"va": "0x1", "ac": 1}', '{"va": "0x1", "cpl": "3"}',
                     '{"va": "0x1", "cpl": true}', '{"va": "0x1", "cpl": 2}', '{"va": "0x1", "access": 1}',
                     '{"va": "0x1", "access": "jump"}', "[" * 3000 + "]" * 3000, "x" * 70000, '"just a string"',
                     '{"access": "read"}', '{"va": 123456789012345678901234567890}']),
    st.builds(lambda k: json.dumps({"va": "0x1000", k: 0}),
              st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=10).filter(
                  lambda k: k not in ("va", "access", "cpl", "ac"))),
    st.builds(lambda n: json.dumps({"va": n}), BAD_NUMBER),
)
BAD_E820_LINE = st.sampled_from(["0 0x1000", "0 0x1000 ram extra", "0x1000 0 ram", "0 00001000 ram", "0 0x1000 dram",
                                 "x" * 5000, "0x10000000000000 0x10000000000001 ram", "0 0x1_000 ram",
                                 "0x100000 0x300000 ram\n0x200000 0x400000 ram", "+0 0x1000 ram", "0 ١٠٠٠ ram"])
OUTPUT_KIND = st.sampled_from(["dir", "fifo", "sock", "link", "dirslash", "empty", "devfull", "missingdir"])


def output_path(files: dict[str, str], kind: str) -> str:
    return {"dir": files["dir"], "fifo": files["fifo"], "sock": files["sock"], "link": files["link"],
            "dirslash": files["dir"] + "/", "empty": "", "devfull": "/dev/full",
            "missingdir": files["missing"] + "/x.core"}[kind]


SETTINGS = settings(derandomize=True, database=None, deadline=None, max_examples=90,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large])


@st.composite
def translate_argv(draw: st.DrawFn, files: dict[str, str], ptdump: bool) -> list[str]:
    image = files[draw(st.sampled_from(["core", "gzcore"]))]
    choice = draw(st.sampled_from(["option", "va", "batch", "image", "model"] if not ptdump else
                                  ["option", "image", "model"]))
    if choice == "va":
        return [image, "--", draw(BAD_NUMBER)]
    if choice == "batch":
        path = Path(files["root"]) / f"batch-{draw(st.integers(0, 9))}.jsonl"
        path.write_text('{"va": "0x400000"}\n' + draw(BAD_BATCH_LINE) + "\n")
        return [image, "--batch", str(path)]
    if choice == "image":
        bad = draw(st.sampled_from(["header", "i386", "noise", "empty", "badgz", "bomb", "dir", "fifo", "sock",
                                    "missing"]))
        extra = ["--max-inflate", "16M"] if bad == "bomb" else []
        return [files[bad], *(["0x1000"] if not ptdump else []), *extra]
    if choice == "model":  # parsed fine; refused by the CPU's register checks
        reg = draw(st.sampled_from([["--cr4", "0x80000000"], ["--cr3", "0x1000000000000000"],
                                    ["--cr0", "0x80000000"], ["--efer", "0x500", "--cr4", "0x0"]]))
        return [image, *(["0x1000"] if not ptdump else []), *reg]
    opts = {"--cr3": BAD_NUMBER, "--cr0": BAD_NUMBER, "--efer": BAD_NUMBER, "--cpu": BAD_NUMBER,
            "--maxphyaddr": BAD_NUMBER, "--max-inflate": BAD_SIZE, "--features": BAD_FEATURES,
            "--absent": st.sampled_from(["maybe", "", "ZERO"])}
    opts |= ({"--format": st.sampled_from(["tlb", "xml", ""]), "--max-tables": BAD_NUMBER, "--max-leaves": BAD_NUMBER}
             if ptdump else {"--pkru": BAD_NUMBER, "--pkrs": BAD_NUMBER, "--cpl": BAD_CPL, "--access": BAD_ACCESS})
    name = draw(st.sampled_from(sorted(opts)))
    value = draw(opts[name])
    return [image, *(["0x1000"] if not ptdump else []), f"{name}={value}"]


@st.composite
def boot_argv(draw: st.DrawFn, files: dict[str, str]) -> list[str]:
    choice = draw(st.sampled_from(["size", "number", "e820", "save", "misc", "model"]))
    if choice == "size":
        return [f"--{draw(st.sampled_from(['mem', 'image-size']))}={draw(BAD_SIZE)}"]
    if choice == "number":
        name = draw(st.sampled_from(["--kernel-at", "--boot-params-at", "--cmdline-at", "--pool"]))
        return [f"{name}={draw(BAD_NUMBER)}"]
    if choice == "e820":
        path = Path(files["root"]) / f"map-{draw(st.integers(0, 9))}.e820"
        path.write_text("0 0x9fc00 ram\n" + draw(BAD_E820_LINE) + "\n")
        return ["--e820", str(path)]
    if choice == "save":
        return ["--until", "startup_64", "--save-core", output_path(files, draw(OUTPUT_KIND))]
    if choice == "misc":
        return draw(st.sampled_from([["--until", "nowhere"], ["--profile", "v2.6"], ["--variant", "x"],
                                     ["--pool", "0"], ["--kernel-at", "0x1100000"], ["--mem", "4P"],
                                     ["--ramdisk", f"{draw(BAD_NUMBER)}:16M"], ["--ramdisk", "0x14000:4K"],
                                     ["--mem", "64M", "--e820", files["reserved"]], ["--bogus"]]))
    return draw(st.sampled_from([["--mem", "8M"], ["--e820", files["reserved"]], ["--ramdisk", "0x7ff000000:16M"],
                                 ["--kernel-at", "0x40000000", "--mem", "512M"], ["--cmdline", "x" * 3000],
                                 ["--boot-params-at", "0x60000"]]))


def test_translate(files: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    @SETTINGS
    @given(translate_argv(files, ptdump=False))
    def run(argv: list[str]) -> None:
        check_refused("translate", lambda: main(["translate", *argv]), files["root"])

    with isolated(files["root"], monkeypatch):
        run()


def test_ptdump(files: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    @SETTINGS
    @given(translate_argv(files, ptdump=True), st.booleans())
    def run(argv: list[str], audit: bool) -> None:
        check_refused("ptdump", lambda: main(["ptdump", *argv, *(["--check-wx"] if audit else [])]), files["root"])

    with isolated(files["root"], monkeypatch):
        run()


def test_boot(files: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    @SETTINGS
    @given(boot_argv(files))
    def run(argv: list[str]) -> None:
        check_refused("boot", lambda: main(["boot", *argv]), files["root"])

    with isolated(files["root"], monkeypatch):
        run()


ARG = st.one_of(BAD_NUMBER, st.sampled_from(["--bogus", "-x", "extra", "--json", "--help=1", "--version=2"]))


def test_gdb_script(files: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    @settings(SETTINGS, max_examples=50)
    @given(st.lists(ARG, min_size=1, max_size=3))
    def run(argv: list[str]) -> None:
        check_refused("gdb-script", lambda: main(["gdb-script", *argv]), files["root"])

    with isolated(files["root"], monkeypatch):
        run()


def test_capture_tool_arguments(files: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Only arguments the tool refuses before it looks for a kernel or starts QEMU."""
    bad = st.one_of(
        st.tuples(st.sampled_from(["--mem", "--timeout"]), st.one_of(BAD_NUMBER, BAD_SIZE)).map(
            lambda t: [f"{t[0]}={t[1]}"]),
        st.tuples(st.sampled_from(["--out", "--fetch-kernel"]), st.sampled_from(["regular", "fifo", "sock", "link"])
                  ).map(lambda t: [t[0], files[t[1]]]),
        st.sampled_from([["--out", ""], ["minimize"], ["minimize", files["missing"], files["dir"]],
                         ["minimize", files["root"], files["fifo"]], ["minimize", files["regular"], files["dir"]],
                         ["--bogus"], ["--la57=1"], ["--kaslr", "--nokaslr"]]),
        st.tuples(st.lists(st.sampled_from(["--la57", "--kaslr", "--user-cr3"]), max_size=2),
                  st.text("abcdefghijklmnopqrstuvwxyz", min_size=2, max_size=8)).map(
            lambda t: [*t[0], f"--zz{t[1]}"]))

    @settings(SETTINGS, max_examples=60)
    @given(bad)
    def run(argv: list[str]) -> None:
        check_refused("capture", lambda: qemu_capture.main(argv), files["root"])

    with isolated(files["root"], monkeypatch):
        run()


class NoTarget:
    """A guest the argument errors must never reach."""

    def __getattr__(self, name: str) -> Any:
        def refuse(*_a: object, **_k: object) -> Any:
            raise TargetError(f"the target was used ({name}) before the arguments were checked")

        return refuse


def test_gdb_commands_arguments(files: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    opts = st.one_of(
        st.tuples(st.sampled_from(["--cr3", "--cr0", "--cr4", "--efer", "--maxphyaddr", "--pkru"]), BAD_NUMBER),
        st.tuples(st.just("--cpl"), BAD_CPL), st.tuples(st.just("--bogus"), st.just("1")),
    ).map(lambda t: [f"{t[0]}={t[1]}"])
    dump_opts = st.one_of(
        st.tuples(st.sampled_from(["--cr3", "--max-tables", "--max-leaves", "--maxphyaddr"]), BAD_NUMBER),
        st.tuples(st.just("--format"), st.just("xml")), st.tuples(st.just("--bogus"), st.just("1")),
    ).map(lambda t: [f"{t[0]}={t[1]}"]) | st.sampled_from(
        [["--output", output_path(files, k)] for k in ("dir", "fifo", "sock", "link", "dirslash", "empty", "devfull")])

    @SETTINGS
    @given(st.one_of(st.tuples(st.just("earlymm-translate"), st.one_of(
        st.tuples(st.just("0x1000"), opts).map(lambda t: [t[0], *t[1]]),
        st.lists(BAD_NUMBER.filter(lambda s: s[:1].isdigit() and s.isascii() and s.isalnum()), min_size=1,
                 max_size=2))),
        st.tuples(st.just("earlymm-ptdump"), dump_opts)))
    def run(case: tuple[str, list[str]]) -> None:
        kind, argv = case
        fn = commands.translate if kind == "earlymm-translate" else dump.ptdump

        def call() -> None:
            fn(NoTarget(), argv)
            raise AssertionError(f"{kind} {argv} was accepted")

        check_refused(kind, call, files["root"])

    with isolated(files["root"], monkeypatch):
        run()


BAD_SYMBOLS = st.sampled_from(["", "ffffffff81000000 T\n", "x" * 5000 + "\n", "0000000000000000 T _text\n",
                                "ffffffffffffffff B The real System.map is in the linux-image-1-dbg package\n",
                                "\x7fELF" + "\0" * 60, "\x1f\x8b\x08\x00garbage", "ffffffff81000000 T a b c d\n"])
BAD_REGS = st.sampled_from(["", "hello\n", "RIP=1 CR0=11 CR3=0\n", "CPU#0\nRIP=1\n",
                            "RIP=1 CR0=80000011 CR3=0 CR4=0 EFER=" + "f" * 20 + "\n"])


@st.composite
def inspect_argv(draw: st.DrawFn, files: dict[str, str]) -> list[str]:
    """rmap and diff, and the symbol/registers files of translate, ptdump and rmap."""
    image = files[draw(st.sampled_from(["core", "gzcore"]))]
    choice = draw(st.sampled_from(["symbols", "regs", "rmap-pa", "rmap-opt", "diff-operand", "diff-opt"]))
    n = draw(st.integers(0, 9))
    command = draw(st.sampled_from(["translate", "ptdump", "rmap"]))
    where = [image, *(["0x1000"] if command != "ptdump" else [])]
    if choice == "symbols":
        path = Path(files["root"]) / f"syms-{n}"
        path.write_bytes(draw(BAD_SYMBOLS).encode("latin-1"))
        return [command, *where, "--symbols", draw(st.sampled_from([str(path), files["dir"], files["fifo"],
                                                                    files["missing"]]))]
    if choice == "regs":
        path = Path(files["root"]) / f"regs-{n}.txt"
        path.write_text(draw(BAD_REGS))
        return [command, *where, "--regs", draw(st.sampled_from([str(path), files["dir"], files["fifo"]]))]
    if choice == "rmap-pa":
        return ["rmap", image, draw(BAD_NUMBER | st.sampled_from(["0x10000000000000", "init_top_pgt"]))]
    if choice == "rmap-opt":
        name = draw(st.sampled_from(["--cr3", "--max-aliases", "--max-tables", "--kaslr-offset", "--cpu"]))
        return ["rmap", image, "0x1000", f"{name}={draw(BAD_NUMBER)}"]
    if choice == "diff-operand":
        bad = draw(st.sampled_from(["header", "i386", "noise", "empty", "badgz", "dir", "fifo", "missing"]))
        return ["diff", *draw(st.permutations([image, files[bad]])),
                *draw(st.sampled_from([[], ["--json"]]))] if bad != "noise" else ["diff", image, "boot:nowhere"]
    opts = {"--cr3-a": BAD_NUMBER, "--cpu-b": BAD_NUMBER, "--max-leaves": BAD_NUMBER,
            "--boot-args": st.sampled_from(["--until end", "--mem", "'x", "--mem 1P", "--kernel-at 0x1100000",
                                            "--save-core x", "--e820 /nonexistent"])}
    name = draw(st.sampled_from(sorted(opts)))
    return ["diff", "boot:startup_64", "boot:end" if name == "--boot-args" else image, f"{name}={draw(opts[name])}"]


def test_inspector_commands(files: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    @SETTINGS
    @given(inspect_argv(files))
    def run(argv: list[str]) -> None:
        check_refused(argv[0], lambda: main(argv), files["root"])

    with isolated(files["root"], monkeypatch):
        run()


def test_zz_tally() -> None:
    """Runs last in this module: the examples above ran, all refused as required."""
    if not TALLY:
        pytest.skip("run with the rest of this module")
    total = sum(TALLY.values())
    print(f"\nfuzz tally: {total} bad inputs, all refused (exit 2, one line): "
          + ", ".join(f"{k} {v}" for k, v in sorted(TALLY.items())))
    assert total >= 300
