"""``python -m earlymm.tools.xencap capture``: a Debian 6.1 kernel as Xen 4.17's PV dom0, stopped mid-boot.

QEMU (TCG) boots Debian's Xen as a multiboot kernel: ``-kernel xen -append "XEN ARGS" -initrd "vmlinuz
DOM0 ARGS,initramfs"`` (commas inside a module's command line doubled, QEMU's option escaping). Xen gets
``smap=0`` — under TCG with SMAP on, Xen's bounce of the guest's first fault onto the guest stack faults
and dom0 dies — its console on the serial port and ``dom0_mem``; dom0 gets ``nokaslr`` and its console
through Xen (``console=hvc0 earlyprintk=xen``). gdb stops dom0 with hardware breakpoints at its own
symbols (a PV dom0 runs at its link addresses), the shared ``gdbstop`` handshake holds each instant, and
``record.record_xen_stop`` reads it over QMP. Every wait is bounded; QEMU and gdb are always killed.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gzip
import json
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from earlymm.images.qmp import Qmp, QmpError
from earlymm.tools.argtypes import positive_float
from earlymm.tools.gdbstop import StopError, cpu_features, free_port, gdb_command, kill_all, wait_file
from earlymm.tools.initramfs import build_initramfs
from earlymm.tools.midboot.capture import package_versions
from earlymm.tools.midboot.kallsyms import Kallsyms, KallsymsError, cache_path, load_kallsyms
from earlymm.tools.midboot.record import RecordError, StopRecord
from earlymm.tools.xencap.console import dom0_e820, xen_banner, xen_e820
from earlymm.tools.xencap.hypervisor import DEFAULT_DIR, XenFetchError, fetch_xen, package_version
from earlymm.tools.xencap.record import record_xen_stop
from earlymm.tools.xencap.startofday import StartOfDayError, parse_start_of_day

# Stops in boot order: (symbol, the model's --until phase that ends at the same point)
STOPS = (("xen_start_kernel", "xen_start_kernel"), ("init_mem_mapping", "setup_arch"),
         ("idt_setup_early_pf", "init_mem_mapping"))
SYMBOLS = ("_text", "_end", "startup_xen", "xen_start_kernel", "init_mem_mapping", "idt_setup_early_pf",
           "xen_setup_kernel_pagetable", "xen_pagetable_init", "init_top_pgt", "level3_ident_pgt", "level2_ident_pgt",
           "level3_kernel_pgt", "level2_kernel_pgt", "level2_fixmap_pgt", "level1_fixmap_pgt",
           "level3_user_vsyscall", "__brk_base", "__brk_limit", "xen_start_info", "xen_p2m_addr", "xen_p2m_size",
           "xen_max_p2m_pfn", "xen_released_pages", "max_pfn", "max_pfn_mapped", "hypercall_page",
           "empty_zero_page", "__bss_start", "__bss_stop", "init_thread_union", "boot_command_line")
XEN_BASE = "console=com1 com1=115200,8n1 smap=0 loglvl=all guest_loglvl=all noreboot"
# loglevel=8 and memblock=debug: the e820 edits and every memblock allocation with its caller reach the
# console (where the kernel's page-table pages come from); neither changes what is mapped
DOM0_BASE = "console=hvc0 earlyprintk=xen nokaslr loglevel=8 memblock=debug"


class CaptureError(Exception):
    pass


def module_arg(path: Path, cmdline: str) -> str:
    """One multiboot module for QEMU's ``-initrd``: ``FILE ARGS`` with commas doubled."""
    text = str(path)
    if any(c in text for c in ", "):
        raise CaptureError(f"{text}: a multiboot module path may not contain a comma or a space")
    return f"{text} {cmdline}".rstrip().replace(",", ",,")


def parse_stops(text: str) -> tuple[tuple[str, str], ...]:
    """``--stops``: a comma-separated subset of the stops (symbols or model phases), kept in boot order."""
    names = {n.strip() for n in text.split(",") if n.strip()}
    unknown = names - {s for pair in STOPS for s in pair}
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"--stops {text!r}: choose from {', '.join(s for s, _ in STOPS)}")
    return tuple(pair for pair in STOPS if names & set(pair))


