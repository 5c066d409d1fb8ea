"""``earlymm-translate`` and ``earlymm-ptdump`` in a real gdb on a real kernel booting under QEMU,
against QEMU itself.

The guest is stopped at three points, and at each one the test asks QEMU over QMP (``info registers``,
``info tlb``, ``gva2gpa``) while gdb holds the guest stopped, then lets gdb run the earlymm commands on
that same instant:

* ``early``: the first instruction of the kernel proper (``startup_64`` at its physical load address,
  reached by the decompressor's jump), on the decompressor's identity map;
* ``kernel``: the first instruction in the kernel half, on the kernel's own early page tables: the
  kernel image is mapped high but there is no direct map, so gdb itself cannot read the tables through
  the kernel's addresses — earlymm reads them physically;
* ``late``: the booted system (``/init`` running), attached afresh.

At each point ``earlymm-ptdump --format qemu-tlb`` (and ``qemu-mem`` for 4-level) must also reproduce
QEMU's ``info tlb`` / ``info mem`` byte for byte.

Bounded waits everywhere; QEMU and gdb are always killed. Needs qemu-system-x86_64, gdb and the Debian
kernel and busybox under captures/kernel (``python -m earlymm.tools.qemu_capture --fetch-kernel
captures/kernel``).
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from earlymm.images.monitor_text import choose_samples, parse_gva2gpa_reply, parse_info_tlb
from earlymm.images.qmp import Qmp
from earlymm.tools.gdb import script_path
from earlymm.tools.initramfs import READY, build_initramfs
from tests.qemu_support import need_tools

REPO = Path(__file__).resolve().parents[2]
KERNEL_DIR = REPO / "captures" / "kernel" / "root"
HELPER = Path(__file__).resolve().with_name("live_helper.py")
MEM = "512M"
MEM_BYTES = 512 << 20
ADDR_BITS = 0x000F_FFFF_FFFF_F000
TIMEOUT = 300.0


def _kernel() -> tuple[Path, Path, int] | None:
    """(vmlinuz, busybox, physical address of startup_64 under nokaslr) if everything is there."""
    kernels = sorted((KERNEL_DIR / "boot").glob("vmlinuz-*"))
    busybox = KERNEL_DIR / "bin" / "busybox"
    if not kernels or not busybox.is_file():
        return None
    # Without KASLR the decompressor puts the kernel at CONFIG_PHYSICAL_START and jumps to its first
    # byte, startup_64. (Debian's System.map is a stub, so the config is the place to look.)
    start = 0x1000000
    config = KERNEL_DIR / "boot" / kernels[-1].name.replace("vmlinuz-", "config-")
    if config.is_file():
        m = re.search(r"^CONFIG_PHYSICAL_START=(0x[0-9a-f]+)$", config.read_text(), re.M)
        start = int(m[1], 16) if m else start
    return kernels[-1], busybox, start


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(what: str, done: Callable[[], bool], procs: list[subprocess.Popen[bytes]], logs: list[Path],
          timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        dead = [p for p in procs if p.poll() is not None]
        if dead or time.monotonic() > deadline:
            tails = "\n".join(f"--- {p.name}:\n{p.read_text(errors='replace')[-3000:]}" for p in logs if p.exists())
            why = f"{dead[0].args!r:.60} exited with {dead[0].returncode}" if dead else f"{timeout:.0f} s passed"
            pytest.fail(f"waiting for {what}: {why}\n{tails}")
        time.sleep(0.05)


def _gdb(port: int, steps: list[str], log: Path) -> subprocess.Popen[bytes]:
    cmd = ["gdb", "-batch", "-nx", "-ex", f"target remote 127.0.0.1:{port}", "-ex", f"source {script_path()}",
           "-ex", f"source {HELPER}"]
    for s in steps:
        cmd += ["-ex", s]
    with open(log, "wb") as f:
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT)


class Stage:
    """One stopped instant: QEMU's answers over QMP, then earlymm's through gdb."""

    def __init__(self, name: str, tmp: Path, q: Qmp, la57: bool) -> None:
        self.name, self.tmp, self.q, self.la57 = name, tmp, q, la57

    def run(self, procs: list[subprocess.Popen[bytes]], logs: list[Path]) -> dict[str, Any]:
        base = self.tmp / self.name
        _wait(f"gdb to stop at {self.name}", lambda: Path(f"{base}.stopped").exists(), procs, logs)
        regs = self.q.hmp("info registers")
        cr3 = int(re.search(r"CR3=([0-9a-f]+)", regs)[1], 16)  # type: ignore[index]
        rip = int(re.search(r"RIP=([0-9a-f]+)", regs)[1], 16)  # type: ignore[index]
        direct = (0xFF11000000000000 if self.la57 else 0xFFFF888000000000) + (cr3 & ADDR_BITS)
        tlb = self.q.hmp("info tlb")
        # QEMU 7.2's 5-level info mem prints nothing, after tens of seconds spent walking non-present
        # entries (its inverted present test): only worth asking for 4-level.
        mem = "" if self.la57 else self.q.hmp("info mem")
        samples = choose_samples(parse_info_tlb(tlb), self.la57, MEM_BYTES, limit=200)
        vas = sorted({*samples, rip, direct, cr3 & ADDR_BITS})
        want = {va: parse_gva2gpa_reply(self.q.hmp(f"gva2gpa {va:#x}")) for va in vas}
        cmds = [
            # gva2gpa checks no permissions; a CPL 0 read with EFLAGS.AC=1 is refused by nothing here.
            "earlymm-translate --json --ac " + " ".join(f"{va:#x}" for va in vas),
            "earlymm-translate $pc --access exec",
            "maintenance packet qqemu.PhyMemMode",
            f"x/1gx {direct:#x}",  # gdb's own (virtual) read of the tables through the direct map
            f"earlymm-ptdump --format qemu-tlb --output {base}.tlb",
            f"earlymm-ptdump --format qemu-mem --output {base}.mem",
            "maintenance packet qqemu.PhyMemMode",
            "earlymm-ptdump --check-wx",  # with to_string, its stderr log lands in the same text
        ]
        Path(f"{base}.cmds.tmp").write_text("\n".join(cmds) + "\n")
        Path(f"{base}.cmds.tmp").replace(f"{base}.cmds")
        _wait(f"gdb to run the {self.name} commands", lambda: Path(f"{base}.out.json").exists(), procs, logs)
        out = json.loads(Path(f"{base}.out.json").read_text())
        assert [r.get("error") for r in out[:3]] == [None] * 3, out
        results = json.loads(out[0]["out"])
        bad = []
        for va, got in zip(vas, results, strict=True):
            assert int(got["va"], 16) == va
            # Same instant: every walk starts at the CR3 QEMU reports (non-canonical VAs do not walk).
            assert not got["levels"] or int(got["levels"][0]["table"], 16) == cr3 & ADDR_BITS
            if want[va] is None:
                if got["ok"] or got["fault"]["vector"] not in (13, 14):
                    bad.append(f"{va:#x}: QEMU Unmapped, earlymm {got['pa']}")
            elif got["pa"] != f"{want[va]:#x}":
                bad.append(f"{va:#x}: QEMU {want[va]:#x}, earlymm {got['pa']} {got['fault']}")
        assert bad == [], f"{self.name}: {len(bad)} of {len(vas)} disagree:\n" + "\n".join(bad[:20])
        assert want[rip] is not None and f"=> pa {want[rip]:#x} " in out[1]["out"], out[1]
        assert 'received: "0"' in out[2]["out"], out[2]  # the stub is back in virtual mode
        # The whole address space, byte for byte as QEMU prints it (QEMU 7.2's info mem is empty for
        # 5-level guests: its inverted present test).
        assert [r.get("error") for r in out[4:]] == [None] * 4, out[4:]
        assert Path(f"{base}.tlb").read_text() == tlb.replace("\r\n", "\n")
        if not self.la57:
            assert Path(f"{base}.mem").read_text() == mem.replace("\r\n", "\n")
        assert 'received: "0"' in out[6]["out"], out[6]
        return {"cr3": cr3, "rip": rip, "direct": direct, "want": want, "out": out, "n": len(vas)}


@pytest.mark.slow
@pytest.mark.qemu
@pytest.mark.parametrize("cpu", [pytest.param("qemu64", marks=pytest.mark.ci_qemu), "qemu64,+la57"])
def test_live_guest_against_qemu(cpu: str, tmp_path: Path) -> None:
    need_tools("qemu-system-x86_64", "gdb")
    found = _kernel()
    assert found is not None
    kernel, busybox, startup_64 = found
    la57 = "la57" in cpu
    initrd, console, sock = tmp_path / "initramfs.cpio.gz", tmp_path / "console.log", tmp_path / "qmp.sock"
    initrd.write_bytes(build_initramfs(busybox))
    port = _free_port()
    qemu_log, gdb_log, gdb2_log = tmp_path / "qemu.log", tmp_path / "gdb-boot.log", tmp_path / "gdb-late.log"
    logs = [qemu_log, gdb_log, gdb2_log, console]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with open(qemu_log, "wb") as f:
            procs.append(subprocess.Popen(
                ["qemu-system-x86_64", "-machine", "pc", "-accel", "tcg", "-cpu", cpu, "-m", MEM, "-smp", "1",
                 "-nodefaults", "-display", "none", "-no-reboot", "-kernel", str(kernel), "-initrd", str(initrd),
                 "-append", "console=ttyS0 panic=-1 nokaslr", "-serial", f"file:{console}",
                 "-qmp", f"unix:{sock},server=on,wait=off", "-S", "-gdb", f"tcp:127.0.0.1:{port}"],
                stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT))
        qemu = procs[0]
        with Qmp(str(sock), timeout=60) as q:
            procs.append(_gdb(port, [
                f"hbreak *{startup_64:#x}", "continue", f"test-checkpoint early {tmp_path}",
                "delete", "test-step-to-high-half", f"test-checkpoint kernel {tmp_path}",
            ], gdb_log))
            early = Stage("early", tmp_path, q, la57).run([qemu, procs[-1]], logs)
            assert early["rip"] == startup_64
            kern = Stage("kernel", tmp_path, q, la57).run([qemu, procs[-1]], logs)
            for stage in (early, kern):
                # No direct map yet: QEMU and earlymm agree the tables' direct-map alias is unmapped,
                # and gdb cannot read it — earlymm's walk did not need it.
                assert stage["want"][stage["direct"]] is None
                assert "Cannot access memory" in stage["out"][3].get("error", ""), stage["out"][3]
            assert kern["cr3"] != early["cr3"] and kern["rip"] >> 63
            assert procs[-1].wait(timeout=60) == 0  # gdb detaches; the guest boots on
            _wait("/init", lambda: READY in console.read_text(errors="replace"), [qemu], logs)
            procs.append(_gdb(port, [f"test-checkpoint late {tmp_path}"], gdb2_log))
            late = Stage("late", tmp_path, q, la57).run([qemu, procs[-1]], logs)
            # Booted: the direct map exists, and both sides see the tables through it.
            assert late["want"][late["direct"]] == late["cr3"] & ADDR_BITS
            # The W+X audit of the live tables reaches the kernel's own boot-time verdict.
            verdict = re.search(r"x86/mm: Checked W\+X mappings: .*", console.read_text(errors="replace"))
            assert verdict is not None
            assert f"earlymm-ptdump: {verdict[0].strip()}" in late["out"][7]["out"].splitlines(), late["out"][7]
            assert procs[-1].wait(timeout=60) == 0
            assert late["n"] > 100 and early["n"] > 20
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.kill()
            p.wait(timeout=30)
