"""What the kernel was given and what it said: ``boot_params`` fields and the e820 map it printed.

``boot_params`` offsets are the boot protocol's (arch/x86/include/uapi/asm/bootparam.h, spec §3.4); the
console lines are 6.1's ``e820__print_table()`` (arch/x86/kernel/e820.c): ``BIOS-e820: [mem
0x…-0x…] usable`` for the firmware's map, ``user: …`` after ``mem=``/``memmap=`` changed it, ``Xen: …`` for
the map a Xen PV guest's ``xen_memory_setup`` built, all with an inclusive end.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from earlymm.platform.bootparams import (
    CMD_LINE_PTR,
    E820_ENTRIES,
    E820_TABLE,
    EXT_CMD_LINE_PTR,
    EXT_RAMDISK_IMAGE,
    EXT_RAMDISK_SIZE,
    RAMDISK_IMAGE,
    RAMDISK_SIZE,
    TYPE_OF_LOADER,
    VERSION,
)

E820_LINE_RE = re.compile(r"\] (BIOS-e820|user|e820|Xen): \[mem (0x[0-9a-f]+)-(0x[0-9a-f]+)\] (.+?)\s*$")
# e820_print_type() → the model's --e820 kinds (soft reserved, persistent and unknown types are not RAM)
KINDS = {"usable": "ram", "reserved": "reserved", "ACPI data": "acpi", "ACPI NVS": "nvs", "unusable": "unusable"}
FIRMWARE_TYPES = {1: "usable", 2: "reserved", 3: "ACPI data", 4: "ACPI NVS", 5: "unusable"}


@dataclass(frozen=True, slots=True)
class E820Entry:
    start: int
    end: int  # exclusive
    kind: str  # as the kernel printed it: "usable", "reserved", "ACPI data", …

    @property
    def model_kind(self) -> str:
        return KINDS.get(self.kind, "reserved")

    def to_json(self) -> list[str]:
        return [f"{self.start:#x}", f"{self.end:#x}", self.kind]


def _u32(raw: bytes, off: int) -> int:
    return int(struct.unpack_from("<I", raw, off)[0])


def decode_boot_params(raw: bytes) -> dict[str, object]:
    """The fields the model needs, with the 64-bit values the kernel composes from the ext_* halves
    (``get_ramdisk_image``/``get_ramdisk_size`` in setup.c, ``get_cmd_line_ptr`` in head64.c)."""
    if len(raw) < 4096:
        raise ValueError(f"boot_params is {len(raw)} bytes, not 4096")
    image = _u32(raw, RAMDISK_IMAGE) | _u32(raw, EXT_RAMDISK_IMAGE) << 32
    size = _u32(raw, RAMDISK_SIZE) | _u32(raw, EXT_RAMDISK_SIZE) << 32
    cmd = _u32(raw, CMD_LINE_PTR) | _u32(raw, EXT_CMD_LINE_PTR) << 32
    n = raw[E820_ENTRIES]
    table = []
    for i in range(min(n, 128)):
        addr, length, kind = struct.unpack_from("<QQI", raw, E820_TABLE + 20 * i)
        table.append([f"{addr:#x}", f"{addr + length:#x}", FIRMWARE_TYPES.get(kind, f"type {kind}")])
    return {
        "hdr_version": f"{struct.unpack_from('<H', raw, VERSION)[0]:#x}", "type_of_loader": f"{raw[TYPE_OF_LOADER]:#x}",
        "ramdisk_image": f"{_u32(raw, RAMDISK_IMAGE):#x}", "ramdisk_size": f"{_u32(raw, RAMDISK_SIZE):#x}",
        "ext_ramdisk_image": f"{_u32(raw, EXT_RAMDISK_IMAGE):#x}",
        "ext_ramdisk_size": f"{_u32(raw, EXT_RAMDISK_SIZE):#x}",
        "cmd_line_ptr": f"{_u32(raw, CMD_LINE_PTR):#x}", "ext_cmd_line_ptr": f"{_u32(raw, EXT_CMD_LINE_PTR):#x}",
        "ramdisk": [f"{image:#x}", f"{size:#x}"], "cmd_line": f"{cmd:#x}", "e820_entries": n, "e820_table": table,
    }


def console_e820(console: str) -> dict[str, list[E820Entry]]:
    """Every e820 table the kernel printed, by label ("BIOS-e820", "user"), in print order; a label
    printed twice keeps its last table."""
    tables: dict[str, list[E820Entry]] = {}
    last = ""
    for ln in console.replace("\r", "").splitlines():
        m = E820_LINE_RE.search(ln)
        if not m or m[1] == "e820":
            last = ""
            continue
        label = m[1]
        if label != last:
            tables[label] = []
            last = label
        tables[label].append(E820Entry(int(m[2], 16), int(m[3], 16) + 1, m[4]))
    return tables


def e820_updates(console: str) -> list[str]:
    """The ``e820: update …``/``e820: remove …`` lines: the kernel's own edits of the map."""
    return [ln.split("] ", 1)[-1] for ln in console.replace("\r", "").splitlines()
            if re.search(r"\] e820: (update|remove) ", ln)]


def effective_e820(console: str) -> list[E820Entry]:
    """The map memblock is built from: the ``user:`` table if ``mem=``/``memmap=`` made one, else the
    firmware's."""
    tables = console_e820(console)
    for label in ("user", "BIOS-e820"):
        if tables.get(label):
            return tables[label]
    raise ValueError("the console has no e820 table (was earlyprintk=serial given?)")
