"""Fixtures for the example tests: a headless Chromium context and its screenshots."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from browser import CHROMIUM_ARGS, artifacts_dir, chromium_or_skip
from playwright.async_api import BrowserContext, async_playwright

SCREENSHOTS = pytest.StashKey[list[Path]]()


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[BrowserContext]:
    """A fresh headless Chromium (its own user-data-dir); closed after the test."""
    executable = chromium_or_skip()
    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            tmp_path / "chromium-profile",
            executable_path=executable,
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1100, "height": 720},
        )
        try:
            yield context
        finally:
            await context.close()


@pytest.fixture
def screenshot_path(request: pytest.FixtureRequest) -> Path:
    """A PNG path for this test's screenshot, listed at the end of the run."""
    directory = artifacts_dir()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{request.node.name}.png"
    path.unlink(missing_ok=True)
    request.config.stash.setdefault(SCREENSHOTS, []).append(path)
    return path


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    taken = [p for p in terminalreporter.config.stash.get(SCREENSHOTS, []) if p.exists()]
    if taken:
        terminalreporter.write_sep("-", "browser screenshots")
        for path in taken:
            terminalreporter.write_line(str(path))
