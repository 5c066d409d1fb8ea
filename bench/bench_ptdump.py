"""ptdump benchmark: a full ``--format qemu-tlb`` dump of a real guest against QEMU's own ``info tlb`` on the
same guest, and against volatility3's ``mapping()`` over the same address space, side by side in one run.

    python bench/bench_ptdump.py [--runs N] [--kernel VMLINUZ] [--image CORE --tlb TLB.TXT] [--no-volatility]

By default it boots a Debian kernel under ``qemu-system-x86_64`` (TCG, 512 MiB, as the capture tool does),
stops it at /init and dumps its memory. Then, with the guest still stopped, each of ``--runs`` rounds
times (in an order that rotates from round to round, so a burst of load hits every row alike) QEMU's
``info tlb`` and ``info mem`` over QMP, with a client that only reads the socket (the time from sending
the command to the last byte of the reply), and earlymm on the core:

* in-process: open the core, set up the CPU, read the tables, render ``info tlb`` (what a library user
  pays; Python startup and imports excluded);
* CLI: ``python -m earlymm ptdump CORE --format qemu-tlb --crlf`` as a subprocess, end to end;

and checks the output is byte-identical to QEMU's reply. volatility3 gets the same core through its own
ELF layer under ``LinuxIntel32e``; its ``mapping(0, 2**48)`` is drained and its pages counted. Figures
are medians after one warm-up; ratios are medians of the per-round ratios. earlymm's bytecode is
compiled first, as an installed package has it. Nothing asserts on time; it only reports.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import socket
import statistics
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


class Guest:
    """A Debian kernel under qemu-system-x86_64 (TCG, 512 MiB) stopped at /init, with its core dumped."""

    def __init__(self, kernel: Path, busybox: Path, tmp: Path) -> None:
        initrd = tmp / "initramfs.cpio.gz"
        initrd.write_bytes(build_initramfs(busybox))
        sock, console, self.core = str(tmp / "qmp.sock"), tmp / "console.log", tmp / "core.elf"
        cmd = ["qemu-system-x86_64", "-machine", "pc", "-accel", "tcg", "-cpu", "qemu64", "-m", "512M", "-smp", "1",
               "-nodefaults", "-display", "none", "-no-reboot", "-kernel", str(kernel), "-initrd", str(initrd),
               "-append", "console=ttyS0 panic=-1 nokaslr", "-serial", f"file:{console}",
               "-qmp", f"unix:{sock},server=on,wait=off"]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        try:
            start = time.monotonic()
            while READY not in (console.read_text(errors="replace") if console.exists() else ""):
                if self.proc.poll() is not None or time.monotonic() - start > 300:
                    raise RuntimeError(f"guest did not reach /init; see {console}")
                time.sleep(0.2)
            self.qmp = RawQmp(sock)
            self.qmp.call("stop")
            self.qmp.call("dump-guest-memory", paging=False, protocol=f"file:{self.core}", format="elf")
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        try:
            if self.proc.poll() is None and hasattr(self, "qmp"):
                self.qmp.call("quit")
            self.proc.wait(timeout=30)
        except (OSError, RuntimeError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()


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


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--kernel", type=Path, help="vmlinuz (default: newest under captures/kernel/root/boot)")
    ap.add_argument("--image", type=Path, help="use this core instead of booting QEMU (needs --tlb)")
    ap.add_argument("--tlb", type=Path, help="QEMU's info tlb for --image (for the byte-identity check)")
    ap.add_argument("--no-volatility", action="store_true")
    args = ap.parse_args()
    compileall.compile_dir(str(REPO / "earlymm"), quiet=1)  # as an installed package has its bytecode

    with tempfile.TemporaryDirectory(prefix="bench-ptdump-") as d:
        tmp = Path(d)
        guest: Guest | None = None
        if args.image:
            core, tlb = args.image, args.tlb.read_bytes().decode() if args.tlb else None
        else:
            kernel = args.kernel or sorted((REPO / "captures/kernel/root/boot").glob("vmlinuz-*"))[-1]
            busybox = kernel.parent.parent / "bin" / "busybox"
            print(f"booting {kernel.name} under qemu-system-x86_64 (TCG, 512 MiB) ...", flush=True)
            guest = Guest(kernel, busybox, tmp)
            core = guest.core
        try:
            jobs: dict[str, Callable[[], object]] = {}
            if guest is not None:
                q = guest.qmp
                jobs["QEMU info tlb (QMP round trip, C)"] = lambda: q.hmp("info tlb")
                jobs["QEMU info mem (QMP round trip, C)"] = lambda: q.hmp("info mem")
            jobs["earlymm ptdump --format qemu-tlb, in-process"] = lambda: earlymm_inprocess(core)
            jobs["earlymm ptdump --format qemu-tlb, CLI process"] = lambda: earlymm_cli(core)
            answers = {name: fn() for name, fn in jobs.items()}  # warm-up: page cache, QEMU's first reply
            times: dict[str, list[float]] = {name: [] for name in jobs}
            names = list(jobs)
            for rnd in range(args.runs):  # rounds rotate the order, so load hits every row alike
                k = rnd % len(names)
                for name in names[k:] + names[:k]:
                    times[name].append(timed(jobs[name])[0])
        finally:
            if guest is not None:
                guest.close()
        if guest is not None:
            tlb = str(answers["QEMU info tlb (QMP round trip, C)"])
        out = str(answers["earlymm ptdump --format qemu-tlb, in-process"])
        cli_out = answers["earlymm ptdump --format qemu-tlb, CLI process"]
        leaves = out.count("\n")
        pages = mapped_pages(core)
        same = None if tlb is None else (out == tlb and cli_out == tlb.encode())
        vol: tuple[float, tuple[int, int]] | None = None
        if not args.no_volatility:
            with open_image(core) as img:
                cr3 = img.cpus[0].cr3
            run = volatility_mapping(core, cr3)
            run()
            vol_times, counts = [], (0, 0)
            for _ in range(max(3, args.runs // 2)):
                dt, counts = timed(run)  # type: ignore[assignment]
                vol_times.append(dt)
            vol = (statistics.median(vol_times), counts)

    print(f"\nguest: {leaves} present leaves (info tlb lines); {args.runs} rounds after a warm-up, rotated order; "
          "median seconds\n")
    print(f"{'what':58} {'median s':>9} {'min s':>8}")
    for name, ts in times.items():
        print(f"{name:58} {statistics.median(ts):9.4f} {min(ts):8.4f}")
    if vol is not None:
        print(f"{'volatility3 LinuxIntel32e.mapping(0, 2**48)':58} {vol[0]:9.4f}"
              f"   ({vol[1][0]} regions, {vol[1][1]} 4K pages vs earlymm's {pages})")
    print()
    if same is not None:
        print(f"byte-identical to QEMU's info tlb (in-process and CLI): {'yes' if same else 'NO'}")
    qkey = "QEMU info tlb (QMP round trip, C)"
    if qkey in times:
        def ratio(name: str) -> float:
            return statistics.median(a / b for a, b in zip(times[name], times[qkey], strict=True))

        cli = ratio("earlymm ptdump --format qemu-tlb, CLI process")
        print(f"CLI process / QEMU info tlb = {cli:.2f}x (median of per-round ratios; Python start-up and imports "
              f"included)  -> target <= 1.5x {'MET' if cli <= 1.5 else 'NOT MET'}")
        print(f"in-process  / QEMU info tlb = {ratio('earlymm ptdump --format qemu-tlb, in-process'):.2f}x")
    t_in = statistics.median(times["earlymm ptdump --format qemu-tlb, in-process"])
    if vol is not None:
        print(f"volatility3 / earlymm in-process = {vol[0] / t_in:.1f}x  -> target faster than volatility3 "
              f"{'MET' if vol[0] > t_in else 'NOT MET'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
