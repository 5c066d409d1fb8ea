"""The kernel's own e820 table (arch/x86/kernel/e820.c @ v3.9 and 6.1): built from ``boot_params`` (and
``SETUP_E820_EXT`` setup data beyond its 128 slots), sanitised, edited by ``mem=``/``memmap=`` and by
``trim_bios_range``, printed as Linux prints it (``BIOS-e820:``, then ``user:`` after command-line
edits). The memory model of the rest of setup_arch reads this table, never the platform's.

Differences: the table's capacity is ``E820_MAX_ENTRIES`` of the reference configuration (128 + 3 ×
MAX_NUMNODES with NODES_SHIFT 10: 3,200); ``memmap=exactmap`` is not modelled.
"""

from __future__ import annotations

from dataclasses import dataclass

E820_RAM, E820_RESERVED, E820_ACPI, E820_NVS, E820_UNUSABLE, E820_PRAM = 1, 2, 3, 4, 5, 12
E820_MAX_ENTRIES = 128 + 3 * 1024
BIOS_BEGIN, BIOS_END = 0xA0000, 0x100000
U64 = (1 << 64) - 1
_NAMES = {E820_RAM: "usable", E820_RESERVED: "reserved", E820_ACPI: "ACPI data", E820_NVS: "ACPI NVS",
          E820_UNUSABLE: "unusable", E820_PRAM: "persistent (type 12)"}
_SUFFIX = {"K": 10, "M": 20, "G": 30, "T": 40, "P": 50, "E": 60}


@dataclass(frozen=True, slots=True)
class E820Entry:
    """``struct e820_entry``: ``size`` bytes from ``addr`` of one ``type``."""

    addr: int
    size: int
    type: int

    @property
    def end(self) -> int:
        return self.addr + self.size


class E820Table:
    def __init__(self, entries: list[E820Entry] | None = None) -> None:
        self.entries: list[E820Entry] = list(entries or [])
        self.ignored: list[E820Entry] = []

    def append(self, addr: int, size: int, kind: int) -> bool:
        """``__e820__range_add``: False (and the entry kept in ``ignored``) when the table is full."""
        if len(self.entries) >= E820_MAX_ENTRIES:
            self.ignored.append(E820Entry(addr, size, kind))
            return False
        self.entries.append(E820Entry(addr, size, kind))
        return True

    def update_table(self) -> None:
        """``e820__update_table`` (v3.9 ``sanitize_e820_map``): overlaps resolved by the larger type
        winning, adjacent entries of one type merged, sorted; zero-sized entries dropped."""
        points: list[tuple[int, int, int]] = []  # (address, +1 start / -1 end, type)
        for e in self.entries:
            if e.size:
                points += [(e.addr, 1, e.type), (e.end, -1, e.type)]
        points.sort(key=lambda p: (p[0], -p[1]))
        active: dict[int, int] = {}
        out: list[E820Entry] = []
        cur_type, cur_start = 0, 0
        i = 0
        while i < len(points):
            at = points[i][0]
            while i < len(points) and points[i][0] == at:
                _, d, t = points[i]
                active[t] = active.get(t, 0) + d
                if not active[t]:
                    del active[t]
                i += 1
            new_type = max(active, default=0)
            if new_type != cur_type:
                if cur_type and at > cur_start:
                    if out and out[-1].type == cur_type and out[-1].end == cur_start:
                        out[-1] = E820Entry(out[-1].addr, at - out[-1].addr, cur_type)
                    else:
                        out.append(E820Entry(cur_start, at - cur_start, cur_type))
                cur_type, cur_start = new_type, at
        self.entries = out

    def range_update(self, start: int, size: int, old: int, new: int) -> None:
        """``e820__range_update``: the part of every ``old`` entry inside [start, start+size) becomes
        ``new``."""
        end = min(start + size, U64)
        out: list[E820Entry] = []
        for e in self.entries:
            if e.type != old or e.end <= start or e.addr >= end:
                out.append(e)
                continue
            lo, hi = max(e.addr, start), min(e.end, end)
            out += [x for x in (E820Entry(e.addr, lo - e.addr, old), E820Entry(lo, hi - lo, new),
                                E820Entry(hi, e.end - hi, old)) if x.size]
        self.entries = out

    def range_remove(self, start: int, size: int, old: int | None) -> None:
        """``e820__range_remove``: cut [start, start+size) out of entries (of type ``old``, or all)."""
        end = min(start + size, U64)
        out: list[E820Entry] = []
        for e in self.entries:
            if (old is not None and e.type != old) or e.end <= start or e.addr >= end:
                out.append(e)
                continue
            out += [x for x in (E820Entry(e.addr, max(0, start - e.addr), e.type),
                                E820Entry(end, max(0, e.end - end), e.type)) if x.size]
        self.entries = out

    def any_mapped(self, start: int, end: int, kind: int = E820_RAM) -> bool:
        """``e820__mapped_any`` (v3.9 ``e820_any_mapped``)."""
        return any(e.type == kind and e.addr < end and start < e.end for e in self.entries)

    def end_of_ram_pfn(self, limit_pfn: int) -> int:
        """``e820__end_of_ram_pfn``: the end of the highest RAM entry, capped at MAX_ARCH_PFN."""
        last = max((e.end >> 12 for e in self.entries if e.type == E820_RAM), default=0)
        return min(last, limit_pfn)

    def lines(self, who: str) -> list[str]:
        """``e820__print_table(who)``."""
        return [f"{who}: [mem {e.addr:#018x}-{e.end - 1:#018x}] {_NAMES.get(e.type, f'type {e.type}')}"
                for e in self.entries]

    def as_tuples(self) -> list[tuple[int, int, int]]:
        return [(e.addr, e.size, e.type) for e in self.entries]


