"""The boot matrix's grid: one axis per ``earlymm boot`` option, every combination of their values.

An axis is data — its grid option, the ``earlymm boot`` argument a value becomes, its default — so a new
boot option (paging levels, a Xen backend) is one more ``Axis`` row here, nothing else. A configuration is
the tuple of one value per axis, in axis order; ``boot_argv`` turns it into the exact ``earlymm boot``
arguments, which are what the workers run (``cli.matrix_cmd.run_batch`` parses them with the boot
command's own parser), so the printed command reproduces the outcome by construction.

RAM layouts: ``--mem`` sizes × ``--holes`` patterns. ``pc`` is ``earlymm boot --mem SIZE`` (the PC layout,
PCI hole at 3–4 GiB); ``flat`` and ``holey`` are e820 maps written once per size into ``--e820-dir`` so the
printed command can name them; ``--e820 FILE,…`` adds the user's own maps.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from earlymm.images.safe_write import write_text
from earlymm.kernel.phases import Phase

GiB, MiB = 1 << 30, 1 << 20
HOLE_PATTERNS = ("pc", "flat", "holey")


@dataclass(frozen=True, slots=True)
class Axis:
    name: str  # key in JSON and the grid option without dashes ("kernel-at")
    default: tuple[str, ...]
    help: str
    boot_flag: str = ""  # the earlymm boot option a value is passed to ("" for switches)
    switch: dict[str, tuple[str, ...]] | None = None  # value -> boot arguments, for yes/no style axes
    choices: tuple[str, ...] = ()

    def argv(self, value: str) -> list[str]:
        """The boot arguments for ``value``; none for the default, which is earlymm boot's own default."""
        if value in self.default[:1]:
            return []
        if self.switch is not None:
            return list(self.switch[value])
        if self.boot_flag and value != "default":
            return [self.boot_flag, value]
        return []


def _yes_no(flag: str, on_means_flag: bool) -> dict[str, tuple[str, ...]]:
    return {"yes": (flag,) if on_means_flag else (), "no": () if on_means_flag else (flag,)}


# The memory axes (mem, holes, e820) are handled by ``memory_argv``; the rest map one value to arguments.
AXES: tuple[Axis, ...] = (
    Axis("kernel-at", ("0x1000000",), "physical load addresses (2 MiB aligned), e.g. 0x1000000,0x3fe00000,"
         "0x7ffffe00000 (straddling 1 GiB and 512 GiB)", "--kernel-at"),
    Axis("mem", ("4G",), "RAM sizes (4G, 64T …)"),
    Axis("holes", ("pc",), f"RAM layouts per size: {', '.join(HOLE_PATTERNS)} (flat and holey need --e820-dir)",
         choices=HOLE_PATTERNS),
    Axis("e820", (), "e820 map files, each one more RAM layout (in addition to --mem × --holes)"),
    Axis("ramdisk", ("default",), "ADDR:SIZE ramdisk positions, or default", "--ramdisk"),
    Axis("pool", ("64",), "EARLY_DYNAMIC_PAGE_TABLES values", "--pool"),
    Axis("variant", ("merged",), "early #PF handler variants: merged, rfc", "--variant", choices=("merged", "rfc")),
    Axis("pool-access", ("high-map",), "how the handler reaches pool pages: high-map, page-offset", "--pool-access",
         choices=("high-map", "page-offset")),
    Axis("profile", ("auto",), "kernel profiles: auto (earlymm boot's choice: v3.9, or current with 5-level "
         "options), v3.9, current", "--profile", choices=("auto", "v3.9", "current")),
    Axis("paging", ("4",), "paging levels of the kernel: 4, 5 (5: a CONFIG_X86_5LEVEL kernel, current profile)",
         "--paging", choices=("4", "5")),
    Axis("decompressor", ("default",), "the decompressor's 4↔5-level switch: default, v4.14, rfc, merged",
         "--decompressor", choices=("default", "v4.14", "rfc", "merged")),
    Axis("loader-paging", ("4",), "paging mode the boot loader hands over in: 4, 5", "--loader-paging",
         choices=("4", "5")),
    Axis("la57", ("yes",), "CPU has 5-level paging: yes, no", switch=_yes_no("--no-la57", False),
         choices=("yes", "no")),
    Axis("nx", ("yes",), "CPU has NX: yes, no", switch=_yes_no("--no-nx", False), choices=("yes", "no")),
    Axis("force-nx", ("no",), "bit 63 in early_pmd_flags even without NX: no, yes", switch=_yes_no("--force-nx", True),
         choices=("no", "yes")),
    Axis("gbpages", ("yes",), "CPU has 1 GiB pages: yes, no", switch=_yes_no("--no-gbpages", False),
         choices=("yes", "no")),
    Axis("pge", ("yes",), "CPU has global pages: yes, no", switch=_yes_no("--no-pge", False), choices=("yes", "no")),
    Axis("cpu-vendor", ("intel",), "CPUID vendors: intel, amd", "--cpu-vendor", choices=("intel", "amd")),
    Axis("hypervisor", ("no",), "CPUID hypervisor bit: no, yes", switch=_yes_no("--hypervisor", True),
         choices=("no", "yes")),
    Axis("until", ("end",), f"where to stop: {', '.join(p.value for p in Phase)}", "--until",
         choices=tuple(p.value for p in Phase)),
)
AXIS = {a.name: a for a in AXES}
MEMORY_AXES = ("mem", "holes", "e820")


