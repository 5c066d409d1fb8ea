"""A Xen PV dom0 fixture read back: per stop the registers, ``{machine frame → table page}``, the p2m list
and ``start_info``; for the whole boot the console, Xen's start-of-day block and how it was made.

Layout of a fixture directory (written by ``capture``): ``meta.json`` (QEMU command, Xen and dom0
arguments, CPU, versions, the symbols used, the parsed start-of-day block, both e820 maps),
``console.log.gz`` (Xen's serial console up to the last stop: Xen's own lines behind ``(XEN)``, dom0's
through ``hvc0``/``earlyprintk=xen``), and per stop ``NAME.json``, ``NAME.core.elf.gz`` (the table pages
at their machine addresses and the vCPU, a QEMU-format core that ``earlymm ptdump``/``translate`` read),
``NAME.p2m.json`` and ``NAME.start_info.bin.gz``.
"""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from earlymm.arch.modes import Features
from earlymm.tools.midboot.fixture import FixtureError, TableMemory, core_pages, features_from_qom, read_json
from earlymm.tools.xencap.p2m import P2m, P2mError, decode_runs, runs_from_json
from earlymm.tools.xencap.startinfo import StartInfo, decode_start_info
from earlymm.tools.xencap.startofday import StartOfDay, StartOfDayError, parse_start_of_day

STOP_ORDER = ("xen_start_kernel", "init_mem_mapping", "idt_setup_early_pf")
MAX_P2M = 1 << 28  # entries: a 1 TiB guest (and 2 GiB of list); more is a broken file, not a capture


@dataclass(frozen=True)
class XenStop:
    name: str  # the dom0 symbol the vCPU was stopped at
    model_until: str  # the ``earlymm boot --until`` phase that ends at the same point
    info: dict[str, Any]
    pages: dict[int, bytes]  # mfn → the table page as recorded (the L4 with Xen's slots)
    p2m: P2m
    start_info: StartInfo
    directory: Path

    @property
    def regs(self) -> tuple[int, int, int, int]:
        r = self.info["registers"]
        return int(r["CR0"], 16), int(r["CR3"], 16), int(r["CR4"], 16), int(r.get("EFER", "0"), 16)

    @property
    def cr3(self) -> int:
        return self.regs[1]

    @property
    def roots(self) -> dict[str, int | None]:
        """Where QEMU's ``gva2gpa`` put the candidate roots (``pt_base``, ``init_top_pgt``) at this stop."""
        return {k: None if v is None else int(v, 16) for k, v in self.info["roots"].items()}

    @property
    def variables(self) -> dict[str, int]:
        return {k: int(v, 16) for k, v in self.info["variables"].items()}

    @property
    def tables(self) -> dict[int, tuple[int, ...]]:
        """Machine address → the 512 entries of every recorded table page."""
        return {mfn << 12: struct.unpack("<512Q", page) for mfn, page in sorted(self.pages.items())}

    @property
    def console_bytes(self) -> int:
        return int(self.info["console_bytes"])

    def memory(self) -> TableMemory:
        return TableMemory(self.pages)


@dataclass(frozen=True)
class XenFixture:
    path: Path
    meta: dict[str, Any]
    console: str
    stops: tuple[XenStop, ...]

    @property
    def name(self) -> str:
        return self.path.name

    def stop(self, name: str) -> XenStop:
        for s in self.stops:
            if name in (s.name, s.model_until):
                return s
        raise FixtureError(f"{self.name}: no stop {name!r} (have {', '.join(s.name for s in self.stops)})")

    def symbol(self, name: str) -> int:
        try:
            return int(self.meta["symbols"][name], 16)
        except KeyError:
            raise FixtureError(f"{self.name}: symbol {name!r} was not recorded") from None

    @property
    def features(self) -> Features:
        return features_from_qom(self.meta["cpu_features"])

    @cached_property
    def start_of_day(self) -> StartOfDay:
        """Parsed from the console itself (``meta.json`` holds a copy for readers)."""
        try:
            return parse_start_of_day(self.console)
        except StartOfDayError as e:
            raise FixtureError(f"{self.path / 'console.log.gz'}: {e}") from None


def _p2m(path: Path) -> P2m:
    doc = read_json(path)
    try:
        size = int(doc["size"])
        if not 0 < size <= MAX_P2M:
            raise P2mError(f"size {size} is not in 1..{MAX_P2M}")
        return P2m(decode_runs(runs_from_json(doc["runs"]), size), int(doc["va"], 16))
    except (KeyError, TypeError, ValueError, P2mError) as e:
        raise FixtureError(f"{path}: {e}") from None


def _gz(path: Path) -> bytes:
    try:
        return gzip.decompress(path.read_bytes())
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise FixtureError(f"{path}: {e}") from None


def load_xen_fixture(path: str | Path) -> XenFixture:
    d = Path(path)
    meta = read_json(d / "meta.json")
    console = _gz(d / "console.log.gz").decode(errors="replace")
    until = {s["symbol"]: s["model_until"] for s in meta.get("stops", [])}
    stops = []
    for name in STOP_ORDER:
        if name not in until:
            continue
        info = read_json(d / f"{name}.json")
        try:
            si = decode_start_info(_gz(d / f"{name}.start_info.bin.gz"))
        except ValueError as e:
            raise FixtureError(f"{d / name}.start_info.bin.gz: {e}") from None
        pages, p2m = core_pages(d / f"{name}.core.elf.gz"), _p2m(d / f"{name}.p2m.json")
        stops.append(XenStop(name, until[name], info, pages, p2m, si, d))
    if not stops:
        raise FixtureError(f"{d}: meta.json names no stops")
    return XenFixture(d, meta, console, tuple(stops))


__all__ = ["STOP_ORDER", "FixtureError", "XenFixture", "XenStop", "load_xen_fixture"]
