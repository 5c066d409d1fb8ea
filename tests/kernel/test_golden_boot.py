"""Refactoring guard (issue 8): every configuration of ``tests/golden/boot_golden.py`` still produces the
recorded ``--json --trace`` document and saved-core content. The expected values are the model's own
earlier output, recorded before the seams were built — see that module's docstring."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.golden.boot_golden import CONFIGS, load, run


def _first_difference(want: object, got: object, where: str = "") -> str | None:
    if type(want) is not type(got):
        return f"{where}: {want!r} != {got!r}"
    if isinstance(want, dict) and isinstance(got, dict):
        for k in sorted(set(want) | set(got)):
            if k not in want or k not in got:
                return f"{where}.{k}: only in {'golden' if k in want else 'new run'}"
            d = _first_difference(want[k], got[k], f"{where}.{k}")
            if d:
                return d
        return None
    if isinstance(want, list) and isinstance(got, list):
        for i, (a, b) in enumerate(zip(want, got, strict=False)):
            d = _first_difference(a, b, f"{where}[{i}]")
            if d:
                return d
        return None if len(want) == len(got) else f"{where}: {len(want)} items != {len(got)}"
    return None if want == got else f"{where}: {want!r} != {got!r}"


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_boot_matches_golden(name: str, tmp_path: Path) -> None:
    assert _first_difference(load(name), run(name, tmp_path)) is None
