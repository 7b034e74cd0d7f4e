"""The alignment report in a real browser, offline: clicking a point on one input marks, on every
other input, the point the library's own transfer function gives.

Needs Debian's ``chromium``; run with ``pytest -m browser``.
"""
from __future__ import annotations

import json
import math
import time
from types import SimpleNamespace

import pytest
import torch

from congealing import warps
from congealing.data import ImageSet
from congealing.alignment import transfer_via_grids, transfer_via_transforms
from congealing.report import export_grids

import offline_browser
from offline_browser import launch

SIZE = 64

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def browser():
    yield from launch()


def open_offline(browser, page_path):
    page, remote, errors = offline_browser.open_offline(browser, page_path, viewport={"width": 1280, "height": 900})
    page.wait_for_load_state("load")
    return page, remote, errors


def shapes(count: int = 4, size: int = SIZE) -> ImageSet:
    """A bright ellipse with a dark notch, moved, turned and scaled differently in each image."""
    canvas = torch.zeros(1, 3, size, size)
    axis = (torch.arange(size) + 0.5) / size * 2 - 1
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    canvas[0, :, ((x / 0.5) ** 2 + (y / 0.3) ** 2) <= 1] = torch.tensor([0.9, 0.6, 0.2])[:, None]
    canvas[0, :, ((x - 0.3) ** 2 + (y + 0.1) ** 2) <= 0.01] = 0.1
    xi = torch.tensor([[0.1, -0.05, 0.2, 0.05], [-0.1, 0.1, -0.15, -0.05], [0.05, 0.1, 0.0, 0.1], [-0.05, -0.1, 0.1, -0.1]])[:count]
    images = warps.warp_image(canvas.expand(count, -1, -1, -1), warps.exp(xi, "similarity"))
    return ImageSet(images, [f"shape {k}.png" for k in range(count)], None, torch.ones(count, 1, size, size))


def click_and_read_marks(page, source: int, fraction: tuple[float, float], size: int = SIZE) -> dict[int, tuple[float, float]]:
    """Click image ``source`` (input order) at ``fraction`` of its box; return every input's mark
    of that point as pixel ``(x, y)`` of a ``size``-pixel image (pixel centres at integers); for
    ``source``, the clicked point itself as the page recorded it (a mark's on-screen position is
    rounded a little, and a nearest-neighbour inverse can jump between cells on such a change)."""
    target = page.locator(f'tr[data-order="{source}"] .pic[data-frame="input"] img.view')
    target.scroll_into_view_if_needed()
    box = target.bounding_box()
    page.mouse.click(box["x"] + fraction[0] * box["width"], box["y"] + fraction[1] * box["height"])
    marks = page.evaluate(
        """() => [...document.querySelectorAll('td .pic[data-frame="input"]')].filter(p => p.querySelector('img.view')).map(p => {
               const all = p.querySelectorAll('.mark'), m = all[all.length - 1], b = p.getBoundingClientRect();  // the newest point
               if (!m) return null;
               const r = m.getBoundingClientRect();
               return [+p.dataset.index, ((r.left + r.right) / 2 - b.left) / b.width, ((r.top + r.bottom) / 2 - b.top) / b.height];
           })"""
    )
    assert None not in marks, "some image has no mark after the click"
    clicked = page.evaluate("() => window.congealPoints().at(-1)")  # exactly where the click landed, normalised
    assert clicked["src"] == source
    seen = {index: (fx * size - 0.5, fy * size - 0.5) for index, fx, fy in marks}
    seen[source] = tuple((v + 1) * size / 2 - 0.5 for v in clicked["p"])
    return seen


def check_marks(page, transfer, source: int, fraction: tuple[float, float], size: int = SIZE, tolerance: float = 0.1) -> None:
    marks = click_and_read_marks(page, source, fraction, size)
    assert len(marks) == 4
    clicked = torch.tensor([marks[source]])
    for target, seen in marks.items():
        if target == source:
            continue
        expected = transfer(source, target, clicked)[0].tolist()
        assert seen == pytest.approx(expected, abs=tolerance), f"image {target}: page marks {seen}, library gives {expected}"


