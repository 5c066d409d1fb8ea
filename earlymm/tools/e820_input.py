"""e820 maps as people have them, for ``earlymm boot --e820``: a kernel log, or ``/sys/firmware/memmap``.

* **dmesg** (or ``journalctl -k``, or a serial console log): the lines of ``e820__print_table()``
  (arch/x86/kernel/e820.c @ v6.1) — ``BIOS-e820: [mem 0x…-0x…] usable`` for the firmware's map and ``user:
  [mem …] …`` when ``mem=``/``memmap=`` changed it, end inclusive. ``--e820`` describes the machine, so the
  firmware's table is taken (the boot model applies ``mem=``/``memmap=`` from ``--cmdline`` itself, as the
  kernel does); a ``user:`` table is reported in a note. A label printed twice keeps its last table.
  Kernels before 3.x printed
  ``BIOS-e820: 0000000000000000 - 000000000009fc00 (usable)`` (end exclusive), read too; newer ones print
  the firmware-map names below instead of ``usable``/``ACPI data``, read too.
* **/sys/firmware/memmap**: one directory per entry with ``start``, ``end`` (inclusive) and ``type``
  files (``firmware_map_add_early`` from ``e820__reserve_resources``; names from ``e820_type_to_string``:
  ``System RAM``, ``Reserved``, ``ACPI Tables``, ``ACPI Non-volatile Storage``, ``Unusable memory``, …).
  Give the directory itself (or a copy), or the text ``grep -r . /sys/firmware/memmap`` prints.

Persistent, soft-reserved and unknown types are not RAM to memblock (only E820_TYPE_RAM is added), so they
become ``reserved``. Each parser returns ``(region, line)`` pairs for the caller's overlap checks.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from earlymm.hw.memory import Region, RegionType

MAX_ENTRIES = 100_000
MAX_FILE = 4096  # a sysfs attribute file
DMESG_RE = re.compile(r"(?<![\w-])(BIOS-e820|user): \[mem (0x[0-9a-fA-F]{1,16})-(0x[0-9a-fA-F]{1,16})\] (.+?)\s*$")
OLD_DMESG_RE = re.compile(r"(?<![\w-])(BIOS-e820|user): ([0-9a-fA-F]{16}) - ([0-9a-fA-F]{16}) \((.+?)\)\s*$")
SYSFS_LINE_RE = re.compile(r"^(.*?)/?(\d+)/(start|end|type):(.*)$")
KINDS = {
    "usable": RegionType.RAM, "system ram": RegionType.RAM, "system ram (kernel)": RegionType.RAM,
    "reserved": RegionType.RESERVED, "acpi data": RegionType.ACPI, "acpi tables": RegionType.ACPI,
    "acpi nvs": RegionType.NVS, "acpi non-volatile storage": RegionType.NVS, "unusable": RegionType.UNUSABLE,
    "unusable memory": RegionType.UNUSABLE,
}
Found = list[tuple[Region, int]]


class E820InputError(ValueError):
    """One line naming the file (and line) and the problem."""


def kind_of(name: str) -> RegionType:
    return KINDS.get(name.strip().lower(), RegionType.RESERVED)


def _region(where: str, start: int, end: int, kind: str) -> Region:
    if end <= start:
        raise E820InputError(f"{where}: end {end:#x} is not above start {start:#x}")
    if end > 1 << 52:
        raise E820InputError(f"{where}: end {end:#x} is beyond the 52-bit physical address space")
    return Region(start, end, kind_of(kind))


def from_dmesg(path: str, lines: list[str]) -> tuple[Found, list[str]] | None:
    """The firmware's e820 table in a kernel log, and notes; None if no line of it is an e820 table line."""
    tables: dict[str, Found] = {}
    last = ""
    for n, line in enumerate(lines, 1):
        m = DMESG_RE.search(line)
        old = m is None and (m := OLD_DMESG_RE.search(line)) is not None
        if m is None:
            last = ""
            continue
        label = m[1]
        if label != last:
            tables[label] = []
            last = label
        start, end = int(m[2], 16), int(m[3], 16) + (0 if old else 1)
        tables[label].append((_region(f"{path}:{n}", start, end, m[4]), n))
    notes = []
    if tables.get("user"):
        notes.append(f"{path}: the kernel also printed a user: map (mem=/memmap= on its command line changed the "
                     "firmware's): the firmware's BIOS-e820 map is used; give the same --cmdline to apply them")
    if tables.get("BIOS-e820"):
        return tables["BIOS-e820"], notes
    if tables.get("user"):
        return tables["user"], [f"{path}: no BIOS-e820 map in the log: its user: map is used as the firmware's"]
    return None


