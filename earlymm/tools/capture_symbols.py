"""The guest's own symbols and memory map in a capture, and their small form in a fixture.

A capture's ``/init`` copies ``/proc/kallsyms`` and ``/sys/firmware/memmap`` to the second serial port
(``initramfs.REPORT``); here they become ``kallsyms.txt`` and ``memmap.txt``. ``gva2gpa`` is asked about
the address of every symbol in ``KEPT`` too, so QEMU answers where ``init_top_pgt`` & co. are — an oracle
for resolving symbols. A fixture keeps only the ``KEPT`` lines of kallsyms (the full file is ~4 MB), in the
guest's order and byte for byte; ``meta.json`` says so.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

from earlymm.images.minimize import find_text, read_capture_text
from earlymm.images.safe_write import write_text
from earlymm.tools.initramfs import FILES_END, split_guest_files
from earlymm.tools.symbols.table import LINE_RE

KALLSYMS_FILE, MEMMAP_FILE = "kallsyms.txt", "memmap.txt"
FIXTURE_KALLSYMS = "kallsyms"
# The image's bounds, the page-table symbols of head_64.S and mm/, a few functions of the boot path, and
# per-CPU offsets (absolute: they must never label or be slid).
KEPT = (
    "_text", "_stext", "startup_64", "_etext", "__start_rodata", "_sdata", "_edata", "__init_begin", "_sinittext",
    "__bss_start", "__bss_stop", "__brk_base", "__brk_limit", "_end",
    "init_top_pgt", "level4_kernel_pgt", "level3_kernel_pgt", "level2_kernel_pgt", "level2_fixmap_pgt",
    "level1_fixmap_pgt", "early_top_pgt", "early_dynamic_pgts", "next_early_pgt", "phys_base", "page_offset_base",
    "vmalloc_base", "vmemmap_base", "espfix_pud_page", "empty_zero_page", "bm_pte", "init_mm", "idt_table",
    "boot_params", "start_kernel", "x86_64_start_kernel", "init_mem_mapping", "do_early_exception",
    "idt_setup_early_pf", "native_write_cr3", "__per_cpu_start", "__per_cpu_end", "fixed_percpu_data", "cpu_tss_rw",
)
FILTER_TEXT = ("the lines of the guest's /proc/kallsyms (read as root with kptr_restrict=0) whose name is one of "
               "'symbols', in the guest's order, unchanged")


def wait_report(path: Path, proc: subprocess.Popen[bytes], timeout: float) -> str:
    """The second serial port's text once /init has finished writing it (bounded wait; ValueError if not)."""
    deadline = time.monotonic() + timeout
    while True:
        text = path.read_text(errors="replace") if path.exists() else ""
        if FILES_END in text:
            return text
        if proc.poll() is not None or time.monotonic() > deadline:
            raise ValueError(f"the guest did not finish copying kallsyms and memmap to its second serial port "
                             f"({len(text)} bytes arrived)")
        time.sleep(0.2)


def save_guest_files(report: str, out: Path) -> dict[str, Any]:
    """Write ``kallsyms.txt`` and ``memmap.txt`` from the serial report; their meta.json entry
    (``guest_files``)."""
    files = split_guest_files(report)
    kallsyms, memmap = files.get("/proc/kallsyms", ""), files.get("/sys/firmware/memmap", "")
    if not any(LINE_RE.fullmatch(ln) for ln in kallsyms.splitlines()[:10]):
        raise ValueError("the guest's /proc/kallsyms report is empty or garbled")
    write_text(out / KALLSYMS_FILE, kallsyms)
    write_text(out / MEMMAP_FILE, memmap)
    return {"kallsyms": KALLSYMS_FILE, "kallsyms_lines": kallsyms.count("\n"), "memmap": MEMMAP_FILE,
            "how": "the guest's /init copied /proc/kallsyms (kptr_restrict=0) and 'grep -r . /sys/firmware/memmap' "
                   "to its second serial port"}


def kept_lines(kallsyms: str) -> list[str]:
    keep = set(KEPT)
    return [ln for ln in kallsyms.splitlines() if (m := LINE_RE.fullmatch(ln.strip())) and m[3] in keep]


def symbol_samples(kallsyms: str) -> list[int]:
    """Addresses for ``gva2gpa``: every kept non-absolute symbol, and 0x18 bytes into it."""
    out = []
    for ln in kept_lines(kallsyms):
        m = LINE_RE.fullmatch(ln.strip())
        assert m is not None
        if m[2] not in "Aa" and int(m[1], 16) >> 63:
            out += [int(m[1], 16), int(m[1], 16) + 0x18]
    return out


def add_to_fixture(capture: Path, fixture: Path) -> dict[str, Any] | None:
    """Write the fixture's filtered ``kallsyms`` and copy ``memmap.txt``; note both in its meta.json.
    None when the capture has no kallsyms (an older capture)."""
    if find_text(capture, KALLSYMS_FILE) is None:
        return None
    full = read_capture_text(capture, KALLSYMS_FILE)
    lines = kept_lines(full)
    write_text(fixture / FIXTURE_KALLSYMS, "\n".join(lines) + "\n")
    entry: dict[str, Any] = {"file": FIXTURE_KALLSYMS, "filter": FILTER_TEXT, "symbols": list(KEPT),
                             "kept_lines": len(lines), "guest_lines": full.count("\n")}
    if find_text(capture, MEMMAP_FILE) is not None:
        write_text(fixture / MEMMAP_FILE, read_capture_text(capture, MEMMAP_FILE))
        entry["memmap"] = MEMMAP_FILE
    meta_path = fixture / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    meta["kallsyms"] = entry
    write_text(meta_path, json.dumps(meta, indent=2) + "\n")
    return entry
