"""Shared fixtures. Real-data tests need CONGEAL_DATA (CI sets it); elsewhere they are skipped."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

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


@pytest.fixture()
def isolated_cache(tmp_path, monkeypatch) -> Path:
    """A private CONGEAL_CACHE, so a test never reads or writes the user's cache."""
    monkeypatch.setenv("CONGEAL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"
