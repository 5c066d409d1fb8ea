"""The tiny initramfs the capture tools boot: a static busybox as ``/init`` that reports readiness on
the console and keeps the system up (shared by the normal and the mid-boot captures)."""

from __future__ import annotations

from pathlib import Path

from earlymm.images.cpio import CpioEntry, gzip_newc

READY = "EARLYMM_INIT_READY"
INIT_SCRIPT = f"""#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
echo "{READY} $(/bin/busybox uname -r)"
while :; do /bin/busybox sleep 3600; done
"""
# With --user-cr3 /init spins in user space after reporting, so a stop usually lands at CPL 3 and
# (with pti=on) CR3 then holds the PTI user page table: the kernel PGD's next page, bit 12 set.
BUSY_INIT_SCRIPT = INIT_SCRIPT.replace("while :; do /bin/busybox sleep 3600; done", "while :; do :; done")


def build_initramfs(busybox: Path, busy_user: bool = False) -> bytes:
    return gzip_newc([
        CpioEntry.directory("bin"), CpioEntry.directory("dev"), CpioEntry.directory("proc"),
        CpioEntry.directory("sys"), CpioEntry.directory("tmp"),
        CpioEntry.file("bin/busybox", busybox.read_bytes(), 0o755),
        CpioEntry.symlink("bin/sh", "busybox"),
        # Without /dev/console in the initramfs the kernel starts /init with no stdout.
        CpioEntry.chardev("dev/console", 5, 1), CpioEntry.chardev("dev/null", 1, 3, 0o666),
        CpioEntry.file("init", (BUSY_INIT_SCRIPT if busy_user else INIT_SCRIPT).encode(), 0o755),
    ])
