"""Stopping a QEMU guest at code addresses with gdb's hardware breakpoints, one instant at a time.

Shared by the mid-boot capture of a native kernel (``midboot``) and of a Xen PV dom0 (``xencap``). QEMU
starts paused (``-S``) with its gdbstub on a loopback port. gdb (batch mode, no script of ours inside it)
connects, sets one ``hbreak`` per stop, and for each stop runs ``continue`` and then a shell handshake: it
creates ``stop.N`` and waits for ``go.N``. While gdb waits, the guest is stopped and the capture reads it
over QMP. Under TCG a gdb breakpoint matches the virtual RIP whatever CR3 and the privilege level are, so
the caller checks that a stop is in the context it meant (a native kernel, or a PV guest under Xen).
"""

from __future__ import annotations

import shlex
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from earlymm.images.qmp import Qmp

# QEMU's qom properties of CPU 0 worth keeping with a capture
FEATURES = ("pdpe1gb", "nx", "pge", "pse", "la57", "smep", "smap", "pku", "pcid", "lm", "phys-bits", "vendor",
            "family", "model", "stepping", "hypervisor")


class StopError(Exception):
    """QEMU or gdb died, or a stop did not come in time; the message ends with the logs' tails."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def gdb_command(port: int, addrs: list[int], sync: Path, wait_s: int,
                after_first: list[str] | None = None) -> list[str]:
    """gdb's whole part, as ``-ex`` commands: a hardware breakpoint per address, then per stop ``continue``
    and the handshake. ``after_first`` are gdb commands run once the first stop is released (e.g. a
    ``dprintf`` that only makes sense once the guest runs at its own addresses)."""
    cmd = ["gdb", "-batch", "-nx", "-ex", "set pagination off", "-ex", "set confirm off",
           "-ex", f"target remote 127.0.0.1:{port}"]
    cmd += [a for addr in addrs for a in ("-ex", f"hbreak *{addr:#x}")]
    for i in range(len(addrs)):
        stop, go = shlex.quote(str(sync / f"stop.{i}")), shlex.quote(str(sync / f"go.{i}"))
        cmd += ["-ex", "continue", "-ex", f"shell touch {stop}; n=0; while [ ! -e {go} ] && [ $n -lt "
                f"{wait_s * 10} ]; do sleep 0.1; n=$((n+1)); done"]
        if i == 0:
            cmd += [a for c in after_first or [] for a in ("-ex", c)]
    return cmd


def tail(*paths: Path, size: int = 1500) -> str:
    return "\n".join(f"--- {p.name}: {p.read_text(errors='replace')[-size:]}" for p in paths if p.exists())


def wait_file(path: Path, procs: list[subprocess.Popen[bytes]], timeout: float, logs: list[Path]) -> None:
    """Wait for gdb's ``stop.N``; a process that exits first, or the timeout, is a ``StopError``."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        dead = [p for p in procs if p.poll() is not None]
        if dead:
            args = dead[0].args
            name = Path(str(args[0] if isinstance(args, list) else args)).name
            raise StopError(f"{name} exited ({dead[0].returncode}) before {path.name}\n{tail(*logs)}")
        if time.monotonic() > deadline:
            raise StopError(f"no {path.name} within {timeout:.0f} s\n{tail(*logs)}")
        time.sleep(0.05)


def cpu_features(q: Qmp) -> dict[str, Any]:
    """The CPU's own properties as QEMU reports them (qom-get on CPU 0)."""
    path = q.command("query-cpus-fast")[0]["qom-path"]
    return {f: q.command("qom-get", path=path, property=f) for f in FEATURES}


def kill_all(procs: list[subprocess.Popen[bytes]]) -> None:
    """Kill what is still running, last started first, and reap everything."""
    for p in reversed(procs):
        if p.poll() is None:
            p.kill()
        p.wait(timeout=30)
