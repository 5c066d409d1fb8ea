"""ptdump benchmark: a full ``--format qemu-tlb`` dump of a real guest against QEMU's own ``info tlb`` on the
same guest, and against volatility3's ``mapping()`` over the same address space, side by side in one run.

    python bench/bench_ptdump.py [--runs N] [--kernel VMLINUZ] [--image CORE --tlb TLB.TXT] [--no-volatility]

By default it boots a Debian kernel under ``qemu-system-x86_64`` (TCG, 512 MiB, as the capture tool does),
stops it at /init and times ``info tlb`` (and ``info mem``) over QMP with a client that only reads the
socket: the time from sending the command to the last byte of the reply. It then dumps the guest's
memory and times earlymm on that core:

* in-process: open the core, set up the CPU, read the tables, render ``info tlb`` (what a library user
  pays; Python startup and imports excluded);
* CLI: ``python -m earlymm ptdump CORE --format qemu-tlb --crlf`` as a subprocess, end to end;

and checks the output is byte-identical to QEMU's reply. volatility3 gets the same core through its own
ELF layer under ``LinuxIntel32e``; its ``mapping(0, 2**48)`` is drained and its pages counted. Each
figure is the best of ``--runs`` passes after one warm-up. Nothing asserts on time; it only reports.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from earlymm.arch.modes import Features  # noqa: E402
from earlymm.images import open_image  # noqa: E402
from earlymm.tools.initramfs import READY, build_initramfs  # noqa: E402
from earlymm.tools.machine_view import RegOverrides, infer_registers  # noqa: E402
from earlymm.tools.ptdump import qemu  # noqa: E402
from earlymm.tools.ptdump.space import open_space  # noqa: E402


def best(fn: Callable[[], object], runs: int) -> tuple[float, object]:
    fn()  # warm-up: page cache, lazy imports
    times, result = [], None
    for _ in range(runs):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return min(times), result


class RawQmp:
    """QMP over a UNIX socket reading big replies in 1 MiB chunks (no per-chunk re-scanning)."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        deadline = time.monotonic() + 30
        while True:
            try:
                self.sock.connect(path)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self._read()  # greeting
        self.call("qmp_capabilities")

    def _read(self) -> dict[str, object]:
        parts: list[bytes] = []
        while True:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("QMP closed")
            parts.append(chunk)
            if chunk.endswith(b"\n"):
                for line in b"".join(parts).splitlines():
                    msg = json.loads(line)
                    if "event" not in msg:
                        return msg  # type: ignore[no-any-return]
                parts = []

    def call(self, name: str, **arguments: object) -> object:
        self.sock.sendall(json.dumps({"execute": name, "arguments": arguments}).encode() + b"\n")
        msg = self._read()
        if "error" in msg:
            raise RuntimeError(f"{name}: {msg['error']}")
        return msg["return"]

    def hmp(self, line: str) -> str:
        return str(self.call("human-monitor-command", **{"command-line": line}))


def qemu_side(kernel: Path, busybox: Path, tmp: Path, runs: int) -> tuple[dict[str, float], str, Path]:
    """Boot, stop at /init, time info tlb / info mem, dump the core. Returns (times, tlb reply, core)."""
    initrd = tmp / "initramfs.cpio.gz"
    initrd.write_bytes(build_initramfs(busybox))
    sock, console, core = str(tmp / "qmp.sock"), tmp / "console.log", tmp / "core.elf"
    cmd = ["qemu-system-x86_64", "-machine", "pc", "-accel", "tcg", "-cpu", "qemu64", "-m", "512M", "-smp", "1",
           "-nodefaults", "-display", "none", "-no-reboot", "-kernel", str(kernel), "-initrd", str(initrd),
           "-append", "console=ttyS0 panic=-1 nokaslr", "-serial", f"file:{console}",
           "-qmp", f"unix:{sock},server=on,wait=off"]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        start = time.monotonic()
        while READY not in (console.read_text(errors="replace") if console.exists() else ""):
            if proc.poll() is not None or time.monotonic() - start > 300:
                raise RuntimeError(f"guest did not reach /init; see {console}")
            time.sleep(0.2)
        q = RawQmp(sock)
        q.call("stop")
        t_tlb, tlb = best(lambda: q.hmp("info tlb"), runs)
        t_mem, _ = best(lambda: q.hmp("info mem"), runs)
        q.call("dump-guest-memory", paging=False, protocol=f"file:{core}", format="elf")
        q.call("quit")
    finally:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return {"info tlb": t_tlb, "info mem": t_mem}, str(tlb), core


def earlymm_inprocess(core: Path) -> str:
    with open_image(core) as img:
        space = open_space(img, infer_registers(img.cpus[0], RegOverrides()), Features())
        return qemu.tlb_text(space.tree("qemu"), crlf=True)


def earlymm_cli(core: Path) -> bytes:
    return subprocess.run([sys.executable, "-m", "earlymm", "ptdump", str(core), "--format", "qemu-tlb", "--crlf"],
                          capture_output=True, check=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}).stdout


