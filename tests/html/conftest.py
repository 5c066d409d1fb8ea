from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.html.browser import Browser, BrowserError, find_browser


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    exe = find_browser()
    required = os.environ.get("EARLYMM_REQUIRE_BROWSER") == "1"  # CI: a missing browser fails, never skips
    if exe is None:
        if required:
            pytest.fail("EARLYMM_REQUIRE_BROWSER=1 but no chromium/chrome is installed (apt-get install -y chromium)")
        pytest.skip("no headless browser: install Debian's chromium (apt-get install -y chromium), as CI does, "
                    "or point EARLYMM_BROWSER at a Chromium/Chrome binary")
    try:
        b = Browser(exe)
        b.send("Browser.getVersion")
    except (OSError, BrowserError) as e:
        if required:
            pytest.fail(f"EARLYMM_REQUIRE_BROWSER=1 but {exe} could not be started headless: {e}")
        pytest.skip(f"{exe} could not be started headless: {e}")
    yield b
    b.close()
