"""Headless Chromium for the inspector page's tests and its screenshot: Debian's /usr/bin/chromium driven by Playwright
(Playwright's own browser download cannot work here; `make setup-browser` installs Chromium, `make test` runs it)."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def missing() -> str:
    """Why the browser cannot run here ("" when it can)."""
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing: run `make setup-browser` (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is missing: pip install -e '.[dev]'"
    return ""


@contextlib.contextmanager
def chromium(width: int = 1400, height: int = 950) -> Iterator[Any]:
    """A Playwright browser context on a fresh user-data dir. The page's Content-Security-Policy forbids eval, so
    the context bypasses it: Playwright evaluates its waits as strings."""
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="ntm-chromium-")
    try:
        with sync_playwright() as p:
            context = p.chromium.launch_persistent_context(
                profile, executable_path=str(CHROMIUM), args=ARGS, headless=True, bypass_csp=True,
                viewport={"width": width, "height": height})
            try:
                yield context
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
