"""Shared by the inspector tests (symbols, rmap, diff, inputs): the real-kernel fixtures with their guests'
own kallsyms, a CLI runner, the guests' symbols read by a deliberately tiny parser of the test's own, and a
minimal ELF writer (a vmlinux-like symbol table, as ``nm`` would read it)."""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from pathlib import Path

import pytest

from earlymm.images import open_image
from earlymm.images.minimize import read_capture_text
from earlymm.images.monitor_text import parse_gva2gpa_file, parse_info_tlb

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
NOKASLR = FIXTURES / "qemu-l4-syms"
KASLR = FIXTURES / "qemu-kaslr-syms"
SYM_FIXTURES = [NOKASLR, KASLR]


@dataclass
class Cli:
    code: int
    out: str
    err: str


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> Cli:
    from earlymm.cli.main import main

    capsys.readouterr()
    code = main(list(argv))
    got = capsys.readouterr()
    return Cli(code, got.out, got.err)


def one_line_error(r: Cli) -> None:
    assert r.code == 2 and r.out == "", r
    assert r.err.count("\n") == 1 and "Traceback" not in r.err and "internal error" not in r.err, r.err


def core(fixture: Path) -> str:
    return str(fixture / "core.elf.gz")


def kallsyms(fixture: Path) -> str:
    return str(fixture / "kallsyms")


def guest_symbols(fixture: Path) -> list[tuple[int, str, str]]:
    """(address, type, name) of every line of the fixture's (filtered) kallsyms, in file order."""
    out = []
    for line in (fixture / "kallsyms").read_text().splitlines():
        a, t, n = line.split()
        out.append((int(a, 16), t, n))
    return out


def guest_address(fixture: Path, name: str) -> int:
    return next(a for a, _t, n in guest_symbols(fixture) if n == name)


def gva2gpa(fixture: Path) -> dict[int, int | None]:
    """QEMU's own answers at capture time (the capture asked about every kept symbol and symbol+0x18)."""
    return dict(parse_gva2gpa_file(read_capture_text(fixture, "gva2gpa.txt")))


def unique_symbols(fixture: Path) -> list[tuple[str, int]]:
    """Kept kernel symbols (not per-CPU offsets) that no other kept symbol shares an address with."""
    syms = [(a, n) for a, t, n in guest_symbols(fixture) if t not in "Aa"]
    addrs = [a for a, _n in syms]
    return [(n, a) for a, n in syms if addrs.count(a) == 1]


def system_map(fixture: Path) -> str:
    """The fixture's kallsyms as nm writes a System.map: per-CPU symbols as data ('D') at their offsets."""
    return "".join(f"{a:016x} {'D' if t == 'A' else t} {n}\n" for a, t, n in guest_symbols(fixture))


def write_vmlinux(path: Path, syms: list[tuple[int, str, str]], sizes: dict[str, int]) -> None:
    """An ELF64 x86-64 executable holding only a symbol table: text/data symbols in a NOBITS section at the
    kernel's addresses, per-CPU symbols ('A' in kallsyms) in .data..percpu at their offsets, like vmlinux."""
    shstr = b"\0.text\0.data..percpu\0.symtab\0.strtab\0.shstrtab\0"
    names = {n: shstr.index(n.encode() + b"\0") for n in (".text", ".data..percpu", ".symtab", ".strtab", ".shstrtab")}
    strtab = bytearray(b"\0")
    local, glob = [], []
    for addr, t, name in syms:
        off = len(strtab)
        strtab += name.encode() + b"\0"
        stype = 2 if t in "Tt" else 1  # STT_FUNC, STT_OBJECT
        bind = 1 if t.isupper() else 0  # STB_GLOBAL, STB_LOCAL
        shndx = 2 if t == "A" else 1
        entry = struct.pack("<IBBHQQ", off, bind << 4 | stype, 0, shndx, addr, sizes.get(name, 0))
        (glob if bind else local).append(entry)
    symtab = bytes(24) + b"".join(local) + b"".join(glob)
    data_off = 64
    blobs = [symtab, bytes(strtab), shstr]
    offs = []
    pos = data_off
    for b in blobs:
        offs.append(pos)
        pos += len(b)
    shoff = (pos + 7) & ~7
    sh = [bytes(64),
          struct.pack("<IIQQQQIIQQ", names[".text"], 8, 6, 0xFFFF_FFFF_8100_0000, 0, 0x4000_0000, 0, 0, 4096, 0),
          struct.pack("<IIQQQQIIQQ", names[".data..percpu"], 8, 3, 0, 0, 0x40000, 0, 0, 4096, 0),
          struct.pack("<IIQQQQIIQQ", names[".symtab"], 2, 0, 0, offs[0], len(symtab), 4, 1 + len(local), 8, 24),
          struct.pack("<IIQQQQIIQQ", names[".strtab"], 3, 0, 0, offs[1], len(strtab), 0, 0, 1, 0),
          struct.pack("<IIQQQQIIQQ", names[".shstrtab"], 3, 0, 0, offs[2], len(shstr), 0, 0, 1, 0)]
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    ehdr = struct.pack("<16sHHIQQQIHHHHHH", ident, 2, 62, 1, 0xFFFF_FFFF_8100_0000, 0, shoff, 0, 64, 0, 0, 64,
                       len(sh), 5)
    body = ehdr + b"".join(blobs)
    path.write_bytes(body + bytes(shoff - len(body)) + b"".join(sh))


ADDR = 0x000F_FFFF_FFFF_F000


def leaf_size(img: object, cr3: int, la57: bool, va: int) -> int:
    """The page size of the leaf mapping ``va``: a naive walk of the test's own (no checks but P and PS)."""
    table = cr3 & ADDR
    for level in range(5 if la57 else 4, 0, -1):
        shift = 12 + 9 * (level - 1)
        frame = img.frame(table >> 12)  # type: ignore[attr-defined]
        e = struct.unpack_from("<Q", frame, 8 * (va >> shift & 511))[0]
        if level == 1 or e & 0x80:
            return 1 << shift
        table = e & ADDR
    raise AssertionError("unreachable")


def leaves(fixture: Path, tlb_name: str = "tlb.txt.gz", core_name: str = "core.elf.gz"
           ) -> list[tuple[int, int, int]]:
    """(VA, PA, size) of every line of QEMU's info tlb; the size of a large leaf (info tlb does not print
    it) from the naive walk."""
    return [(va, pa, size) for va, pa, size, _f in tlb_leaves(fixture, tlb_name, core_name)]


def tlb_leaves(fixture: Path, tlb_name: str = "tlb.txt.gz", core_name: str = "core.elf.gz"
               ) -> list[tuple[int, int, int, str]]:
    """(VA, PA, size, flag letters) of every line of QEMU's info tlb."""
    tlb = parse_info_tlb(gzip.decompress((fixture / tlb_name).read_bytes()).decode())
    with open_image(fixture / core_name) as img:
        note = img.cpus[0]
        return [(t.va, t.pa, leaf_size(img, note.cr3, bool(note.cr4 >> 12 & 1), t.va) if t.flags[2] == "P"
                 else 1 << 12, t.flags) for t in tlb]


