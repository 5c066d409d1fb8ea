"""Symbol addresses of a kernel, from its own ``/proc/kallsyms``.

Debian ships no usable System.map (a stub) and the vmlinuz has no symbol table, but a booted kernel lists
every symbol, ``__init`` ones included, in ``/proc/kallsyms``. Under ``nokaslr`` the addresses are the link
addresses, the same on every boot, so one boot per kernel is enough: its ``/init`` prints the file to the
serial console between two markers, and the text is cached beside the kernel (``kallsyms-RELEASE``).
"""

from __future__ import annotations

import re
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from earlymm.images.cpio import CpioEntry, gzip_newc

BEGIN, END = "EARLYMM_KALLSYMS_BEGIN", "EARLYMM_KALLSYMS_END"
INIT_SCRIPT = f"""#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
echo 0 > /proc/sys/kernel/kptr_restrict
echo {BEGIN}
/bin/busybox cat /proc/kallsyms
echo {END}
/bin/busybox poweroff -f
"""
LINE_RE = re.compile(r"^([0-9a-f]{16}) ([A-Za-z]) (\S+)(?:\s+\[\S+\])?$")


class KallsymsError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Kallsyms:
    """Name → address (the first definition wins; local duplicates such as ``_entry`` are rare here)."""

    addresses: dict[str, int]
    text: dict[str, int]  # text symbols (T/t) only, for symbolizing

    def __getitem__(self, name: str) -> int:
        try:
            return self.addresses[name]
        except KeyError:
            raise KallsymsError(f"symbol {name!r} is not in kallsyms") from None

    def get(self, name: str) -> int | None:
        return self.addresses.get(name)

    def symbolize(self, addr: int) -> str:
        """``name+0xoff`` for the nearest text symbol at or below ``addr``."""
        best = max(((a, n) for n, a in self.text.items() if a <= addr), default=None)
        return f"{best[1]}+{addr - best[0]:#x}" if best else f"{addr:#x}"

    def subset(self, names: list[str]) -> dict[str, str]:
        return {n: f"{self[n]:#x}" for n in names}


def parse(listing: str) -> Kallsyms:
    """The lines between the markers if present, else every line that looks like kallsyms."""
    lines = listing.replace("\r", "").splitlines()
    if BEGIN in lines and END in lines:
        lines = lines[lines.index(BEGIN) + 1:lines.index(END)]
    out: dict[str, int] = {}
    text: dict[str, int] = {}
    for ln in lines:
        m = LINE_RE.match(ln)
        if m and m[3] not in out:
            out[m[3]] = int(m[1], 16)
        if m and m[2] in "Tt":
            text.setdefault(m[3], int(m[1], 16))
    if "_text" not in out or out["_text"] == 0:
        raise KallsymsError("no kernel symbols (is kptr_restrict hiding the addresses?)")
    return Kallsyms(out, text)


def cache_path(kernel: Path) -> Path:
    return kernel.with_name(kernel.name.replace("vmlinuz-", "kallsyms-", 1))


def _initramfs(busybox: Path) -> bytes:
    return gzip_newc([CpioEntry.directory("bin"), CpioEntry.directory("dev"), CpioEntry.directory("proc"),
                      CpioEntry.file("bin/busybox", busybox.read_bytes(), 0o755),
                      CpioEntry.chardev("dev/console", 5, 1),
                      CpioEntry.file("init", INIT_SCRIPT.encode(), 0o755)])


def boot_for_kallsyms(kernel: Path, busybox: Path, qemu: str, timeout: float) -> str:
    """Boot once (``nokaslr``) and return what ``/init`` printed between the markers, markers included."""
    with tempfile.TemporaryDirectory(prefix="earlymm-kallsyms-") as tmp:
        initrd, console = Path(tmp) / "initramfs.cpio.gz", Path(tmp) / "console.log"
        initrd.write_bytes(_initramfs(busybox))
        cmd = [qemu, "-machine", "pc", "-accel", "tcg", "-cpu", "qemu64", "-m", "512M", "-smp", "1",
               "-nodefaults", "-display", "none", "-no-reboot", "-kernel", str(kernel), "-initrd", str(initrd),
               "-append", "console=ttyS0 panic=-1 nokaslr quiet", "-serial", f"file:{console}"]
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + timeout
            while proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)
            if proc.poll() is None:
                raise KallsymsError(f"the kallsyms boot did not finish within {timeout:.0f} s")
        finally:
            if proc.poll() is None:
                proc.kill()
            _, err = proc.communicate(timeout=30)
        text = console.read_text(errors="replace").replace("\r", "") if console.exists() else ""
        if END not in text:
            tail = (text[-500:] or err.decode(errors="replace")[-500:]).strip()
            raise KallsymsError(f"the guest did not print its kallsyms: {tail}")
        return text[text.index(BEGIN):text.index(END) + len(END)] + "\n"


def load_kallsyms(kernel: Path, busybox: Path, qemu: str = "qemu-system-x86_64", timeout: float = 300) -> Kallsyms:
    """The cached kallsyms of ``kernel``, booting it once to make the cache if needed."""
    cache = cache_path(kernel)
    if not cache.is_file():
        text = boot_for_kallsyms(kernel, busybox, qemu, timeout)
        parse(text)  # refuse to cache something unusable
        tmp = cache.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(cache)
    return parse(cache.read_text())
