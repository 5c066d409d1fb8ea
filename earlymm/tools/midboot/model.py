"""The model on the machine a fixture describes: ``earlymm boot`` arguments, and one run's result.

The inputs are what the real kernel was given or said, never what it did: the e820 map it printed
(``user:`` after ``mem=``/``memmap=``, else ``BIOS-e820:``), the ramdisk and command-line addresses from
``boot_params``, the zero page's address (RDI at ``x86_64_start_kernel``), the image size ``_end − _text``
from kallsyms, the load address QEMU translates ``_text`` to, and the CPU's features as QEMU reports them.
The model runs as a separate process (``python -m earlymm boot``), exactly as a user would run it.

A CPU with LA57 boots the model with ``--paging 5``: QEMU's ``-kernel`` enters the decompressor's
``startup_32``, which builds a 4-level identity map and enters long mode (``--loader-paging 4``), and its
``startup_64`` calls 6.1's ``configure_5level_paging`` (``--decompressor merged``), which places its
trampoline from the BIOS data area words the capture read (``--bda-base``, ``--ebda``) and the zero page's
e820 table. ``no5lvl`` on the command line reaches the model's decompressor through ``--cmdline``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from earlymm.images import ImageError, open_image
from earlymm.tools.midboot.fixture import Fixture, FixtureError, TableMemory
from earlymm.tools.midboot.roles import Roles

PROFILE = "current"
TRAMPOLINE_NOTE = re.compile(r"configure_5level_paging: trampoline at (0x[0-9a-f]+)")


class ModelError(Exception):
    pass


def e820_text(fx: Fixture) -> str:
    """The ``--e820`` file: ``START END TYPE`` per line, END exclusive, in the model's type names — the
    firmware's map as the zero page held it; ``mem=``/``memmap=`` on the command line edit it in the model's
    kernel as in the real one."""
    lines = [f"# {fx.name}: the BIOS-e820 map Linux printed ({fx.meta['kernel_release']})"]
    lines += [f"{e.start:#x} {e.end:#x} {e.model_kind}" for e in fx.firmware_e820]
    return "\n".join(lines) + "\n"


def symbols_text(fx: Fixture) -> str:
    """The ``--kernel-symbols`` file: the fixture's symbols in /proc/kallsyms form."""
    return "".join(f"{int(a, 16):016x} t {n}\n" for n, a in sorted(fx.meta["symbols"].items()))


def boot_args(fx: Fixture, e820_file: str | Path, symbols_file: str | Path) -> list[str]:
    """``earlymm boot`` arguments (without ``--until``/``--save-core``) for the fixture's machine: its
    firmware e820 map, the real build's symbol layout, the loader's placements, the CPU's identity."""
    m = fx.machine
    rd_at, rd_size = m["ramdisk"]
    args = ["boot", "--profile", PROFILE, "--e820", str(e820_file), "--kernel-at", m["load_address"],
            "--kernel-symbols", str(symbols_file), "--ramdisk", f"{rd_at}:{rd_size}",
            "--cmdline", m["cmdline"], "--cmdline-at", m["cmd_line_ptr"]]
    if m.get("boot_params_at"):
        args += ["--boot-params-at", m["boot_params_at"]]
    args += [flag for flag, have in (("--no-gbpages", m["gbpages"]), ("--no-nx", m["nx"]), ("--no-pge", m["pge"]))
             if not have]
    f = fx.meta["cpu_features"]
    args += ["--cpu-vendor", {"GenuineIntel": "intel", "AuthenticAMD": "amd"}[f["vendor"]],
             "--cpu-family", hex(f["family"]), "--cpu-model", hex(f["model"]), "--cpu-stepping", hex(f["stepping"])]
    if f["hypervisor"]:
        args.append("--hypervisor")
    if m.get("la57"):
        bda = m.get("bios_data_area")
        if not bda:
            raise ModelError(f"{fx.name}: a CPU with LA57 but no BIOS data area recorded (re-capture it): the "
                             "decompressor's trampoline placement needs the words at 0x40e and 0x413")
        args += ["--paging", "5", "--decompressor", "merged", "--loader-paging", "4",
                 "--bda-base", hex(bda["base_mem_kib"]), "--ebda", hex(bda["ebda_segment"])]
    return args


