"""What a command loads: each sub-command imports only what the run uses (issue 16: start-up is most of a
command's wall time). Structural, not timed: a fresh interpreter runs the command and lists its modules."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests" / "fixtures" / "qemu-l4" / "core.elf.gz"

RUN = """
import contextlib, io, json, sys
before = set(sys.modules)
from earlymm.cli.main import main
with contextlib.redirect_stdout(io.StringIO()):
    rc = main(sys.argv[1:])
print(json.dumps([rc, sorted(set(sys.modules) - before)]))
"""


def loaded(*argv: str) -> tuple[int, set[str]]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.run([sys.executable, "-c", RUN, *argv], capture_output=True, text=True, env=env, check=True)
    rc, mods = json.loads(p.stdout.splitlines()[-1])
    return rc, set(mods)


@pytest.fixture(scope="module")
def core(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("core") / "core.elf"
    path.write_bytes(gzip.decompress(FIXTURE.read_bytes()))
    return str(path)


def unexpected(mods: set[str], prefixes: tuple[str, ...]) -> list[str]:
    return sorted(m for m in mods if any(m == p or m.startswith(p + ".") for p in prefixes))


def test_translate_loads_neither_the_boot_model_nor_symbols_nor_json(core: str) -> None:
    rc, mods = loaded("translate", core, "0xffffffff81000000")
    assert rc == 0
    assert "earlymm.tools.translate" in mods  # the command did run
    assert not unexpected(mods, ("earlymm.kernel", "earlymm.platform", "earlymm.tools.symbols",
                                 "earlymm.tools.ptdump", "earlymm.tools.gva2gpa", "earlymm.cli.boot_cmd",
                                 "earlymm.images.core_writer", "json", "decimal", "numpy", "tempfile"))


def test_ptdump_qemu_tlb_loads_only_its_format(core: str) -> None:
    rc, mods = loaded("ptdump", core, "--format", "qemu-tlb")
    assert rc == 0
    assert "earlymm.tools.ptdump.qemu" in mods
    assert not unexpected(mods, ("earlymm.kernel", "earlymm.tools.ptdump.linux", "earlymm.tools.ptdump.regions",
                                 "earlymm.tools.ptdump.json_doc", "earlymm.tools.ptdump.audit",
                                 "earlymm.tools.symbols", "earlymm.tools.html", "json", "numpy"))
    # Reading tables needs the control-register rules and the walk plan, not a CPU: no exception
    # delivery, event stream, TLB, MMU or walker (and the fault types only they use).
    assert "earlymm.hw.control" in mods
    assert not unexpected(mods, ("earlymm.hw.cpu", "earlymm.hw.delivery", "earlymm.hw.events", "earlymm.hw.faults",
                                 "earlymm.hw.mmu", "earlymm.hw.tlb", "earlymm.hw.fastwalk", "earlymm.hw.walk",
                                 "earlymm.hw.rights", "earlymm.arch.cpuid", "zlib"))  # zlib: for gzipped cores only


def test_boot_loads_no_xen_i386_html_image_reader_or_numpy() -> None:
    rc, mods = loaded("boot")
    assert rc == 0
    assert "earlymm.kernel.boot" in mods
    # the Xen guest's bug names (for --help) are all of Xen it may load
    assert not unexpected(mods - {"earlymm.kernel.xen", "earlymm.kernel.xen.guest_bugs"},
                          ("earlymm.kernel.xen", "earlymm.platform.xen", "earlymm.kernel.boot_xen",
                           "earlymm.tools.boot_report_xen", "earlymm.kernel.i386.boot", "earlymm.tools.html",
                           "earlymm.tools.midboot", "earlymm.images.qemu_core", "earlymm.images.core_writer", "json",
                           "numpy", "earlymm.kernel.decompressor", "earlymm.kernel.trampoline",
                           "earlymm.tools.e820_input"))


def test_a_boot_compiles_no_specialised_walker() -> None:
    """A boot walks the tables a few dozen times per paging plan (its TLB answers the rest): the MMU's
    tiered walker leaves them to the reference walk rather than compile a walker per plan (~5 ms each)."""
    from earlymm.hw.plan import WalkPlan
    from tests.kernel.conftest import make_boot

    r = make_boot()
    assert r.outcome.value == "booted"
    walkers = r.ctx.platform.mem.walkers
    counts = {k[1]: v[0] for k, v in walkers.items() if isinstance(k, tuple)}
    assert counts and all(0 < n <= 512 for n in counts.values())
    assert not any(isinstance(k, WalkPlan) for k in walkers)
