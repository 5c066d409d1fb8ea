"""gdb-side half of the live QEMU test; gdb sources this file, pytest never imports it.

``test-checkpoint NAME DIR`` hands control to the test while the guest is stopped: it creates
``NAME.stopped``, waits for the test to write ``NAME.cmds`` (after it has asked QEMU over QMP about the
same stopped instant), runs each line with ``gdb.execute`` and writes what each printed (or its error)
to ``NAME.out.json``. ``test-step-to-high-half`` single-steps until RIP is a kernel-half address: the
first instruction the kernel runs on its own page tables, before it has built a direct map.
"""

from __future__ import annotations

import importlib
import json
import os
import time
from typing import Any

WAIT_SECONDS = 300
MAX_STEPS = 200_000


def _register(gdb: Any) -> None:
    class Checkpoint(gdb.Command):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__("test-checkpoint", gdb.COMMAND_USER)

        def invoke(self, arg: str, from_tty: bool) -> None:
            name, directory = gdb.string_to_argv(arg)
            base = os.path.join(directory, name)
            with open(base + ".stopped", "w"):
                pass
            deadline = time.monotonic() + WAIT_SECONDS
            while not os.path.exists(base + ".cmds"):
                if time.monotonic() > deadline:
                    raise gdb.GdbError(f"test-checkpoint {name}: the test sent no commands")
                time.sleep(0.05)
            with open(base + ".cmds") as f:
                lines = f.read().splitlines()
            results: list[dict[str, str]] = []
            for line in lines:
                try:
                    results.append({"cmd": line, "out": gdb.execute(line, to_string=True)})
                except gdb.error as e:
                    results.append({"cmd": line, "error": str(e)})
            with open(base + ".tmp", "w") as f:
                json.dump(results, f)
            os.replace(base + ".tmp", base + ".out.json")

    class StepToHighHalf(gdb.Command):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__("test-step-to-high-half", gdb.COMMAND_USER)

        def invoke(self, arg: str, from_tty: bool) -> None:
            for _ in range(MAX_STEPS):
                gdb.execute("stepi", to_string=True)
                if int(gdb.newest_frame().read_register("rip")) & (1 << 63):
                    return
            raise gdb.GdbError("test-step-to-high-half: still in the low half")

    Checkpoint()
    StepToHighHalf()


if __name__ == "__main__":
    _register(importlib.import_module("gdb"))
