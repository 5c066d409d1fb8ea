"""Shared helpers for the ptdump tests: fixture files, the CLI, and hand-built address spaces."""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import pytest

from earlymm.arch.modes import Features, PagingMode
from earlymm.hw.mapper import FrameAllocator, Mapper
from earlymm.hw.memory import PhysMem
from earlymm.tools.ptdump.space import Space, open_space

REPO = Path(__file__).resolve().parents[2]
FIXTURES = sorted(p for p in (REPO / "tests" / "fixtures").glob("qemu-*") if p.is_dir())
FIXTURE_IDS = [p.name for p in FIXTURES]
CAPTURES = REPO / "captures"

# (CR0, CR4, EFER) per paging mode, for hand-built spaces.
CR0_PG = 0x8005_0033  # PE MP ET NE WP AM PG
REGS = {
    PagingMode.LEGACY32: (CR0_PG, 0x10, 0),  # PSE
    PagingMode.PAE: (CR0_PG, 0x20, 0x800),  # PAE, NXE
    PagingMode.LONG4: (CR0_PG, 0x20, 0xD01),
    PagingMode.LONG5: (CR0_PG, 0x1020, 0xD01),
}


def raw_text(directory: Path, name: str) -> bytes:
    """A capture's text file byte for byte (``\\r\\n`` kept), plain or gzip-compressed."""
    plain, packed = directory / name, directory / (name + ".gz")
    if plain.exists():
        return plain.read_bytes()
    return gzip.decompress(packed.read_bytes())


def core_of(directory: Path) -> Path:
    for name in ("core.elf", "core.elf.gz"):
        if (directory / name).exists():
            return directory / name
    raise FileNotFoundError(directory)


def is_la57(directory: Path) -> bool:
    return '"la57": true' in (directory / "meta.json").read_text()


@dataclass
class Cli:
    code: int
    out: str
    err: str


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> Cli:
    from earlymm.cli.main import main

    capsys.readouterr()
    code = main(["ptdump", *argv])
    captured = capsys.readouterr()
    return Cli(code, captured.out, captured.err)


@dataclass
class Built:
    """A hand-built address space: memory, a mapper on it, and the ``Space`` (rebuilt on demand)."""

    mem: PhysMem
    mapper: Mapper
    mode: PagingMode

    def space(self, **regs: int) -> Space:
        cr0, cr4, efer = REGS[self.mode]
        return open_space(self.mem, (regs.get("cr0", cr0), self.mapper.root, regs.get("cr4", cr4),
                                     regs.get("efer", efer)), Features())

    def table(self) -> int:
        return self.mapper.alloc.alloc()


def build(mode: PagingMode) -> Built:
    mem = PhysMem()
    alloc = FrameAllocator(mem, 0x10_0000, 0x80_0000)
    root = None
    if mode is PagingMode.PAE:
        root = alloc.alloc() + 0x20  # a PDPT need only be 32-byte aligned
    return Built(mem, Mapper(mem, mode, alloc, root), mode)
