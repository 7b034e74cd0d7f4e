"""Shared fixtures. Real-data tests need CONGEAL_DATA (CI sets it); elsewhere they are skipped.

Every test that reads real data (through ``data_root``) or loads the EfficientNet backbone (``lite0``)
is marked ``slow`` here, so ``pytest -m "not slow"`` is the fast developer loop; ``make unit`` and
CI run everything."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from congealing.features import Backbone, BackboneSpec

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = os.environ.get("CONGEAL_DATA")
    if not root or not Path(root).is_dir():
        message = "real-data test: set CONGEAL_DATA to the folder with mnist/, CUB_200_2011/, nerf_synthetic/"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return Path(root)


SLOW_FIXTURES = {"data_root", "lite0"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(params=["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def device(request) -> torch.device:
    """Every device here: the CPU always, CUDA when present (a GPU run exercises the methods there)."""
    return torch.device(request.param)


@pytest.fixture()
def offline_data(data_root, monkeypatch) -> Path:
    """``data_root``, with ``CONGEAL_DATA`` pointing at it and downloads turned into test failures:
    a test that goes through the CLI or a loader's defaults reads the shared data, never fetches."""
    from congealing import data

    def refuse(source, cached):
        pytest.fail(f"the test tried to download {source.name}: it must read CONGEAL_DATA={data_root}")

    monkeypatch.setenv("CONGEAL_DATA", str(data_root))
    monkeypatch.setattr(data.sources, "_download", refuse)  # where find_dataset looks it up
    return data_root


@pytest.fixture()
def isolated_cache(tmp_path, monkeypatch) -> Path:
    """A private CONGEAL_CACHE, so a test never reads or writes the user's cache."""
    monkeypatch.setenv("CONGEAL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


class ColourBackbone(Backbone):
    """A stand-in backbone: local mean colours (plus a constant channel) on a stride-4 grid."""

    def __init__(self):
        super().__init__("colours", nn.Identity(), BackboneSpec("none", "cnn", 4, 32, "colour test backbone", "n/a"), (0.0,) * 3, (1.0,) * 3)

    def forward(self, images: torch.Tensor, input_size: int | None = None) -> torch.Tensor:
        x = self.prepare(images, input_size)
        return F.avg_pool2d(torch.cat([x - 0.5, torch.full_like(x[:, :1], 0.2)], dim=1), 4)


@pytest.fixture(scope="session")
def colour_backbone() -> Backbone:
    """:class:`ColourBackbone`: features in microseconds, no weights, for the methods' plumbing."""
    return ColourBackbone()
