"""A tiny prepared synthetic dataset shared by the evaluation tests (generated once per worker)."""

from __future__ import annotations

from pathlib import Path

import pytest

from retinassl.data.cache import Cache, PreparedData
from retinassl.data.preprocess import PreprocessConfig
from retinassl.data.synthetic import generate_dataset


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    generate_dataset(root / "data", n_images=40, size=64, seed=3)
    return root


@pytest.fixture(scope="session")
def tiny_prepared(tiny_root: Path) -> PreparedData:
    from retinassl.data.manifest import Manifest

    manifest = Manifest.load(tiny_root / "data" / "manifest.csv")
    return Cache(tiny_root / "cache").prepare(manifest, PreprocessConfig(size=32))
