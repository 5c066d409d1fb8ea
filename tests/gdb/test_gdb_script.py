"""``earlymm gdb-script`` and sourcing the command file in the real gdb (no QEMU needed)."""

from __future__ import annotations

import shutil
import subprocess
from importlib import resources
from pathlib import Path

import pytest

from earlymm.cli.main import main


def test_gdb_script_prints_the_shipped_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["gdb-script"]) == 0
    out, err = capsys.readouterr()
    path = Path(out.strip())
    assert err == "" and out.endswith("\n") and out.count("\n") == 1
    assert path.is_absolute() and path.is_file() and path.suffix == ".py"  # gdb sources .py as Python
    assert path == Path(str(resources.files("earlymm.tools.gdb") / "earlymm_gdb.py")).resolve()


def test_gdb_script_takes_no_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["gdb-script", "extra"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


@pytest.mark.skipif(shutil.which("gdb") is None, reason="needs gdb")
def test_real_gdb_sources_the_file(capsys: pytest.CaptureFixture[str]) -> None:
    """gdb's embedded Python (not necessarily this one) loads the package from the file's location."""
    main(["gdb-script"])
    script = capsys.readouterr().out.strip()
    r = subprocess.run(["gdb", "-batch", "-nx", "-ex", f"source {script}", "-ex", "help earlymm-translate",
                        "-ex", "help earlymm-ptdump", "-ex", "earlymm-translate 0x1000"],
                       capture_output=True, text=True, timeout=60, check=False, cwd="/")
    assert "Translate guest virtual addresses" in r.stdout, r.stderr
    assert "List every present mapping" in r.stdout, r.stderr
    # gdb's Python may lack a dependency: then sourcing says so in one line and nothing else breaks.
    err = [ln for ln in r.stderr.splitlines() if ln.strip()]
    if any(ln.startswith("earlymm: ") for ln in err):
        assert len(err) == 2 and "cannot import" in err[0], r.stderr
    else:
        # Not attached to anything: one line, no traceback.
        assert len(err) == 1 and err[0].startswith("earlymm-translate: cannot read the vCPU's registers ("), r.stderr
        assert err[0].endswith("(target remote HOST:PORT) with the guest stopped")
