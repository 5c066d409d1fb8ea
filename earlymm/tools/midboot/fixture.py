"""A mid-boot fixture read back: per stop the registers, ``{table pa → 512 entries}``, ``next_early_pgt`` and
the ``boot_params`` fields; for the machine, what the model needs to describe the same one.

Layout of a fixture directory (written by ``capture``): ``meta.json`` (how it was made, the machine, the
symbols), ``console.log`` (the serial console up to the last stop), and per stop ``NAME.json``,
``NAME.core.elf.gz`` (the table pages and the CPU state, a QEMU-format core that ``earlymm translate`` and
``earlymm ptdump`` read), ``NAME.tlb.txt.gz`` (QEMU's ``info tlb``, verbatim) and
``NAME.boot_params.bin.gz``. Captures made since the 5-level work also hold ``bda.bin.gz`` (the BIOS data
area, 0x400–0x4ff), ``decompressor.json`` (the decompressor's paging switch as QEMU's CPU log showed it,
``lowmem``) and ``decompressor.cpu.log.gz`` (that log's window).
"""

from __future__ import annotations

import gzip
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from earlymm.arch.modes import Features
from earlymm.hw.memory import Buffer
from earlymm.images import ImageError, open_image
from earlymm.tools.midboot.bootinfo import E820Entry
from earlymm.tools.midboot.roles import Roles

PAGE = 4096
STOP_ORDER = ("x86_64_start_kernel", "init_mem_mapping", "idt_setup_early_pf")


class FixtureError(Exception):
    """A fixture directory that cannot be read; the message names the file."""


class TableMemory:
    """A ``FrameSource`` holding only the recorded table pages (everything else is a hole)."""

    def __init__(self, pages: dict[int, bytes]) -> None:
        self.pages = pages  # pfn → 4096 bytes

    def frame(self, pfn: int) -> Buffer | None:
        return self.pages.get(pfn)

    def ranges(self) -> list[tuple[int, int]]:
        return [(p << 12, (p + 1) << 12) for p in sorted(self.pages)]


@dataclass(frozen=True)
class Stop:
    name: str  # the symbol the guest was stopped at
    model_until: str  # the ``earlymm boot --until`` phase that ends at the same point
    info: dict[str, Any]
    pages: dict[int, bytes]  # pfn → page
    directory: Path

    @property
    def regs(self) -> tuple[int, int, int, int]:
        r = self.info["registers"]
        return int(r["CR0"], 16), int(r["CR3"], 16), int(r["CR4"], 16), int(r.get("EFER", "0"), 16)

    @property
    def roots(self) -> dict[str, int]:
        return {k: int(v, 16) for k, v in self.info["roots"].items()}

    @property
    def next_early_pgt(self) -> int:
        return int(self.info["next_early_pgt"])

    @property
    def boot_params(self) -> dict[str, Any]:
        return dict(self.info["boot_params"])

    @property
    def tables(self) -> dict[int, tuple[int, ...]]:
        """Physical address → the 512 entries of every recorded table page."""
        return {pfn << 12: struct.unpack("<512Q", page) for pfn, page in sorted(self.pages.items())}

    @property
    def early_exceptions(self) -> list[dict[str, Any]]:
        """The early exceptions (vector, CR2, RIP, function) the kernel took before this stop, in order."""
        path = self.directory / "early_exceptions.json"
        if not path.is_file() or "early_exceptions_before" not in self.info:
            return []
        return list(json.loads(path.read_text()))[:int(self.info["early_exceptions_before"])]

    def memory(self) -> TableMemory:
        return TableMemory(self.pages)

    def tlb_text(self) -> str:
        return gzip.decompress((self.directory / f"{self.name}.tlb.txt.gz").read_bytes()).decode()