def memparse(text: str) -> tuple[int, str]:
    """``memparse``: a number (0x… hex, 0… octal, decimal) with an optional K/M/G/T/P/E suffix; returns the
    value and the rest of the string."""
    t = text.strip()
    i, base = 0, 10
    if t[:2].lower() == "0x":
        i, base = 2, 16
    elif t[:1] == "0" and len(t) > 1 and t[1].isdigit():
        base = 8
    j = i
    while j < len(t) and t[j].lower() in "0123456789abcdef"[:base]:
        j += 1
    if j == i:
        raise ValueError(f"not a size: {text!r}")
    value = int(t[i:j], base)
    if j < len(t) and t[j].upper() in _SUFFIX:
        value <<= _SUFFIX[t[j].upper()]
        j += 1
    return value & U64, t[j:]


def parse_mem_options(table: E820Table, cmdline: str) -> list[str]:
    """``parse_early_param`` for ``mem=`` (``parse_memopt``) and ``memmap=`` (``parse_memmap_one``),
    in command-line order. Returns what the kernel would warn about; the table is updated in place."""
    warnings: list[str] = []
    for word in cmdline.split():
        key, eq, val = word.partition("=")
        if not eq or key not in ("mem", "memmap"):
            continue
        try:
            if key == "mem":
                if val == "nopentium":
                    continue
                size, _ = memparse(val)
                if size == 0:  # parse_memopt: "don't remove all of memory when handling mem={invalid}"
                    raise ValueError(val)
                table.range_remove(size, U64 - size, E820_RAM)
                continue
            for one in val.split(","):
                if one == "exactmap":
                    warnings.append("memmap=exactmap is not modelled; ignored")
                    continue
                size, rest = memparse(one)
                if not rest:
                    table.range_remove(size, U64 - size, E820_RAM)
                    continue
                kinds = {"@": E820_RAM, "#": E820_ACPI, "$": E820_RESERVED, "!": E820_PRAM}
                if rest[0] not in kinds:
                    raise ValueError(one)
                start, _ = memparse(rest[1:])
                table.append(start, size, kinds[rest[0]])
        except ValueError:
            warnings.append(f"malformed {key}= option {val!r} ignored")
    table.update_table()
    return warnings
