"""The tiny initramfs the capture tools boot: a static busybox as ``/init`` that reports readiness on
the console and keeps the system up (shared by the normal and the mid-boot captures).

With ``report_files`` the script first copies what an inspector needs from the running guest to the
second serial port (``/dev/ttyS1``, which the capture tool connects to a file): ``/proc/kallsyms`` (with
``kptr_restrict`` lowered, so the addresses are real — KASLR's included) and ``/sys/firmware/memmap`` as
``grep -r .`` lists it, each after a ``FILE_MARK`` line, then ``FILES_END``. The console stays as it was.
"""

from __future__ import annotations

from pathlib import Path

from earlymm.images.cpio import CpioEntry, gzip_newc

READY = "EARLYMM_INIT_READY"
FILE_MARK = "EARLYMM_FILE"
FILES_END = "EARLYMM_FILES_END"
GUEST_FILES = ("/proc/kallsyms", "/sys/firmware/memmap")
SETUP = """#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
"""
REPORT = f"""echo 0 > /proc/sys/kernel/kptr_restrict
{{ echo "{FILE_MARK} /proc/kallsyms"; /bin/busybox cat /proc/kallsyms
echo "{FILE_MARK} /sys/firmware/memmap"; /bin/busybox grep -r . /sys/firmware/memmap
echo "{FILES_END}"; }} > /dev/ttyS1
"""
READY_LINE = f'echo "{READY} $(/bin/busybox uname -r)"\n'
IDLE = "while :; do /bin/busybox sleep 3600; done\n"
# With --user-cr3 /init spins in user space after reporting, so a stop usually lands at CPL 3 and
# (with pti=on) CR3 then holds the PTI user page table: the kernel PGD's next page, bit 12 set.
BUSY = "while :; do :; done\n"
INIT_SCRIPT = SETUP + READY_LINE + IDLE
BUSY_INIT_SCRIPT = SETUP + READY_LINE + BUSY


def init_script(busy_user: bool = False, report_files: bool = False) -> str:
    return SETUP + (REPORT if report_files else "") + READY_LINE + (BUSY if busy_user else IDLE)


def split_guest_files(text: str) -> dict[str, str]:
    """What ``REPORT`` wrote to the second serial port, by guest path (``\\r`` removed). Raises
    ``ValueError`` when the end marker is missing (the guest did not finish)."""
    text = text.replace("\r", "")
    if FILES_END not in text:
        raise ValueError(f"the guest's file report has no {FILES_END} line (incomplete)")
    out: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text[:text.index(FILES_END)].split("\n"):
        if line.startswith(FILE_MARK + " "):
            current = out.setdefault(line[len(FILE_MARK) + 1:].strip(), [])
        elif current is not None and line:
            current.append(line)
    return {k: "\n".join(v) + "\n" for k, v in out.items()}


def build_initramfs(busybox: Path, busy_user: bool = False, report_files: bool = False) -> bytes:
    return gzip_newc([
        CpioEntry.directory("bin"), CpioEntry.directory("dev"), CpioEntry.directory("proc"),
        CpioEntry.directory("sys"), CpioEntry.directory("tmp"),
        CpioEntry.file("bin/busybox", busybox.read_bytes(), 0o755),
        CpioEntry.symlink("bin/sh", "busybox"),
        # Without /dev/console in the initramfs the kernel starts /init with no stdout.
        CpioEntry.chardev("dev/console", 5, 1), CpioEntry.chardev("dev/null", 1, 3, 0o666),
        CpioEntry.chardev("dev/ttyS1", 4, 65),  # COM2: the file report (report_files)
        CpioEntry.file("init", init_script(busy_user, report_files).encode(), 0o755),
    ])