def from_sysfs_lines(path: str, lines: list[str]) -> Found | None:
    """``grep -r . /sys/firmware/memmap`` output; None if the lines are not of that shape."""
    entries: dict[str, dict[str, tuple[str, int]]] = {}
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        m = SYSFS_LINE_RE.match(line.strip())
        if m is None or "memmap" not in m[1]:
            return None
        entries.setdefault(m[2], {})[m[3]] = (m[4].strip(), n)
    return _entries(path, entries) if entries else None


def from_sysfs_dir(path: str) -> Found:
    """A ``/sys/firmware/memmap`` directory (or a copy of it)."""
    entries: dict[str, dict[str, tuple[str, int]]] = {}
    try:
        names = sorted(os.listdir(path))
    except OSError as e:
        raise E820InputError(f"cannot read e820 directory {path}: {e.strerror or e}") from None
    for name in names:
        if not name.isdigit():
            continue
        if len(entries) >= MAX_ENTRIES:
            raise E820InputError(f"{path}: more than {MAX_ENTRIES} entries")
        fields: dict[str, tuple[str, int]] = {}
        for f in ("start", "end", "type"):
            p = Path(path, name, f)
            try:
                if not stat.S_ISREG(os.stat(p).st_mode):
                    raise E820InputError(f"{p} is not a regular file")
                with open(p, encoding="utf-8") as fh:
                    fields[f] = (fh.read(MAX_FILE).strip(), 0)
            except FileNotFoundError:
                continue
            except (OSError, UnicodeDecodeError) as e:
                raise E820InputError(f"cannot read {p}: {getattr(e, 'strerror', None) or e}") from None
        entries[name] = fields
    if not entries:
        raise E820InputError(f"{path}: a directory without numbered entries (not /sys/firmware/memmap)")
    return _entries(path, entries)


def _entries(path: str, entries: dict[str, dict[str, tuple[str, int]]]) -> Found:
    out: Found = []
    for key in sorted(entries, key=int):
        e = entries[key]
        missing = [f for f in ("start", "end", "type") if f not in e]
        if missing:
            raise E820InputError(f"{path}: entry {key} has no {', '.join(missing)}")
        line = e["start"][1]
        where = f"{path}:{line}" if line else f"{path}/{key}"
        try:
            start, end = int(e["start"][0], 16), int(e["end"][0], 16) + 1
        except ValueError:
            raise E820InputError(f"{where}: entry {key}: start/end are not hex numbers "
                                 f"({e['start'][0][:20]!r}, {e['end'][0][:20]!r})") from None
        out.append((_region(where, start, end, e["type"][0]), line))
    return out


def read_alternative(path: str, lines: list[str] | None) -> tuple[Found, list[str]] | None:
    """A directory, a kernel log or sysfs ``grep`` text as regions, with notes for the user; None when
    ``lines`` are none of these (the caller's own ``START END TYPE`` format)."""
    if os.path.isdir(path):
        return from_sysfs_dir(path), []
    if lines is None:
        return None
    found = from_dmesg(path, lines)
    if found is not None:
        return found
    sysfs = from_sysfs_lines(path, lines)
    return (sysfs, []) if sysfs is not None else None
