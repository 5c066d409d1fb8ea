"""Start-up benchmark: earlymm's commands as whole processes, against the Python interpreter's own start-up.

    python bench/bench_startup.py [--runs N] [--image CORE] [--no-compile] [--imports K]

People meet earlymm as a command, so what they wait for is the whole process: interpreter start-up,
imports, the work. Each round runs, one after the other (the order rotating from round to round, so a
burst of load hits all alike), as fresh subprocesses:

* ``python -c pass`` — the peer: the floor any Python command pays;
* ``earlymm --help``; ``earlymm translate CORE VA``; ``earlymm ptdump CORE --format qemu-tlb``;
  ``earlymm boot`` (the default machine).

Wall times are medians over ``--runs`` rounds (the minimum beside it); the ratio column is the median
over rounds of command / ``python -c pass`` in the same round. The interpreter is this one, with
earlymm imported from this checkout. By default the package's bytecode is compiled first
(``compileall``), as an installed package has it: without ``.pyc`` files every start-up compiles every
module again (which is what ``PYTHONDONTWRITEBYTECODE=1`` on an editable install leads to); the
bench says which it measured. Then, for ``earlymm boot``: the modules that cost the most to import
(``-X importtime``, self time, median over the rounds) and the boot itself in-process, so the
difference is visible. Nothing asserts; targets are printed as MET / NOT MET.
"""

from __future__ import annotations

import argparse
import compileall
import gzip
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from benchlib import git_state

REPO = Path(__file__).resolve().parent.parent
DEFAULT_IMAGE = REPO / "captures" / "l4" / "core.elf"
FIXTURE_IMAGE = REPO / "tests" / "fixtures" / "qemu-l4" / "core.elf.gz"
VA = "0xffffffff81000000"  # the kernel text of the l4 capture (nokaslr)
TARGETS = {"translate": 0.25, "boot": 0.25}  # seconds, the issue's


def earlymm(*args: str) -> list[str]:
    # what the console script runs (pyproject's [project.scripts])
    return [sys.executable, "-c", "import sys; from earlymm.cli.main import run; sys.exit(run())", *args]


def run(argv: list[str], env: dict[str, str]) -> float:
    t = time.perf_counter()
    p = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    dt = time.perf_counter() - t
    if p.returncode not in (0, 1):
        raise RuntimeError(f"{' '.join(argv)} exited {p.returncode}: {p.stderr.decode(errors='replace')[-300:]}")
    return dt


def import_costs(env: dict[str, str], runs: int) -> dict[str, list[int]]:
    """Self import time (µs) per module of ``earlymm boot``, one list entry per run."""
    out: dict[str, list[int]] = defaultdict(list)
    for _ in range(runs):
        p = subprocess.run([sys.executable, "-X", "importtime", *earlymm("boot")[1:]], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False)
        for line in p.stderr.splitlines():
            m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|\s*(\S+)", line)
            if m:
                out[m.group(3)].append(int(m.group(1)))
    return out


