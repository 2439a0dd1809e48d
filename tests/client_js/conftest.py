"""What the browser tests share: one headless Chromium per test (tests/client_js/cdp.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from cdp import Browser, find_chromium, launch


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("Chromium not found (run scripts/install_browser.sh, or set ANDES_CHROMIUM)")
    b = await launch(chromium)
    yield b
    await b.close()