def test_clicked_point_lands_where_transfer_via_transforms_puts_it(browser, tmp_path):
    from congealing import align

    out = tmp_path / "lsq"
    align.align(shapes(), align.AlignRequest(method="ic-lsq", out=out, mode="quick", device="cpu"))
    transforms = torch.load(out / "mappings.pt", weights_only=True)["transforms"]
    page, remote, errors = open_offline(browser, out / "index.html")
    transfer = transfer_via_transforms(transforms, SIZE)
    check_marks(page, transfer, 0, (0.4, 0.45))
    check_marks(page, transfer, 2, (0.6, 0.55))
    page.click("#show-all-aligned")  # the aligned frame is one frame: every aligned image marks the same spot
    aligned = page.evaluate("""() => [...document.querySelectorAll('.pic[data-frame="aligned"]')].map(p => p.querySelectorAll('.mark').length)""")
    assert aligned and all(count == 2 for count in aligned)
    assert not remote and not errors, (remote, errors)


def test_clicked_point_lands_where_transfer_via_grids_puts_it(browser, tmp_path):
    from congealing import align, neural

    config = neural.NeuralCongealingConfig.for_mode("quick", epochs=4, bootstrap_epochs=2, update_every=2, checkpoint_every=4, flips=True)
    out = tmp_path / "neural"
    start = time.perf_counter()
    align.align(shapes(), align.AlignRequest(method="neural", out=out, mode="quick", device="cpu", config=config, checkpoint=out.with_name(".out.neural.checkpoint.pt")))
    print(f"tiny Neural Congealing run: {time.perf_counter() - start:.1f} s")
    grids = torch.load(out / "mappings.pt", weights_only=True)["grids"]
    page, remote, errors = open_offline(browser, out / "index.html")
    transfer = transfer_via_grids(export_grids(grids), SIZE)  # the page holds the exported (here: unchanged, 32 x 32) grids
    check_marks(page, transfer, 1, (0.45, 0.5))
    check_marks(page, transfer, 3, (0.3, 0.6))
    assert not remote and not errors, (remote, errors)


def test_clicked_point_lands_where_congeal3d_transfer_points_puts_it(browser, tmp_path):
    """The 3-D page: canonical coordinates per pixel (here a smooth synthetic field, each image a
    turned and shifted view of it) and the library's nearest-coordinate matching."""
    from congealing import congeal3d
    from congealing.report import write_alignment

    N, S = 4, 32
    axis = (torch.arange(S) + 0.5) / S * 2 - 1
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    nocs, masks = [], []
    for k in range(N):
        angle = 0.3 * k
        u, v = math.cos(angle) * x - math.sin(angle) * y + 0.1 * k, math.sin(angle) * x + math.cos(angle) * y
        nocs.append(torch.stack([(u + 1) / 2, (v + 1) / 2, (u * v + 1) / 2]))
        masks.append(((u**2 + v**2) < 0.8).float()[None])
    nocs, masks = torch.stack(nocs) * torch.stack(masks), torch.stack(masks)
    images = nocs.clone()
    out = write_alignment(
        tmp_path / "c3d", method="congeal3d", names=[f"view {k}.png" for k in range(N)], inputs=images, aligned=images, atlas={"front": images[0]},
        mode="quick", transforms=torch.eye(4).expand(N, 4, 4), masks=masks, coordinate_maps=(nocs, masks),
        poses=[{"image": f"view {k}.png", "azimuth_deg": 30.0 * k, "elevation_deg": 10.0, "fov_deg": 40.0} for k in range(N)],
    )
    exported = json.loads((out / "mappings.js").read_text().removeprefix("window.CONGEAL_MAPPINGS = ").rstrip().removesuffix(";"))
    maps = SimpleNamespace(nocs=torch.tensor(exported["nocs"]).view(N, S, S, 3).permute(0, 3, 1, 2), mask=torch.tensor(exported["mask"]).float().view(N, 1, S, S))

    def transfer(src, tgt, points):
        return congeal3d.transfer_points(maps, src, tgt, points).float()

    page, remote, errors = open_offline(browser, out / "index.html")
    check_marks(page, transfer, 0, (0.42, 0.47), size=S)
    check_marks(page, transfer, 2, (0.55, 0.4), size=S)
    assert not remote and not errors, (remote, errors)
