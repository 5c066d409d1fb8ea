"""What a real-QEMU test does when QEMU, gdb or the kernel is missing.

Locally such a test skips. CI sets ``EARLYMM_REQUIRE_QEMU=1`` after installing QEMU and fetching the
kernel, and there a missing piece must fail the run rather than let it pass without the test.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
KERNEL_ROOT = REPO / "captures" / "kernel" / "root"
FETCH_HINT = "python -m earlymm.tools.qemu_capture --fetch-kernel captures/kernel"


def required() -> bool:
    return os.environ.get("EARLYMM_REQUIRE_QEMU", "") == "1"


def unavailable(reason: str) -> None:
    """Skip (locally) or fail (with ``EARLYMM_REQUIRE_QEMU=1``) because ``reason`` is missing."""
    if required():
        pytest.fail(f"EARLYMM_REQUIRE_QEMU=1 but {reason}", pytrace=False)
    pytest.skip(f"needs {reason} ({FETCH_HINT})")


def kernel() -> Path | None:
    found = sorted((KERNEL_ROOT / "boot").glob("vmlinuz-*"))
    return found[-1] if found else None


def need_tools(*tools: str) -> Path:
    """The newest fetched vmlinuz, after checking ``tools`` are on PATH (skip or fail otherwise)."""
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        unavailable(" and ".join(missing))
    k = kernel()
    if k is None or not (KERNEL_ROOT / "bin" / "busybox").is_file():
        unavailable("a Debian kernel and busybox under captures/kernel")
    assert k is not None
    return k
