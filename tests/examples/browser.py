"""Headless Chromium for the page tests: Debian's /usr/bin/chromium driven by Playwright.

Never a browser download: Playwright only drives the system Chromium. In CI
(``CI`` set) a missing Chromium fails the browser tests, as a missing runsc
fails the gVisor ones: .ci/run installs it (scripts/ensure-chromium.sh).
Elsewhere they are skipped with the command that installs it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

__all__ = ["CHROMIUM", "CHROMIUM_ARGS", "artifacts_dir", "chromium_or_skip"]

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_or_skip() -> Path:
    """The Chromium binary; fails the test in CI when it is missing, skips it elsewhere."""
    if CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK):
        return CHROMIUM
    reason = f"no Chromium at {CHROMIUM}; install it with: bash scripts/ensure-chromium.sh"
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (in CI the browser tests must run, never skip)")
    pytest.skip(reason)


def artifacts_dir() -> Path:
    """Where the browser tests keep their screenshots (``TEST_ARTIFACTS`` overrides)."""
    default = Path(__file__).resolve().parents[2] / "test-artifacts"
    return Path(os.environ.get("TEST_ARTIFACTS", default)) / "web_stream"
