"""Debian's Chromium, driven by Playwright, with every request that would leave the machine refused.

Shared by the browser tests (``pytest -m browser``): the book's pages and the alignment report.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
#: Without the background-networking flags, Chromium's connections are refused many at a time here.
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def launch():
    """Yield a headless Chromium (a generator for a pytest fixture)."""
    if CHROMIUM is None:
        pytest.fail("Debian's chromium is needed for the browser test: apt-get install chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield instance
        instance.close()


def open_offline(browser, page_path: Path, ignored_errors=(), viewport=None):
    """Open a page from disk; return it, the remote URLs it asked for (all refused) and its script errors."""
    page = browser.new_page(**({"viewport": viewport} if viewport else {}))
    remote, errors = [], []

    def guard(route):
        if route.request.url.startswith(("file://", "data:", "blob:")):
            route.continue_()
        else:
            remote.append(route.request.url)
            route.abort()

    page.route("**/*", guard)
    page.on("pageerror", lambda error: errors.append(str(error)) if str(error) not in ignored_errors else None)
    page.goto(page_path.as_uri())
    return page, remote, errors