def boot_in_process(runs: int) -> list[float]:
    """The default machine's boot as the CLI runs it (trace on), without start-up or imports."""
    sys.path.insert(0, str(REPO))
    from earlymm.kernel.boot import boot
    from earlymm.kernel.consts import PROFILES
    from earlymm.kernel.context import KernelConfig, PoolAccess, Variant
    from earlymm.platform.pc import MachineConfig

    times = []
    for _ in range(runs + 1):
        t = time.perf_counter()
        boot(MachineConfig(), KernelConfig(PROFILES["v3.9"], Variant("merged"), PoolAccess("high-map"), 64),
             trace=True)
        times.append(time.perf_counter() - t)
    return times[1:]  # the first pays for lazy set-up


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--image", type=Path, default=None, help=f"core for translate/ptdump (default {DEFAULT_IMAGE}, "
                                                              "else the l4 fixture)")
    ap.add_argument("--no-compile", action="store_true", help="do not compile earlymm's bytecode first")
    ap.add_argument("--imports", type=int, default=12, help="how many of boot's costliest imports to list")
    args = ap.parse_args(argv)

    tmp = tempfile.TemporaryDirectory(prefix="earlymm-startup-")
    image = args.image or (DEFAULT_IMAGE if DEFAULT_IMAGE.exists() else FIXTURE_IMAGE)
    if image.suffix == ".gz":  # what a user points the command at: a plain core
        plain = Path(tmp.name) / image.stem
        with gzip.open(image) as src, open(plain, "wb") as dst:
            shutil.copyfileobj(src, dst)
        image = plain
    if not args.no_compile:
        compileall.compile_dir(str(REPO / "earlymm"), quiet=1)
    pycs = sum(1 for _ in (REPO / "earlymm").rglob("__pycache__/*.pyc"))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    site = next((Path(p) for p in sys.path if p.endswith("site-packages")), REPO)
    finder = [p.name for p in site.glob("__editable__*finder*")]
    print(f"python {sys.version.split()[0]} ({sys.executable}); earlymm at git {git_state()}")
    print(f"bytecode: {'compiled first' if not args.no_compile else 'as found'} ({pycs} .pyc files); "
          f"PYTHONDONTWRITEBYTECODE={os.environ.get('PYTHONDONTWRITEBYTECODE', '')!r}; "
          + (f"editable-install import hook present ({finder[0]}: every start-up imports it)" if finder
             else "no editable-install import hook"))
    print(f"core for translate/ptdump: {image}")

    cmds = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "earlymm --help": earlymm("--help"),
        "translate": earlymm("translate", str(image), VA),
        "ptdump": earlymm("ptdump", str(image), "--format", "qemu-tlb"),
        "boot": earlymm("boot"),
    }
    for argv in cmds.values():  # warm-up: the page cache, and bytecode if it is written on first import
        run(argv, env)
    times: dict[str, list[float]] = {k: [] for k in cmds}
    names = list(cmds)
    for rnd in range(args.runs):
        k = rnd % len(names)
        for name in names[k:] + names[:k]:
            times[name].append(run(cmds[name], env))

    base = times["python -c pass"]
    print(f"\n{args.runs} rounds, rotated order, fresh processes; wall time\n")
    print(f"{'command':<18} {'median s':>9} {'min s':>8} {'÷ python -c pass':>17}")
    for name, ts in times.items():
        ratio = statistics.median(t / b for t, b in zip(ts, base, strict=True))
        print(f"{name:<18} {statistics.median(ts):9.3f} {min(ts):8.3f} {ratio:16.1f}×")

    costs = import_costs(env, max(3, args.runs // 3))
    total = sum(statistics.median(v) for v in costs.values())
    mine = sum(statistics.median(v) for k, v in costs.items() if k.startswith("earlymm"))
    print(f"\nearlymm boot's imports (-X importtime, self time, median of {max(3, args.runs // 3)} runs): "
          f"{total / 1e3:.0f} ms in all, {mine / 1e3:.0f} ms in earlymm's own modules; the costliest:")
    for name, v in sorted(costs.items(), key=lambda kv: -statistics.median(kv[1]))[:args.imports]:
        print(f"  {statistics.median(v) / 1e3:7.1f} ms  {name}")
    inproc = boot_in_process(5)
    print(f"the boot itself, in-process (trace on, as the CLI): median {statistics.median(inproc):.3f} s")

    print("\ntargets (issue): earlymm translate CORE VA and earlymm boot each under 0.25 s wall (medians)")
    for name, limit in TARGETS.items():
        m = statistics.median(times[name])
        print(f"  {name}: {m:.3f} s -> {'MET' if m < limit else 'NOT MET'}")
    print("  ptdump as a process against QEMU's info tlb: see bench_ptdump.py (needs a live guest)")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