def mapped_pages(core: Path) -> int:
    """4 KiB pages earlymm finds mapped (aliases counted), to set beside volatility3's count."""
    from earlymm.tools.ptdump.engine import expand

    with open_image(core) as img:
        tree = open_space(img, infer_registers(img.cpus[0], RegOverrides()), Features()).tree("arch")
        return sum(tree.sem.rows[d].lsize >> 12 for _v, _e, d, _a, _x in expand(tree))


def volatility_mapping(core: Path, cr3: int) -> Callable[[], tuple[int, int]]:
    """volatility3's LinuxIntel32e layer over its own ELF layer over the core (as bench_translate builds it);
    the callable drains ``mapping(0, 2**48)`` and returns (regions, 4 KiB pages mapped)."""
    from volatility3.framework import contexts
    from volatility3.framework.layers import elf, intel, physical

    ctx = contexts.Context()
    base = "bench.ptdump"
    ctx.config[f"{base}.file.location"] = core.resolve().as_uri()
    ctx.add_layer(physical.FileLayer(ctx, f"{base}.file", "pt-file"))
    ctx.config[f"{base}.elf.base_layer"] = "pt-file"
    ctx.add_layer(elf.Elf64Layer(ctx, f"{base}.elf", "pt-elf"))
    ctx.config[f"{base}.vm.memory_layer"] = "pt-elf"
    ctx.config[f"{base}.vm.page_map_offset"] = cr3 & ~0xFFF
    layer = intel.LinuxIntel32e(ctx, f"{base}.vm", "pt-vm")
    ctx.add_layer(layer)

    def run() -> tuple[int, int]:
        regions = pages = 0
        for _off, size, _moff, _msize, _layer in layer.mapping(0, 1 << 48, ignore_errors=True):
            regions += 1
            pages += size >> 12
        return regions, pages

    return run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--kernel", type=Path, help="vmlinuz (default: newest under captures/kernel/root/boot)")
    ap.add_argument("--image", type=Path, help="use this core instead of booting QEMU (needs --tlb)")
    ap.add_argument("--tlb", type=Path, help="QEMU's info tlb for --image (for the byte-identity check)")
    ap.add_argument("--no-volatility", action="store_true")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-ptdump-") as d:
        tmp = Path(d)
        qemu_times: dict[str, float] = {}
        if args.image:
            core, tlb = args.image, args.tlb.read_bytes().decode() if args.tlb else None
        else:
            kernel = args.kernel or sorted((REPO / "captures/kernel/root/boot").glob("vmlinuz-*"))[-1]
            busybox = kernel.parent.parent / "bin" / "busybox"
            print(f"booting {kernel.name} under qemu-system-x86_64 (TCG, 512 MiB) ...", flush=True)
            qemu_times, tlb, core = qemu_side(kernel, busybox, tmp, args.runs)
        t_in, out = best(lambda: earlymm_inprocess(core), args.runs)
        t_cli, cli_out = best(lambda: earlymm_cli(core), max(3, args.runs // 2))
        leaves = str(out).count("\n")
        pages = mapped_pages(core)
        same = None if tlb is None else (out == tlb and cli_out == tlb.encode())
        vol: tuple[float, tuple[int, int]] | None = None
        if not args.no_volatility:
            with open_image(core) as img:
                cr3 = img.cpus[0].cr3
            t_vol, counts = best(volatility_mapping(core, cr3), max(3, args.runs // 2))
            vol = (t_vol, counts)  # type: ignore[assignment]

    print(f"\nguest: {leaves} present leaves (info tlb lines); best of several passes after a warm-up\n")
    print(f"{'what':58} {'seconds':>9}")
    for name, t in qemu_times.items():
        print(f"{'QEMU ' + name + ' (QMP round trip, C)':58} {t:9.4f}")
    print(f"{'earlymm ptdump --format qemu-tlb, in-process':58} {t_in:9.4f}")
    print(f"{'earlymm ptdump --format qemu-tlb, CLI subprocess':58} {t_cli:9.4f}")
    if vol is not None:
        print(f"{'volatility3 LinuxIntel32e.mapping(0, 2**48)':58} {vol[0]:9.4f}"
              f"   ({vol[1][0]} regions, {vol[1][1]} 4K pages vs earlymm's {pages})")
    print()
    if same is not None:
        print(f"byte-identical to QEMU's info tlb: {'yes' if same else 'NO'}")
    if "info tlb" in qemu_times:
        ratio = t_in / qemu_times["info tlb"]
        print(f"in-process / QEMU info tlb = {ratio:.2f}x  -> target <= 1.5x {'MET' if ratio <= 1.5 else 'NOT MET'}")
        print(f"CLI        / QEMU info tlb = {t_cli / qemu_times['info tlb']:.2f}x  (Python start-up and imports "
              "included)")
    if vol is not None:
        print(f"volatility3 / earlymm in-process = {vol[0] / t_in:.1f}x  -> target faster than volatility3 "
              f"{'MET' if vol[0] > t_in else 'NOT MET'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