def run_capture(xen: Path, kernel: Path, busybox: Path, out: Path, *, cpu: str, mem: str, dom0_mem: str,
                xen_append: str, dom0_append: str, qemu: str, timeout: float,
                stops: tuple[tuple[str, str], ...] = STOPS) -> list[StopRecord]:
    syms = load_kallsyms(kernel, busybox, qemu, timeout)
    xen_args = " ".join(filter(None, [XEN_BASE, f"dom0_mem={dom0_mem}", xen_append]))
    dom0_args = " ".join(filter(None, [DOM0_BASE, dom0_append]))
    records: list[StopRecord] = []
    with tempfile.TemporaryDirectory(prefix="earlymm-xencap-") as tmp_s:
        tmp = Path(tmp_s)
        stage = tmp / "fixture"  # moved to ``out`` only once every stop is recorded
        stage.mkdir()
        initrd, console, sock = tmp / "initramfs.cpio.gz", tmp / "console.log", tmp / "qmp.sock"
        initrd.write_bytes(build_initramfs(busybox))
        port = free_port()
        qcmd = [qemu, "-machine", "pc", "-accel", "tcg", "-cpu", cpu, "-m", mem, "-smp", "1", "-nodefaults",
                "-display", "none", "-no-reboot", "-kernel", str(xen), "-append", xen_args,
                "-initrd", f"{module_arg(kernel, dom0_args)},{module_arg(initrd, '')}",
                "-serial", f"file:{console}", "-qmp", f"unix:{sock},server=on,wait=off", "-S",
                "-gdb", f"tcp:127.0.0.1:{port}"]
        qlog, glog = tmp / "qemu.log", tmp / "gdb.log"
        procs: list[subprocess.Popen[bytes]] = []
        try:
            with open(qlog, "wb") as f:
                procs.append(subprocess.Popen(qcmd, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT))
            with Qmp(str(sock), timeout=60) as q:
                features, version = cpu_features(q), q.command("query-version")
                with open(glog, "wb") as f:
                    procs.append(subprocess.Popen(gdb_command(port, [syms[s] for s, _ in stops], tmp, int(timeout)),
                                                  stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT))
                for i, (symbol, _phase) in enumerate(stops):
                    wait_file(tmp / f"stop.{i}", procs, timeout, [qlog, glog, console])
                    records.append(record_xen_stop(q, symbol, syms, stage, tmp / "scratch.bin", console))
                    (tmp / f"go.{i}").touch()
                with contextlib.suppress(QmpError):  # QEMU may hang up before it replies
                    q.command("quit", timeout=10)
        finally:
            kill_all(procs)
        text = console.read_text(errors="replace").replace("\r", "")
        shown = [a.replace(f"{tmp}/", "").replace(str(kernel), kernel.name).replace(str(xen), xen.name)
                 .replace(f":{port}", ":PORT") for a in qcmd]
        (stage / "console.log.gz").write_bytes(gzip.compress(text.encode(), mtime=0))
        meta = _meta(xen, kernel, syms, text, shown, cpu=cpu, mem=mem, dom0_mem=dom0_mem,
                     xen_args=xen_args, dom0_args=dom0_args, xen_append=xen_append, dom0_append=dom0_append,
                     features=features, version=version, stops=stops)
        (stage / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
        out.mkdir(parents=True, exist_ok=True)
        for done in sorted(stage.iterdir()):
            shutil.move(str(done), str(out / done.name))
    return records


def _meta(xen: Path, kernel: Path, syms: Kallsyms, console: str, shown: list[str], *,
          cpu: str, mem: str, dom0_mem: str, xen_args: str, dom0_args: str, xen_append: str, dom0_append: str,
          features: dict[str, Any], version: dict[str, Any], stops: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    banner = next((ln.split("] ", 1)[-1] for ln in console.splitlines() if "Linux version" in ln), "")
    made_by = ["python", "-m", "earlymm.tools.xencap", "capture", "--cpu", cpu, "--mem", mem, "--dom0-mem", dom0_mem]
    made_by += [*(["--xen-append", xen_append] if xen_append else []),
                *(["--dom0-append", dom0_append] if dom0_append else []),
                *(["--stops", ",".join(s for s, _ in stops)] if stops != STOPS else []), "--out", "DIR"]
    return {
        "made_by": shlex.join(made_by),
        "xen_file": xen.name, "xen_package": f"xen-hypervisor-4.17-amd64 {package_version(xen.parent)}".strip(),
        "xen_banner": xen_banner(console),
        "kernel_file": kernel.name, "kernel_release": kernel.name.removeprefix("vmlinuz-"), "kernel_banner": banner,
        "packages": package_versions(kernel), "kallsyms": cache_path(kernel).name,
        "qemu_version": "{major}.{minor}.{micro}".format(**version["qemu"]),
        "qemu_package": version.get("package", "").strip(),
        "qemu_command": shown, "qemu_command_shell": shlex.join(shown),
        "cpu": cpu, "mem": mem, "dom0_mem": dom0_mem, "xen_args": xen_args, "dom0_args": dom0_args,
        "cpu_features": features,
        "stops": [{"symbol": s, "model_until": p, "address": f"{syms[s]:#x}"} for s, p in stops],
        "symbols": syms.subset([s for s in SYMBOLS if syms.get(s) is not None]),
        "start_of_day": parse_start_of_day(console).to_json(),
        "machine": {
            "xen_e820": [e.to_json() for e in xen_e820(console)],
            "dom0_e820": [e.to_json() for e in dom0_e820(console)],
        },
        "captured_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def add_parser_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--xen", help=f"the decompressed hypervisor (default: {DEFAULT_DIR}/xen-4.17-amd64, "
                                 "fetched with apt-get download when missing)")
    p.add_argument("--kernel", help="dom0's vmlinuz (default: newest under captures/kernel/root/boot)")
    p.add_argument("--busybox", help="static busybox for the initramfs (default: ../bin/busybox beside boot/)")
    p.add_argument("--cpu", default="qemu64", help="QEMU CPU model, e.g. qemu64, max or qemu64,+pdpe1gb")
    p.add_argument("--mem", default="2G", help="host RAM (default 2G)")
    p.add_argument("--dom0-mem", default="512M", help="Xen's dom0_mem (default 512M)")
    p.add_argument("--xen-append", default="", help=f"more Xen arguments after '{XEN_BASE} dom0_mem=…'")
    p.add_argument("--dom0-append", default="", help=f"more dom0 kernel arguments after '{DOM0_BASE}'")
    p.add_argument("--stops", type=parse_stops, default=STOPS,
                   help=f"comma-separated subset of {','.join(s for s, _ in STOPS)} (default: all three)")
    p.add_argument("--out", required=True, help="fixture directory to write")
    p.add_argument("--timeout", type=positive_float("--timeout", 86400), default=600,
                   help="seconds allowed for each wait (default 600)")
    p.add_argument("--qemu", default="qemu-system-x86_64")


def capture_main(a: argparse.Namespace) -> int:
    if a.kernel is None:
        found = sorted(Path("captures/kernel/root/boot").glob("vmlinuz-*"))
        if not found:
            raise CaptureError("no --kernel given and none under captures/kernel (python -m "
                               "earlymm.tools.qemu_capture --fetch-kernel captures/kernel)")
        a.kernel = str(found[-1])
    kernel = Path(a.kernel).resolve()
    busybox = Path(a.busybox) if a.busybox else kernel.parent.parent / "bin" / "busybox"
    for tool in (a.qemu, "gdb"):
        if shutil.which(tool) is None:
            raise CaptureError(f"{tool} not found (apt-get install qemu-system-x86 gdb)")
    try:
        xen = Path(a.xen).resolve() if a.xen else fetch_xen(DEFAULT_DIR).resolve()
        for path in (xen, kernel, busybox):
            if not path.is_file():
                raise CaptureError(f"{path} does not exist")
        records = run_capture(xen, kernel, busybox, Path(a.out), cpu=a.cpu, mem=a.mem, dom0_mem=a.dom0_mem,
                              xen_append=a.xen_append, dom0_append=a.dom0_append, qemu=a.qemu, timeout=a.timeout,
                              stops=a.stops)
    except (RecordError, KallsymsError, StopError, XenFetchError, StartOfDayError, QmpError, ValueError) as e:
        raise CaptureError(str(e)) from None
    for r in records:
        i = r.info
        print(f"{r.name}: CR3 {i['registers']['CR3']} ({i['cr3_is']}), {i['table_pages']} table pages, "
              f"p2m {i['p2m']['size']} entries at {i['p2m']['va']} ({i['p2m']['runs']} runs)")
    print(f"recorded into {a.out}")
    return 0