@dataclass(frozen=True)
class ModelStop:
    """What one ``earlymm boot --until PHASE --save-core`` run left."""

    until: str
    outcome: str
    reason: str
    state: dict[str, Any]  # boot_report.machine_state
    memory: TableMemory
    report: dict[str, Any]

    @property
    def regs(self) -> tuple[int, int, int, int]:
        s = self.state
        return int(s["cr0"], 16), int(s["cr3"], 16), int(s["cr4"], 16), int(s["efer"], 16)

    @property
    def roots(self) -> dict[str, int]:
        return {"cr3": self.regs[1], "early_top_pgt": int(self.state["early_top_pgt"], 16),
                "init_top_pgt": int(self.state["init_top_pgt"], 16)}

    @property
    def next_early_pgt(self) -> int:
        return int(self.state["next_early_pgt"], 16)

    @property
    def roles(self) -> Roles | None:
        syms = self.state.get("symbols")
        if not isinstance(syms, dict):
            return None
        return Roles.from_symbols({k: int(v, 16) for k, v in syms.items()}, int(self.state["phys_base"], 16),
                                  int(self.report.get("stats", {}).get("pool_size", 64)))

    @property
    def trampoline(self) -> int | None:
        """Where the model's ``configure_5level_paging`` put its trampoline (from its timeline), or ``None``
        when it switched nothing."""
        for e in self.report.get("events", []):
            m = TRAMPOLINE_NOTE.match(str(e.get("what", ""))) if e.get("event") == "note" else None
            if m:
                return int(m[1], 16)
        return None

    @property
    def page_faults(self) -> list[int]:
        """CR2 of every #PF the model raised, in order (from its event trace)."""
        return [int(e["cr2"], 16) for e in self.report.get("events", [])
                if e.get("event") == "fault_raised" and int(e.get("vector", -1)) == 14]


def run_model(fx: Fixture, until: str, workdir: Path, *, timeout: float = 600) -> ModelStop:
    """Run the model to ``until`` on the fixture's machine and read back its core and report."""
    workdir.mkdir(parents=True, exist_ok=True)
    e820, syms = workdir / f"{fx.name}.e820", workdir / f"{fx.name}.kallsyms"
    e820.write_text(e820_text(fx))
    syms.write_text(symbols_text(fx))
    core = workdir / f"{fx.name}.{until}.core"
    cmd = [sys.executable, "-m", "earlymm", *boot_args(fx, e820, syms), "--until", until, "--save-core", str(core),
           "--json", "--trace"]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ModelError(f"earlymm boot: {e}") from None
    if r.returncode not in (0, 1):
        raise ModelError(f"earlymm boot exited {r.returncode}: {r.stderr.strip()[-400:]}")
    try:
        report = json.loads(r.stdout)
        with open_image(core, kind="core") as img:
            pages = {pfn: bytes(img.frame(pfn) or b"") for lo, hi in img.ranges() for pfn in range(lo >> 12, hi >> 12)}
    except (ValueError, ImageError, OSError) as e:
        raise ModelError(f"earlymm boot --until {until}: {e}") from None
    if "machine_state" not in report:
        raise FixtureError("earlymm boot --json has no machine_state (an older earlymm?)")
    syms = report["machine_state"].get("symbols")
    if isinstance(syms, dict) and "level4_kernel_pgt" in fx.meta["symbols"]:
        # boot --json does not name level4_kernel_pgt; --kernel-symbols put the model's where the build has it
        syms.setdefault("level4_kernel_pgt", fx.meta["symbols"]["level4_kernel_pgt"])
    return ModelStop(until, report["outcome"], report["reason"], report["machine_state"], TableMemory(pages), report)
