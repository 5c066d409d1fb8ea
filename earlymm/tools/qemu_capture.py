"""Boot a Debian kernel under QEMU (TCG), stop it at /init, and save its paging state for tests.

    python -m earlymm.tools.qemu_capture --fetch-kernel captures/kernel
    python -m earlymm.tools.qemu_capture --kernel captures/kernel/root/boot/vmlinuz-… --out captures/l4
    python -m earlymm.tools.qemu_capture minimize captures/l4 tests/fixtures/qemu-l4

A capture directory holds registers.txt, tlb.txt, mem.txt (monitor replies verbatim, ``\\r\\n`` line
ends), gva2gpa.txt (``VA<TAB>reply``), core.elf (``dump-guest-memory paging=false format=elf``),
console.log and meta.json. Stdlib only; every wait is bounded and QEMU is always killed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from earlymm.images import open_image, write_qemu_core
from earlymm.images.cpio import CpioEntry, gzip_newc
from earlymm.images.minimize import find_text, minimize, table_pfns
from earlymm.images.monitor_text import choose_samples, parse_info_tlb
from earlymm.images.qmp import Qmp, QmpError

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
USER_MODE_TRIES = 200
KERNEL_PKG_RE = re.compile(r"^(linux-image-6\.1\.0-(\d+)-amd64-unsigned)\s")


class CaptureError(Exception):
    pass


def _run(cmd: list[str], cwd: Path | None = None, timeout: float = 600) -> str:
    try:
        r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise CaptureError(f"{cmd[0]}: {e}") from e
    if r.returncode != 0:
        raise CaptureError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()[-500:]}")
    return r.stdout


def fetch_kernel(dest: Path) -> tuple[Path, Path]:
    """Download the newest Debian 6.1 amd64 kernel and busybox-static; unpack them under dest/root."""
    dest.mkdir(parents=True, exist_ok=True)
    found = _run(["apt-cache", "search", "--names-only", r"^linux-image-6\.1\.0-[0-9]+-amd64-unsigned$"])
    pkgs = sorted((int(m[2]), m[1]) for m in map(KERNEL_PKG_RE.match, found.splitlines()) if m)
    if not pkgs:
        raise CaptureError("apt-cache knows no linux-image-6.1.0-*-amd64-unsigned (run apt-get update)")
    kernel_pkg = pkgs[-1][1]
    _run(["apt-get", "download", kernel_pkg, "busybox-static"], cwd=dest)
    for deb in sorted(dest.glob("*.deb")):
        if deb.name.startswith((kernel_pkg + "_", "busybox-static_")):
            _run(["dpkg", "-x", str(deb), str(dest / "root")])
    kernel = sorted((dest / "root" / "boot").glob("vmlinuz-*"))[-1]
    return kernel, dest / "root" / "bin" / "busybox"


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


def _wait_ready(console: Path, proc: subprocess.Popen[bytes], timeout: float) -> tuple[str, float]:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        text = console.read_text(errors="replace") if console.exists() else ""
        for line in text.splitlines():
            if line.startswith(READY):
                return line.split()[-1], time.monotonic() - start
        if "Kernel panic" in text:
            raise CaptureError(f"guest panicked; see {console}")
        if proc.poll() is not None:
            raise CaptureError(f"QEMU exited with {proc.returncode} before /init ran; see {console}")
        time.sleep(0.2)
    raise CaptureError(f"/init did not report within {timeout:.0f} s; see {console}")


def _stop(proc: subprocess.Popen[bytes], grace: float) -> None:
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)


def _mem_bytes(mem: str) -> int:
    m = re.fullmatch(r"(\d+)([KMGT]?)", mem.upper())
    if not m:
        raise CaptureError(f"cannot parse --mem {mem!r}")
    return int(m[1]) << {"": 20, "K": 10, "M": 20, "G": 30, "T": 40}[m[2]]


def _stop_in_user_mode(q: Qmp) -> int:
    """Stop the VM at CPL 3 (resuming briefly between tries); returns the number of tries."""
    for attempt in range(1, USER_MODE_TRIES + 1):
        if re.search(r"\bCPL=3\b", q.hmp("info registers")):
            return attempt
        q.command("cont")
        time.sleep(0.005 * (attempt % 7 + 1))  # vary the stop point against the timer tick
        q.command("stop")
    raise CaptureError(f"the CPU was never in user mode in {USER_MODE_TRIES} stops (is /init spinning?)")


def _save_state(q: Qmp, out: Path, la57: bool, mem_bytes: int) -> int:
    for cmd, name in (("info registers", "registers.txt"), ("info tlb", "tlb.txt"), ("info mem", "mem.txt")):
        (out / name).write_bytes(q.hmp(cmd, timeout=300).encode())
    tlb = parse_info_tlb((out / "tlb.txt").read_text())
    rows = [f"{va:#x}\t{q.hmp(f'gva2gpa {va:#x}').strip()}" for va in choose_samples(tlb, la57, mem_bytes)]
    (out / "gva2gpa.txt").write_text("\n".join(rows) + "\n")
    core = out / "core.elf"
    core.unlink(missing_ok=True)
    q.command("dump-guest-memory", timeout=900, paging=False, protocol=f"file:{core.resolve()}",
              format="elf")
    return len(rows)


def capture(args: argparse.Namespace) -> Path:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    kernel = Path(args.kernel)
    busybox = Path(args.busybox) if args.busybox else kernel.parent.parent / "bin" / "busybox"
    for p in (kernel, busybox):
        if not p.is_file():
            raise CaptureError(f"{p} does not exist (try --fetch-kernel DIR)")
    qemu = shutil.which(args.qemu)
    if qemu is None:
        raise CaptureError(f"{args.qemu} not found (apt-get install qemu-system-x86)")
    cpu = args.cpu + (",+la57" if args.la57 and "la57" not in args.cpu else "")
    la57 = "la57" in cpu or args.cpu.split(",")[0] == "max"
    append = " ".join(filter(None, ["console=ttyS0 panic=-1", "" if args.kaslr else "nokaslr", args.append]))
    console = out / "console.log"
    console.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="earlymm-qemu-") as tmp:
        initrd = Path(tmp) / "initramfs.cpio.gz"
        initrd.write_bytes(build_initramfs(busybox, busy_user=args.user_cr3))
        sock = str(Path(tmp) / "qmp.sock")  # unix socket paths are limited to ~107 bytes
        cmd = [qemu, "-machine", "pc", "-accel", "tcg", "-cpu", cpu, "-m", args.mem, "-smp", "1",
               "-nodefaults", "-display", "none", "-no-reboot", "-kernel", str(kernel),
               "-initrd", str(initrd), "-append", append, "-serial", f"file:{console}",
               "-qmp", f"unix:{sock},server=on,wait=off"]
        with open(out / "qemu.stderr", "wb") as err:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        quitting = False
        try:
            release, boot_s = _wait_ready(console, proc, args.timeout)
            with Qmp(sock, timeout=60) as q:
                q.command("stop")
                user_stops = _stop_in_user_mode(q) if args.user_cr3 else 0
                version = q.command("query-version")
                samples = _save_state(q, out, la57, _mem_bytes(args.mem))
                quitting = True
                with contextlib.suppress(QmpError):  # QEMU may hang up before replying to quit
                    q.command("quit", timeout=10)
        finally:
            _stop(proc, grace=10 if quitting else 0)
    banner = next((ln.strip() for ln in console.read_text(errors="replace").splitlines()
                   if "Linux version" in ln), "")
    meta = {
        "qemu_version": "{major}.{minor}.{micro}".format(**version["qemu"]),
        "qemu_package": version.get("package", "").strip(),
        "cpu": cpu, "mem": args.mem, "smp": 1, "machine": "pc", "accel": "tcg", "append": append,
        "kaslr": args.kaslr, "la57": la57, "kernel_file": kernel.name, "kernel_version": release,
        "kernel_banner": banner[banner.find("Linux version"):], "boot_seconds": round(boot_s, 1),
        "gva2gpa_samples": samples, "command": cmd[1:],
        **({"user_mode_stops": user_stops} if args.user_cr3 else {}),
        "captured_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out


PTI_USER_BIT = 1 << 12  # PTI_USER_PGTABLE_MASK


def add_pti_kernel_tables(capture: Path, fixture: Path) -> int:
    """A CR3 stopped in user mode under PTI names the user PGD, so ``minimize`` keeps only the user page
    table; add the kernel PGD's tables (the page before, bit 12 clear) to the fixture's core. Returns
    the number of pages added (0 when no CPU had a PTI user CR3)."""
    core = find_text(capture, "core.elf")
    if core is None:
        raise FileNotFoundError(f"{capture}: no core.elf")
    with open_image(core, kind="core") as img:
        extra: set[int] = set()
        for cpu in img.cpus:
            if cpu.cr3 & PTI_USER_BIT:
                extra |= table_pfns(img, dataclasses.replace(cpu, cr3=cpu.cr3 & ~PTI_USER_BIT))[0]
        if not extra:
            return 0
        with open_image(fixture / "core.elf.gz", kind="core") as fix:
            frames = {p: bytes(fix.frame(p) or b"") for lo, hi in fix.ranges() for p in range(lo >> 12, hi >> 12)}
        added = sorted(extra - frames.keys())
        frames.update((p, bytes(img.frame(p) or b"")) for p in added)
        write_qemu_core(fixture / "core.elf.gz", sorted(frames.items()), list(img.cpus))
    summary = json.loads((fixture / "minimize.json").read_text())
    summary["pti_kernel_table_pages"] = len(added)
    (fixture / "minimize.json").write_text(json.dumps(summary, indent=2) + "\n")
    return len(added)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m earlymm.tools.qemu_capture",
        description="Capture a Linux guest's page tables and QEMU's view of them.",
        epilog="Subcommands: 'midboot --out DIR [--cpu --mem --append]' stops a nokaslr kernel at "
               "x86_64_start_kernel, init_mem_mapping and idt_setup_early_pf and records its tables (see "
               "'midboot --help'); 'minimize CAPTURE_DIR FIXTURE_DIR' keeps only the page-table pages reachable "
               "from each CPU's CR3 (and, for a PTI user CR3, from the kernel PGD before it) plus the pages "
               "gva2gpa samples land on (core.elf.gz), and copies the text files.")
    p.add_argument("--kernel", help="vmlinuz to boot (default: newest under captures/kernel/root/boot)")
    p.add_argument("--busybox", help="static busybox (default: ../bin/busybox beside the kernel's boot/)")
    p.add_argument("--la57", action="store_true", help="add +la57 to the CPU model (5-level paging)")
    p.add_argument("--cpu", default="qemu64", help="QEMU CPU model (default qemu64)")
    p.add_argument("--mem", default="512M", help="guest RAM, e.g. 512M or 5G (default 512M)")
    p.add_argument("--append", default="", help="extra kernel command line")
    p.add_argument("--user-cr3", action="store_true",
                   help="spin in user space after /init reports and stop at CPL 3, so CR3 is the user page "
                        "table (the PTI user PGD with --append pti=on)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--kaslr", dest="kaslr", action="store_true", help="leave KASLR on")
    g.add_argument("--nokaslr", dest="kaslr", action="store_false", help="boot with nokaslr (default)")
    p.add_argument("--out", default="captures/qemu", help="output directory (default captures/qemu)")
    p.add_argument("--timeout", type=float, default=240, help="seconds to wait for /init (default 240)")
    p.add_argument("--qemu", default="qemu-system-x86_64", help="QEMU binary")
    p.add_argument("--fetch-kernel", metavar="DIR",
                   help="apt-get download a Debian 6.1 amd64 kernel and busybox-static into DIR and exit")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv[:1] == ["midboot"]:
            from earlymm.tools.midboot import capture as midboot

            try:
                return midboot.main(argv[1:])
            except midboot.CaptureError as e:
                raise CaptureError(str(e)) from None
        if argv[:1] == ["minimize"]:
            mp = argparse.ArgumentParser(prog="python -m earlymm.tools.qemu_capture minimize")
            mp.add_argument("capture_dir")
            mp.add_argument("fixture_dir")
            a = mp.parse_args(argv[1:])
            summary = minimize(Path(a.capture_dir), Path(a.fixture_dir))
            summary["pti_kernel_table_pages"] = add_pti_kernel_tables(Path(a.capture_dir), Path(a.fixture_dir))
            print(json.dumps(summary, indent=2))
            return 0
        args = _parser().parse_args(argv)
        if args.fetch_kernel:
            kernel, busybox = fetch_kernel(Path(args.fetch_kernel))
            print(f"kernel:  {kernel}\nbusybox: {busybox}")
            return 0
        if args.kernel is None:
            found = sorted(Path("captures/kernel/root/boot").glob("vmlinuz-*"))
            if not found:
                raise CaptureError("no --kernel given and none under captures/kernel (use --fetch-kernel)")
            args.kernel = str(found[-1])
        print(f"captured into {capture(args)}")
        return 0
    except (CaptureError, QmpError, OSError) as e:
        print(f"qemu_capture: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
