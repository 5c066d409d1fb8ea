"""A real-QEMU test skips locally when QEMU or the kernel is missing, and fails under EARLYMM_REQUIRE_QEMU=1
(what CI sets after installing them), so CI cannot pass without running it."""

from __future__ import annotations

import pytest

from tests import qemu_support


def test_missing_qemu_skips_locally(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EARLYMM_REQUIRE_QEMU", raising=False)
    with pytest.raises(pytest.skip.Exception):
        qemu_support.need_tools("earlymm-no-such-tool")


def test_missing_qemu_fails_when_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EARLYMM_REQUIRE_QEMU", "1")
    with pytest.raises(pytest.fail.Exception, match="EARLYMM_REQUIRE_QEMU=1 but earlymm-no-such-tool"):
        qemu_support.need_tools("earlymm-no-such-tool")


def test_missing_kernel_fails_when_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EARLYMM_REQUIRE_QEMU", "1")
    monkeypatch.setattr(qemu_support, "KERNEL_ROOT", qemu_support.REPO / "no-such-dir")
    with pytest.raises(pytest.fail.Exception, match="a Debian kernel"):
        qemu_support.need_tools()