@dataclass(frozen=True, slots=True)
class Memory:
    """One RAM layout: a size and pattern, or a user's e820 file."""

    size: int
    size_text: str
    pattern: str
    path: str = ""  # the e820 file (generated or the user's); empty for the pc layout

    @property
    def label(self) -> str:
        return f"e820 {self.path}" if self.pattern == "file" else f"{self.size_text} {self.pattern}"


@dataclass(frozen=True, slots=True)
class Config:
    """One machine of the grid: a RAM layout and one value per other axis (in ``AXES`` order)."""

    index: int
    memory: Memory
    values: tuple[tuple[str, str], ...]

    def value(self, name: str) -> str:
        return dict(self.values)[name]

    def argv(self) -> list[str]:
        """The ``earlymm boot`` arguments of this configuration (after ``boot``)."""
        m = self.memory
        out = ["--mem", m.size_text] if m.pattern == "pc" else ["--e820", m.path]
        for name, value in self.values:
            out += AXIS[name].argv(value)
        return out

    def label(self) -> dict[str, str]:
        d = {"memory": self.memory.label}
        d.update(self.values)
        return d


def e820_lines(size: int, pattern: str) -> list[str]:
    """An e820 map of ``size`` bytes of RAM: ``flat`` (no PCI hole: RAM from 1 MiB up, in one piece) or
    ``holey`` (the same with a 4 MiB reserved hole in the middle of every GiB: split_mem_range must fall back
    to smaller pages around each)."""
    lines = ["0x0 0x9fc00 ram", "0x9fc00 0xa0000 reserved", "0xf0000 0x100000 reserved"]
    end = size
    if pattern == "flat":
        return [*lines, f"{0x10_0000:#x} {end:#x} ram"]
    start = 0x10_0000
    g = 0
    while start < end:
        hole = g * GiB + GiB // 2
        if hole + 4 * MiB <= end and hole >= start:
            lines += [f"{start:#x} {hole:#x} ram", f"{hole:#x} {hole + 4 * MiB:#x} reserved"]
            start = hole + 4 * MiB
        else:
            stop = min(end, (g + 1) * GiB)
            if stop > start:
                lines.append(f"{start:#x} {stop:#x} ram")
                start = stop
        g += 1
    return lines


def memories(sizes: Sequence[tuple[int, str]], holes: Sequence[str], files: Sequence[str],
             e820_dir: str | None) -> list[Memory]:
    """The RAM layouts of the grid; generated maps are written into ``e820_dir`` (safe writer)."""
    out: list[Memory] = []
    for size, text in sizes:
        for pattern in holes:
            if pattern == "pc":
                out.append(Memory(size, text, "pc"))
                continue
            if e820_dir is None:
                raise ValueError(f"--holes {pattern} needs --e820-dir DIR: the maps are files the printed "
                                 "earlymm boot commands name")
            path = str(Path(e820_dir) / f"ram-{text}-{pattern}.e820")
            write_text(path, "".join(f"{ln}\n" for ln in e820_lines(size, pattern)), "e820 file")
            out.append(Memory(size, text, pattern, path))
    out += [Memory(0, "", "file", f) for f in files]
    return out


def expand(mems: Sequence[Memory], values: Mapping[str, Sequence[str]]) -> list[Config]:
    """Every combination, memory first then the axes in ``AXES`` order: a deterministic numbering."""
    names = [a.name for a in AXES if a.name not in MEMORY_AXES]
    lists = [list(values.get(n) or AXIS[n].default) for n in names]
    combos = itertools.product(*lists)
    return [Config(i, mem, tuple(zip(names, rest, strict=True)))
            for i, (mem, rest) in enumerate(itertools.product(mems, combos))]


def size_key(c: Config, ram: Callable[[Config], int]) -> tuple[int, ...]:
    """What "smallest" means for a failing configuration: the least RAM, then the lowest load address, the
    smallest pool, the fewest non-default values, then grid order."""
    non_default = sum(v not in AXIS[n].default for n, v in c.values)
    return (ram(c), int(c.value("kernel-at"), 0), int(c.value("pool")), non_default, c.index)
