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
import datetime
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from earlymm.images import ImageError
from earlymm.images.minimize import add_pti_kernel_tables, minimize
from earlymm.images.monitor_text import choose_samples, parse_info_tlb
from earlymm.images.qmp import Qmp, QmpError
from earlymm.images.safe_write import (
    SYMLINK_POLICY,
    WriteError,
    check_target,
    ensure_directory,
    write_bytes,
    write_text,
)
from earlymm.tools import capture_symbols
from earlymm.tools.argtypes import OneLineParser, positive_float
from earlymm.tools.initramfs import READY, build_initramfs

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


MEM_RE = re.compile(r"([1-9][0-9]{0,9})([KMGT]?)", re.ASCII)


def _mem_arg(text: str) -> str:
    """QEMU's ``-m``: a whole number of MiB, or with a K/M/G/T suffix (checked here, not by QEMU later)."""
    t = text.strip().upper()
    if not MEM_RE.fullmatch(t):
        raise argparse.ArgumentTypeError(f"--mem {text!r}: expected a whole number with an optional K, M, G or T "
                                         "suffix, like 512M or 5G")
    return t


def _mem_bytes(mem: str) -> int:
    m = MEM_RE.fullmatch(mem.upper())
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


# Files a capture directory gets; QEMU itself writes console.log, qemu.stderr and core.elf.
CAPTURE_FILES = ("registers.txt", "tlb.txt", "mem.txt", "gva2gpa.txt", "core.elf", "console.log", "qemu.stderr",
                 "meta.json", capture_symbols.KALLSYMS_FILE, capture_symbols.MEMMAP_FILE)


def _save_state(q: Qmp, out: Path, la57: bool, mem_bytes: int, extra: list[int]) -> int:
    replies = {}
    for cmd, name in (("info registers", "registers.txt"), ("info tlb", "tlb.txt"), ("info mem", "mem.txt")):
        replies[name] = q.hmp(cmd, timeout=300)
        write_bytes(out / name, replies[name].encode())
    tlb = parse_info_tlb(replies["tlb.txt"])
    vas = sorted(set(choose_samples(tlb, la57, mem_bytes)) | set(extra))
    rows = [f"{va:#x}\t{q.hmp(f'gva2gpa {va:#x}').strip()}" for va in vas]
    write_text(out / "gva2gpa.txt", "\n".join(rows) + "\n")
    core = out / "core.elf"
    _remove_regular(core)
    q.command("dump-guest-memory", timeout=900, paging=False, protocol=f"file:{core.resolve()}",
              format="elf")
    return len(rows)


def _remove_regular(path: Path) -> None:
    """Remove a previous run's file before QEMU writes it anew; anything but a regular file is refused."""
    check_target(path)
    path.unlink(missing_ok=True)


def capture(args: argparse.Namespace) -> Path:
    out = ensure_directory(args.out)
    for name in CAPTURE_FILES:  # refuse a FIFO or device among them before QEMU runs
        check_target(out / name)
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
    _remove_regular(console)
    guest: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="earlymm-qemu-") as tmp:
        initrd, report = Path(tmp) / "initramfs.cpio.gz", Path(tmp) / "guest-files.txt"
        initrd.write_bytes(build_initramfs(busybox, busy_user=args.user_cr3, report_files=args.guest_files))
        sock = str(Path(tmp) / "qmp.sock")  # unix socket paths are limited to ~107 bytes
        cmd = [qemu, "-machine", "pc", "-accel", "tcg", "-cpu", cpu, "-m", args.mem, "-smp", "1",
               "-nodefaults", "-display", "none", "-no-reboot", "-kernel", str(kernel),
               "-initrd", str(initrd), "-append", append, "-serial", f"file:{console}",
               "-qmp", f"unix:{sock},server=on,wait=off", *(["-serial", f"file:{report}"] if args.guest_files else [])]
        _remove_regular(out / "qemu.stderr")
        with open(out / "qemu.stderr", "xb") as err:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        quitting = False
        try:
            release, boot_s = _wait_ready(console, proc, args.timeout)
            extra: list[int] = []
            if args.guest_files:
                guest = capture_symbols.save_guest_files(capture_symbols.wait_report(report, proc, args.timeout), out)
                extra = capture_symbols.symbol_samples((out / capture_symbols.KALLSYMS_FILE).read_text())
            with Qmp(sock, timeout=60) as q:
                q.command("stop")
                user_stops = _stop_in_user_mode(q) if args.user_cr3 else 0
                version = q.command("query-version")
                samples = _save_state(q, out, la57, _mem_bytes(args.mem), extra)
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
        **({"user_mode_stops": user_stops} if args.user_cr3 else {}), **({"guest_files": guest} if guest else {}),
        "captured_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    write_text(out / "meta.json", json.dumps(meta, indent=2) + "\n")
    return out


