"""``python -m earlymm.tools.qemu_capture midboot``: stop a real kernel mid-boot and record its tables.

QEMU starts paused (``-S``) with its gdbstub on a loopback port and QMP on a unix socket. gdb (batch mode,
no script of ours inside it) connects, sets one hardware breakpoint per stop, and for each stop runs
``continue`` and then a shell handshake: it creates ``stop.N`` and waits for ``go.N``. While gdb waits the
guest is stopped, and this side records the instant over QMP (``record.record_stop``). Every wait is
bounded; QEMU and gdb are always killed.

The same run measures the decompressor's 4→5-level switch (``lowmem``): QEMU logs the CPU state of every
block it enters below 640 KiB (``-d cpu -dfilter 0x0+0xa0000``), and the long-mode code found there is the
trampoline — its table is the CR3 the CPU comes back to 64-bit mode with, its code the page it ran in.
``decompressor.json`` keeps that measurement with the log's window (``decompressor.cpu.log.gz``), and
``bda.bin.gz`` the BIOS data area (0x400–0x4ff, read at the first stop) whose words at 0x40e and 0x413
``find_trampoline_placement`` reads.
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
from earlymm.tools.gdbstop import StopError, cpu_features, free_port, gdb_command, kill_all, wait_file
from earlymm.tools.initramfs import build_initramfs  # the same initramfs as a normal capture
from earlymm.tools.midboot.bootinfo import console_e820, e820_updates, effective_e820
from earlymm.tools.midboot.kallsyms import Kallsyms, KallsymsError, cache_path, load_kallsyms
from earlymm.tools.midboot.lowmem import QEMU_LOG_FILTER, LowMemError, bda_words, measure, parse_log, window_text
from earlymm.tools.midboot.record import QmpFrames, RecordError, StopRecord, record_stop

# Stops in boot order: (symbol, the model's --until phase that ends at the same point)
STOPS = (("x86_64_start_kernel", "startup_64"), ("init_mem_mapping", "setup_arch"),
         ("idt_setup_early_pf", "init_mem_mapping"))
SYMBOLS = ("_text", "_end", "x86_64_start_kernel", "init_mem_mapping", "idt_setup_early_pf", "early_top_pgt",
           "init_top_pgt", "early_dynamic_pgts", "next_early_pgt", "phys_base", "boot_params", "level3_kernel_pgt",
           "level2_kernel_pgt", "level2_fixmap_pgt", "level1_fixmap_pgt", "level4_kernel_pgt", "bm_pte", "__brk_base",
           "__brk_limit", "do_early_exception",
           # and everything `earlymm boot --kernel-symbols` lays the model's image out from
           "startup_64", "secondary_startup_64", "early_idt_handler_array", "asm_exc_page_fault", "early_pmd_flags",
           "early_recursion_flag", "__supported_pte_mask", "max_pfn_mapped", "idt_table", "boot_command_line",
           "init_thread_union", "empty_zero_page", "__bss_start", "__bss_stop")
# loglevel=8 lets the kernel's KERN_DEBUG e820 edits reach the console; memblock=debug logs every memblock
# reservation and allocation with its caller (which is where page-table pages come from). Neither
# changes what is mapped.
BASE_APPEND = "console=ttyS0 earlyprintk=serial nokaslr panic=-1 loglevel=8 memblock=debug"
TRACE_TAG = "EARLYMM_EXC"
BDA = (0x400, 0x100)  # the BIOS data area
MEASURE_METHOD = ("QEMU -d cpu -dfilter 0x0+0xa0000: the CPU state before every block entered below 640 KiB; the "
                  "window from the first to the last in long mode is the trampoline (its table: CR3 on the way "
                  "back to 64-bit mode; its code: the page the window ran in) — see earlymm.tools.midboot.lowmem")


class CaptureError(Exception):
    pass


def _gdb_command(port: int, addrs: list[int], sync: Path, wait_s: int, trace_at: int | None) -> list[str]:
    """gdb's whole part. With ``trace_at`` (``do_early_exception``), once the kernel runs at its own
    addresses a dprintf logs every early exception — vector, CR2 and the faulting RIP (``regs->ip``,
    pt_regs offset 128) — and lets it go on."""
    fmt = f'"{TRACE_TAG} %lx %lx %lx\\n"'
    trace = [f"dprintf *{trace_at:#x},{fmt},$rsi,$cr2,*(unsigned long *)($rdi+128)"] if trace_at is not None else []
    return gdb_command(port, addrs, sync, wait_s, trace)


def early_exceptions(gdb_log: str, syms: Kallsyms) -> list[dict[str, object]]:
    """The dprintf lines: vector, CR2 and the faulting RIP with the function it is in."""
    out: list[dict[str, object]] = []
    for ln in gdb_log.splitlines():
        parts = ln.split()
        if len(parts) == 4 and parts[0] == TRACE_TAG:
            vec, cr2, rip = (int(x, 16) for x in parts[1:])
            out.append({"vector": vec, "cr2": f"{cr2:#x}", "rip": f"{rip:#x}", "function": syms.symbolize(rip)})
    return out


def package_versions(kernel: Path) -> dict[str, str]:
    """Debian package versions from the .deb names ``--fetch-kernel`` left beside ``root/``."""
    out: dict[str, str] = {}
    for deb in sorted(kernel.parent.parent.parent.glob("*.deb")):
        name, _, rest = deb.stem.partition("_")
        out[name] = rest.rsplit("_", 1)[0].replace("%3a", ":")
    return out


def run_capture(kernel: Path, busybox: Path, out: Path, *, cpu: str, mem: str, append: str, qemu: str,
                timeout: float) -> list[StopRecord]:
    syms = load_kallsyms(kernel, busybox, qemu, timeout)
    out.mkdir(parents=True, exist_ok=True)
    full_append = " ".join(filter(None, [BASE_APPEND, append]))
    records: list[StopRecord] = []
    with tempfile.TemporaryDirectory(prefix="earlymm-midboot-") as tmp_s:
        tmp = Path(tmp_s)
        initrd, console, sock = tmp / "initramfs.cpio.gz", tmp / "console.log", tmp / "qmp.sock"
        initrd.write_bytes(build_initramfs(busybox))
        port = free_port()
        qcmd = [qemu, "-machine", "pc", "-accel", "tcg", "-cpu", cpu, "-m", mem, "-smp", "1", "-nodefaults",
                "-display", "none", "-no-reboot", "-kernel", str(kernel), "-initrd", str(initrd), "-append",
                full_append, "-serial", f"file:{console}", "-qmp", f"unix:{sock},server=on,wait=off", "-S",
                "-gdb", f"tcp:127.0.0.1:{port}", "-d", "cpu", "-dfilter", QEMU_LOG_FILTER,
                "-D", str(tmp / "lowmem.log")]
        qlog, glog = tmp / "qemu.log", tmp / "gdb.log"
        bda = b""
        procs: list[subprocess.Popen[bytes]] = []
        try:
            with open(qlog, "wb") as f:
                procs.append(subprocess.Popen(qcmd, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT))
            with Qmp(str(sock), timeout=60) as q:
                features, version = cpu_features(q), q.command("query-version")
                addrs = [syms[s] for s, _ in STOPS]
                with open(glog, "wb") as f:
                    procs.append(subprocess.Popen(_gdb_command(port, addrs, tmp, int(timeout),
                                                               syms.get("do_early_exception")),
                                                  stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT))
                for i, (symbol, _phase) in enumerate(STOPS):
                    wait_file(tmp / f"stop.{i}", procs, timeout, [qlog, glog, console])
                    # gdb has printed (and flushed) every dprintf line from before this stop
                    seen = len(early_exceptions(glog.read_text(errors="replace"), syms))
                    records.append(record_stop(q, symbol, symbol, syms, out, tmp / "scratch.bin",
                                               {"early_exceptions_before": seen}))
                    if i == 0:  # untouched since the BIOS: neither the decompressor nor head64.c writes it
                        bda = QmpFrames(q, tmp / "scratch.bin").read_phys(*BDA)
                    (tmp / f"go.{i}").touch()
                with contextlib.suppress(QmpError):  # QEMU may hang up before it replies
                    q.command("quit", timeout=10)
        finally:
            kill_all(procs)
        text = console.read_text(errors="replace").replace("\r", "")
        shown = [a.replace(f"{tmp}/", "").replace(str(kernel), kernel.name).replace(f":{port}", ":PORT") for a in qcmd]
        faults = early_exceptions(glog.read_text(errors="replace"), syms)
        decompressor = _decompressor(tmp / "lowmem.log", bda, out)
    (out / "console.log").write_text(text)
    (out / "early_exceptions.json").write_text(json.dumps(faults, indent=0) + "\n")
    meta = _meta(kernel, syms, records, text, shown, cpu, mem, full_append, features, version)
    meta["machine"]["bios_data_area"] = decompressor["bios_data_area"]
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return records


def _decompressor(log: Path, bda: bytes, out: Path) -> dict[str, Any]:
    """``decompressor.json``, ``decompressor.cpu.log.gz`` and ``bda.bin.gz``: the paging switch QEMU's log
    shows (``null`` when none ran) and the BIOS data area words the placement is computed from."""
    try:
        with open(log, encoding="ascii", errors="replace") as f:
            lines = f.read().splitlines()
        switch, words = measure(parse_log(lines)), bda_words(bda)
    except (OSError, LowMemError) as e:
        raise CaptureError(f"the decompressor's paging switch: {e}") from None
    (out / "bda.bin.gz").write_bytes(gzip.compress(bda, mtime=0))
    (out / "decompressor.cpu.log.gz").write_bytes(gzip.compress(window_text(lines).encode(), mtime=0))
    info = {"method": MEASURE_METHOD, "log": "decompressor.cpu.log.gz", "bios_data_area": words,
            "bios_data_area_read_at": STOPS[0][0], "switch": switch.to_json() if switch else None}
    (out / "decompressor.json").write_text(json.dumps(info, indent=1) + "\n")
    return info


def _meta(kernel: Path, syms: Kallsyms, records: list[StopRecord], console: str, shown: list[str], cpu: str,
          mem: str, append: str, features: dict[str, Any], version: dict[str, Any]) -> dict[str, Any]:
    last = records[-1].info
    first = records[0].info
    banner = next((ln.split("] ", 1)[-1] for ln in console.splitlines() if "Linux version" in ln), "")
    ramdisk_image, ramdisk_size = (int(v, 16) for v in last["boot_params"]["ramdisk"])
    return {
        "made_by": shlex.join(["python", "-m", "earlymm.tools.qemu_capture", "midboot", "--cpu", cpu, "--mem", mem,
                               *(["--append", append.removeprefix(BASE_APPEND).strip()]
                                 if append != BASE_APPEND else []), "--out", "DIR"]),
        "kernel_file": kernel.name,
        "kernel_release": kernel.name.removeprefix("vmlinuz-"), "kernel_banner": banner,
        "packages": package_versions(kernel), "kallsyms": cache_path(kernel).name,
        "qemu_version": "{major}.{minor}.{micro}".format(**version["qemu"]), "qemu_package": version.get("package", ""),
        "qemu_command": shown, "qemu_command_shell": shlex.join(shown),
        "cpu": cpu, "mem": mem, "append": append, "cpu_features": features,
        "stops": [{"symbol": s, "model_until": p, "address": f"{syms[s]:#x}"} for s, p in STOPS],
        "symbols": syms.subset(list(SYMBOLS)),
        "machine": {
            "e820": [e.to_json() for e in effective_e820(console)],
            "e820_tables": {k: [e.to_json() for e in v] for k, v in console_e820(console).items()},
            "e820_updates": e820_updates(console),
            "ramdisk": [f"{ramdisk_image:#x}", f"{ramdisk_size:#x}"],
            "image_size": f"{syms['_end'] - syms['_text']:#x}", "load_address": last["load_address"],
            "phys_base": last["phys_base"], "boot_params_at": first["registers"].get("RDI"),
            "cmd_line_ptr": last["boot_params"]["cmd_line"], "cmdline": append,
            "gbpages": bool(features["pdpe1gb"]), "nx": bool(features["nx"]), "pge": bool(features["pge"]),
            "pse": bool(features["pse"]), "la57": bool(features["la57"]),
        },
        "captured_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def add_parser_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kernel", help="vmlinuz (default: newest under captures/kernel/root/boot)")
    p.add_argument("--busybox", help="static busybox (default: ../bin/busybox beside the kernel's boot/)")
    p.add_argument("--cpu", default="qemu64", help="QEMU CPU model, e.g. qemu64, max,la57=off, or with 5-level "
                                                   "paging qemu64,+la57 or max (default qemu64)")
    p.add_argument("--mem", default="512M", help="guest RAM (default 512M)")
    p.add_argument("--append", default="", help=f"kernel command line after '{BASE_APPEND}', e.g. "
                                                "'memmap=64M$0x10000000' or 'mem=1G' (no shell escaping needed)")
    p.add_argument("--out", required=True, help="fixture directory to write")
    p.add_argument("--timeout", type=float, default=300, help="seconds allowed for each wait (default 300)")
    p.add_argument("--qemu", default="qemu-system-x86_64")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m earlymm.tools.qemu_capture midboot",
                                description="Stop a nokaslr kernel at x86_64_start_kernel, init_mem_mapping and "
                                            "idt_setup_early_pf (hardware breakpoints through gdb) and record "
                                            "each instant's page tables, registers and boot_params.")
    add_parser_args(p)
    a = p.parse_args(argv)
    if a.kernel is None:
        found = sorted(Path("captures/kernel/root/boot").glob("vmlinuz-*"))
        if not found:
            raise CaptureError("no --kernel given and none under captures/kernel (use --fetch-kernel)")
        a.kernel = str(found[-1])
    kernel = Path(a.kernel)
    busybox = Path(a.busybox) if a.busybox else kernel.parent.parent / "bin" / "busybox"
    for path in (kernel, busybox):
        if not path.is_file():
            raise CaptureError(f"{path} does not exist (try --fetch-kernel DIR)")
    for tool in (a.qemu, "gdb"):
        if shutil.which(tool) is None:
            raise CaptureError(f"{tool} not found (apt-get install qemu-system-x86 gdb)")
    try:
        records = run_capture(kernel, busybox, Path(a.out), cpu=a.cpu, mem=a.mem, append=a.append, qemu=a.qemu,
                              timeout=a.timeout)
    except (RecordError, KallsymsError, StopError, ValueError) as e:
        raise CaptureError(str(e)) from None
    for r in records:
        i = r.info
        print(f"{r.name}: CR3 {i['registers']['CR3']} ({i['cr3_is']}), {i['table_pages']} table pages, "
              f"next_early_pgt {i['next_early_pgt']}, {i['tlb_lines']} info tlb lines")
    dec = json.loads((Path(a.out) / "decompressor.json").read_text())
    sw, words = dec["switch"], dec["bios_data_area"]
    print(f"BIOS data area: base memory {words['base_mem_kib']} KiB, EBDA segment {words['ebda_segment']:#x}; "
          + (f"decompressor: {sw['direction']}-level switch, trampoline at {sw['trampoline']} (code {sw['code']})"
             if sw else "decompressor: no paging switch below 640 KiB"))
    print(f"recorded into {a.out}")
    return 0