@dataclass(frozen=True)
class Fixture:
    path: Path
    meta: dict[str, Any]
    console: str
    stops: tuple[Stop, ...]

    @property
    def name(self) -> str:
        return self.path.name

    def stop(self, name: str) -> Stop:
        for s in self.stops:
            if s.name == name or s.model_until == name:
                return s
        raise FixtureError(f"{self.name}: no stop {name!r} (have {', '.join(s.name for s in self.stops)})")

    @property
    def machine(self) -> dict[str, Any]:
        return dict(self.meta["machine"])

    @property
    def e820(self) -> list[E820Entry]:
        """The map the kernel ended up with (``user:`` after ``mem=``/``memmap=``, else ``BIOS-e820:``)."""
        return [E820Entry(int(a, 16), int(b, 16), k) for a, b, k in self.meta["machine"]["e820"]]

    @property
    def firmware_e820(self) -> list[E820Entry]:
        """The map the boot loader handed over in the zero page (``BIOS-e820:``)."""
        return [E820Entry(int(a, 16), int(b, 16), k) for a, b, k in self.meta["machine"]["e820_tables"]["BIOS-e820"]]

    @property
    def la57(self) -> bool:
        """The CPU has 5-level paging (the kernel uses it unless ``no5lvl`` is on its command line)."""
        return bool(self.meta["cpu_features"]["la57"])

    @property
    def decompressor(self) -> dict[str, Any] | None:
        """``decompressor.json``: the measured paging switch and the BIOS data area words (``None`` for
        captures made before it was recorded)."""
        path = self.path / "decompressor.json"
        return read_json(path) if path.is_file() else None

    def bda(self) -> bytes:
        """The 256 bytes of the BIOS data area at 0x400, as the capture read them."""
        try:
            return gzip.decompress((self.path / "bda.bin.gz").read_bytes())
        except (OSError, EOFError, gzip.BadGzipFile) as e:
            raise FixtureError(f"{self.path / 'bda.bin.gz'}: {e}") from None

    def symbol(self, name: str) -> int:
        return int(self.meta["symbols"][name], 16)

    def roles(self, stop: Stop) -> Roles:
        """What each table page at this stop is (``early_dynamic_pgts[n]``, ``brk[n]``, RAM …)."""
        return Roles.from_symbols({k: int(v, 16) for k, v in self.meta["symbols"].items()},
                                  int(stop.info["phys_base"], 16))

    @property
    def features(self) -> Features:
        """The CPU as QEMU described it (qom properties of CPU 0)."""
        return features_from_qom(self.meta["cpu_features"])


def features_from_qom(f: dict[str, Any]) -> Features:
    """``Features`` from the qom properties a capture recorded (``gdbstop.cpu_features``)."""
    return Features(maxphyaddr=int(f["phys-bits"]), nx=bool(f["nx"]), gbpages=bool(f["pdpe1gb"]),
                    la57=bool(f["la57"]), pse=bool(f["pse"]), pse36=True, pge=bool(f["pge"]),
                    smep=bool(f["smep"]), smap=bool(f["smap"]), pku=bool(f["pku"]), pks=False,
                    pcid=bool(f["pcid"]))


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise FixtureError(f"{path}: {e}") from None
    if not isinstance(data, dict):
        raise FixtureError(f"{path}: not a JSON object")
    return data


def core_pages(core: Path) -> dict[int, bytes]:
    try:
        with open_image(core, kind="core") as img:
            return {pfn: bytes(img.frame(pfn) or b"") for lo, hi in img.ranges() for pfn in range(lo >> 12, hi >> 12)}
    except ImageError as e:
        raise FixtureError(str(e)) from None


def load_fixture(path: str | Path) -> Fixture:
    d = Path(path)
    meta = read_json(d / "meta.json")
    try:
        console = (d / "console.log").read_text(errors="replace")
    except OSError as e:
        raise FixtureError(f"{d / 'console.log'}: {e.strerror or e}") from None
    until = {s["symbol"]: s["model_until"] for s in meta.get("stops", [])}
    stops = []
    for name in STOP_ORDER:
        if name not in until:
            continue
        info = read_json(d / f"{name}.json")
        stops.append(Stop(name, until[name], info, core_pages(d / f"{name}.core.elf.gz"), d))
    if not stops:
        raise FixtureError(f"{d}: meta.json names no stops")
    return Fixture(d, meta, console, tuple(stops))
