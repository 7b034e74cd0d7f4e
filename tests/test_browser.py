"""The built book in a real browser: widgets work without a kernel and without any network.

Needs Debian's ``chromium`` and a built book (``make book``); run with ``pytest -m browser``.
"""
from __future__ import annotations

from pathlib import Path

import pytest

import offline_browser
from offline_browser import launch

ROOT = Path(__file__).resolve().parents[1]
BUILT = ROOT / "_build" / "html"
# sphinx-thebe (bundled with Jupyter Book 1.x) declares `const THEBE_JS_URL` twice per page; the
# second declaration throws. Thebe is not used by this book, so that one error is not ours to fix.
KNOWN_THIRD_PARTY_ERRORS = ("Identifier 'THEBE_JS_URL' has already been declared",)

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def browser():
    yield from launch()


def open_offline(browser, page_path: Path):
    """Open a built page from disk, refusing every request that would leave the machine."""
    if not page_path.exists():
        pytest.fail(f"{page_path} is missing: build the book first (make book)")
    return offline_browser.open_offline(browser, page_path, KNOWN_THIRD_PARTY_ERRORS)


def visible_image(container) -> str:
    return container.evaluate(
        """box => { const img = [...box.querySelectorAll('img')].find(i => i.offsetParent !== null);
                   return img ? img.src : null; }"""
    )


def test_static_slider_switches_frames(browser):
    page, remote, errors = open_offline(browser, BUILT / "book" / "ch01_warps.html")
    page.wait_for_selector(".widget-slider", timeout=30_000)
    box = page.locator(".widget-vbox", has=page.locator(".widget-slider")).first
    before = visible_image(box)
    assert before, "the widget rendered no visible image"
    handle = box.locator(".noUi-handle").first
    handle.focus()
    for _ in range(3):
        handle.press("ArrowRight")
    page.wait_for_timeout(500)
    after = visible_image(box)
    assert after and after != before, "moving the slider did not change the image"
    assert not remote, f"the page tried to reach the network: {remote[:3]}"
    assert not errors, f"JavaScript errors: {errors[:3]}"


def test_equations_render_offline(browser):
    page, remote, _ = open_offline(browser, BUILT / "book" / "ch01_warps.html")
    page.wait_for_selector("mjx-container", timeout=30_000)
    assert page.locator("mjx-container").count() > 5
    assert not remote, f"the page tried to reach the network: {remote[:3]}"


def test_tabs_work_without_kernel(browser):
    page, remote, _ = open_offline(browser, BUILT / "book" / "ch01_warps.html")
    page.wait_for_selector(".widget-tab", timeout=30_000)
    tabs = page.locator(".widget-tab").first
    first = visible_image(tabs)
    tabs.locator(".lm-TabBar-tab").nth(2).click()
    page.wait_for_timeout(500)
    assert visible_image(tabs) != first, "switching tabs did not show another generator's sweep"
    assert not remote


def test_every_chapter_shows_its_figures():
    """Executed notebooks must carry their matplotlib figures into the pages (an Agg backend, for
    example MPLBACKEND=Agg in the environment, silently drops them)."""
    from toc_notebooks import toc_notebooks

    for notebook in toc_notebooks():
        page = BUILT / notebook.relative_to(ROOT).with_suffix(".html")
        html = page.read_text()
        figures = html.count('src="../_images/')
        assert figures >= 2, f"{page.name} shows {figures} figures"


def test_alignment_report_opens_without_a_server(browser, tmp_path):
    """`congeal align` writes OUT/index.html; it must show its images straight from disk."""
    import torch

    from congealing.report import write_alignment

    images = torch.rand(3, 3, 24, 24)
    out = write_alignment(
        tmp_path / "report", method="demo", names=["a.png", "b.jpg", "c.png"], inputs=images, aligned=images.flip(-1),
        atlas={"mean": images.mean(0)}, mode="quick", transforms=torch.eye(3).expand(3, 3, 3), summary={"seconds": 1.0},
        extra_images={"edit": images.flip(-2)},
    )
    page, remote, errors = open_offline(browser, out / "index.html")
    page.wait_for_load_state("load")
    # The report's images load lazily (only near the viewport), so ask each one to load now and
    # wait for it: a picture that cannot be read from disk ends with naturalWidth 0.
    sizes = page.evaluate(
        """() => Promise.all([...document.images].map(img => {
               img.loading = 'eager';
               return img.decode().then(() => img.naturalWidth, () => 0);
           }))"""
    )
    assert len(sizes) >= 3 * 3 + 1 and all(w > 0 for w in sizes), sizes  # inputs, aligned, edit, atlas
    assert not remote and not errors
    page.close()