OUTPUT_POLICY = (f"Output files must be new or regular files: devices, FIFOs, sockets and directories are refused, "
                 f"{SYMLINK_POLICY}; each is replaced atomically.")


def _parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="python -m earlymm.tools.qemu_capture",
        description="Capture a Linux guest's page tables and QEMU's view of them.",
        epilog="Subcommands: 'midboot --out DIR [--cpu --mem --append]' stops a nokaslr kernel at "
               "x86_64_start_kernel, init_mem_mapping and idt_setup_early_pf and records its tables (see "
               "'midboot --help'); 'minimize CAPTURE_DIR FIXTURE_DIR' keeps only the page-table pages reachable "
               "from each CPU's CR3 (and, for a PTI user CR3, from the kernel PGD before it) plus the pages "
               "gva2gpa samples land on (core.elf.gz), and copies the text files. " + OUTPUT_POLICY)
    p.add_argument("--kernel", help="vmlinuz to boot (default: newest under captures/kernel/root/boot)")
    p.add_argument("--busybox", help="static busybox (default: ../bin/busybox beside the kernel's boot/)")
    p.add_argument("--la57", action="store_true", help="add +la57 to the CPU model (5-level paging)")
    p.add_argument("--cpu", default="qemu64", help="QEMU CPU model (default qemu64)")
    p.add_argument("--mem", type=_mem_arg, default="512M", help="guest RAM, e.g. 512M or 5G (default 512M)")
    p.add_argument("--append", default="", help="extra kernel command line")
    p.add_argument("--user-cr3", action="store_true",
                   help="spin in user space after /init reports and stop at CPL 3, so CR3 is the user page "
                        "table (the PTI user PGD with --append pti=on)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--kaslr", dest="kaslr", action="store_true", help="leave KASLR on")
    g.add_argument("--nokaslr", dest="kaslr", action="store_false", help="boot with nokaslr (default)")
    p.add_argument("--out", default="captures/qemu",
                   help="output directory (default captures/qemu), created if missing; must be a directory")
    p.add_argument("--timeout", type=positive_float("--timeout", 86400), default=240,
                   help="seconds to wait for /init (default 240)")
    p.add_argument("--qemu", default="qemu-system-x86_64", help="QEMU binary")
    p.add_argument("--no-guest-files", dest="guest_files", action="store_false",
                   help="do not save the guest's /proc/kallsyms and /sys/firmware/memmap (kallsyms.txt, memmap.txt, "
                        "copied over a second serial port; ~30 s under TCG) nor ask gva2gpa about its symbols")
    p.add_argument("--fetch-kernel", metavar="DIR",
                   help="apt-get download a Debian 6.1 amd64 kernel and busybox-static into DIR and exit")
    return p


def _minimize_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m earlymm.tools.qemu_capture minimize",
                      description="Shrink a capture directory into a test fixture. " + OUTPUT_POLICY)
    p.add_argument("capture_dir")
    p.add_argument("fixture_dir")
    return p


def main(argv: list[str] | None = None) -> int:
    """Exit 0 done, 1 the capture failed (QEMU, the guest, I/O), 2 bad arguments or output paths."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv[:1] == ["midboot"]:
            from earlymm.tools.midboot import capture as midboot

            try:
                return midboot.main(argv[1:])
            except midboot.CaptureError as e:
                raise CaptureError(str(e)) from None
        if argv[:1] == ["minimize"]:
            a = _minimize_parser().parse_args(argv[1:])
            src = Path(a.capture_dir)
            if not src.is_dir():
                raise WriteError(f"capture directory {a.capture_dir!r} is not a directory")
            fixture = ensure_directory(a.fixture_dir, "fixture directory")
            summary = minimize(src, fixture)
            summary["pti_kernel_table_pages"] = add_pti_kernel_tables(src, fixture)
            summary["kallsyms"] = capture_symbols.add_to_fixture(src, fixture)
            print(json.dumps(summary, indent=2))
            return 0
        args = _parser().parse_args(argv)
        if args.fetch_kernel is not None:
            kernel, busybox = fetch_kernel(ensure_directory(args.fetch_kernel, "kernel directory"))
            print(f"kernel:  {kernel}\nbusybox: {busybox}")
            return 0
        ensure_directory(args.out)
        if args.kernel is None:
            found = sorted(Path("captures/kernel/root/boot").glob("vmlinuz-*"))
            if not found:
                raise CaptureError("no --kernel given and none under captures/kernel (use --fetch-kernel)")
            args.kernel = str(found[-1])
        print(f"captured into {capture(args)}")
        return 0
    except SystemExit as e:  # argparse: --help (0) or a one-line usage error (2)
        return int(e.code or 0)
    except WriteError as e:
        print(f"qemu_capture: error: {e}", file=sys.stderr)
        return 2
    except (CaptureError, QmpError, ImageError, OSError, ValueError) as e:
        print(f"qemu_capture: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
