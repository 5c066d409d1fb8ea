"""earlymm's gdb command file: ``source`` it in gdb attached to QEMU's gdbstub.

    $ qemu-system-x86_64 ... -s -S            # or -gdb tcp:127.0.0.1:PORT
    $ gdb -ex 'target remote :1234' -ex "source $(earlymm gdb-script)"
    (gdb) earlymm-translate 0xffffffff81000000 --access exec
    (gdb) earlymm-translate $pc --json
    (gdb) earlymm-ptdump --format qemu-tlb --output /tmp/tlb.txt

gdb runs this file as a script in its own embedded Python, which need not be the Python earlymm was
installed into. So the file finds the package from its own location instead of relying on sys.path,
and everything it defines lives inside functions, leaving gdb's ``__main__`` namespace nearly as it
was. This file must stay parseable by old Pythons: its first job is to say clearly when gdb's Python is
too old for earlymm.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

MIN_PYTHON = (3, 10)

# (gdb command, "module:function" doing the work, gdb help text: first line, then details)
COMMANDS = (
    ("earlymm-translate", "earlymm.tools.gdb.commands:translate",
     "Translate guest virtual addresses by walking the live guest's page tables.\n"
     "Usage: earlymm-translate VA... [--access read|write|exec] [--cpl 0|3] [--json]\n"
     "Reads CR0/CR3/CR4/EFER from the vCPU and the tables from guest-physical memory\n"
     "(QEMU's physical-memory mode), so it works before the kernel has a direct map.\n"
     "VA may be a gdb expression ($pc), or with --symbols FILE (kallsyms, System.map,\n"
     "vmlinux) a symbol of FILE, slid by the KASLR offset the live tables show.\n"
     "See earlymm-translate --help for all options."),
    ("earlymm-ptdump", "earlymm.tools.gdb.dump:ptdump",
     "List every present mapping of the live guest's address space.\n"
     "Usage: earlymm-ptdump [--format linux|qemu-tlb|qemu-mem|json] [--check-wx] [--symbols FILE]\n"
     "                      [--output FILE]\n"
     "Reads the vCPU's registers and every page table from guest-physical memory\n"
     "(QEMU's physical-memory mode), so it works before the kernel has a direct map.\n"
     "See earlymm-ptdump --help for all options."),
)


def _earlymm_gdb_setup(here: str) -> None:
    gdb: Any = importlib.import_module("gdb")  # gdb's own module; it has no type stubs
    # .../<root>/earlymm/tools/gdb/earlymm_gdb.py: the package's parent is three levels above this dir.
    root = os.path.dirname(os.path.dirname(os.path.dirname(here)))
    run_command = _invoke  # bound now: the commands must not depend on names left in gdb's __main__
    problems = []

    def make(name: str, entry: str, doc: str) -> None:
        unavailable = _import_problem(root, entry.partition(":")[0])
        if unavailable and unavailable not in problems:
            problems.append(unavailable)

        class Command(gdb.Command):  # type: ignore[misc]  # gdb.Command is Any to mypy
            __doc__ = doc

            def __init__(self) -> None:
                super().__init__(name, gdb.COMMAND_DATA)

            def invoke(self, arg: str, from_tty: bool) -> None:
                self.dont_repeat()  # Enter after a ptdump should not dump again
                if unavailable:
                    raise gdb.GdbError(f"{name}: {unavailable}")
                run_command(gdb, name, entry, arg)

        Command()

    for name, entry, doc in COMMANDS:
        make(name, entry, doc)
    for p in problems:  # one line per distinct reason, once, when the file is sourced
        gdb.write(f"earlymm: {p}\n", gdb.STDERR)


def _import_problem(root: str, module: str) -> str:
    """Import ``module`` from the package next to this file; '' if that works, else one line saying why."""
    if sys.version_info < MIN_PYTHON:
        return (f"gdb's Python is {sys.version.split()[0]} ({sys.executable}); earlymm needs "
                f"{'.'.join(map(str, MIN_PYTHON))} or newer (use a gdb built against a newer Python)")
    if root not in sys.path:
        sys.path.insert(0, root)
    try:
        importlib.import_module(module)
    except ImportError as e:
        missing = e.name or str(e)
        if missing.split(".")[0] == "earlymm":
            return f"cannot import earlymm from {root}: {e}"
        ver = f"{sys.version_info[0]}.{sys.version_info[1]}"
        return (f"gdb's Python {sys.version.split()[0]} ({sys.executable}) cannot import {missing!r}, which "
                f"earlymm needs: install it for that Python (Debian: apt-get install python3-{missing}) or "
                f"start gdb with PYTHONPATH naming a site-packages built for Python {ver}")
    loaded = os.path.dirname(os.path.dirname(os.path.abspath(sys.modules["earlymm"].__file__ or root)))
    if os.path.realpath(loaded) != os.path.realpath(root):
        # An earlier source (another checkout or install) already imported earlymm in this gdb; Python
        # cannot unload it safely, so say so rather than run a mix of two versions.
        return f"this gdb already imported earlymm from {loaded}; restart gdb to use the one in {root}"
    return ""


def _invoke(gdb: Any, name: str, entry: str, arg: str) -> None:
    module_name, _, function = entry.partition(":")
    commands = importlib.import_module("earlymm.tools.gdb.commands")
    target = importlib.import_module("earlymm.tools.gdb.target").GdbTarget(gdb)
    run = getattr(importlib.import_module(module_name), function)
    try:
        out = run(target, gdb.string_to_argv(arg))
    except commands.HelpRequested as h:
        gdb.write(str(h))
        return
    except commands.CommandError as e:
        raise gdb.GdbError(f"{name}: {e}") from None
    except gdb.GdbError:
        raise
    except Exception as e:  # a bug in earlymm: one line, unless debugging
        if os.environ.get("EARLYMM_DEBUG"):
            raise
        raise gdb.GdbError(f"{name}: internal error: {type(e).__name__}: {e} "
                           "(set EARLYMM_DEBUG=1 in gdb's environment for a traceback)") from None
    gdb.write(out.text)
    for m in out.messages:
        gdb.write(f"{name}: {m}\n", gdb.STDERR)


if __name__ == "__main__":
    # gdb's ``source`` runs this as __main__ with __file__ set (possibly relative to gdb's cwd).
    _earlymm_gdb_setup(os.path.dirname(os.path.abspath(__file__)))
