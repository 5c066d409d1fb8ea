from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.html.browser import Browser, BrowserError, find_browser


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    exe = find_browser()
    if exe is None:
        pytest.skip("no headless browser: install Debian's chromium (apt-get install -y chromium), as CI does, "
                    "or point EARLYMM_BROWSER at a Chromium/Chrome binary")
    try:
        b = Browser(exe)
        b.send("Browser.getVersion")
    except (OSError, BrowserError) as e:
        pytest.skip(f"{exe} could not be started headless: {e}")
    yield b
    b.close()
