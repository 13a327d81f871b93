"""Shared fixtures: the real-data folder (skipping cleanly when absent) and tiny synthetic inputs
(a prepared synthetic fundus dataset, `tiny_root` / `tiny_prepared`)."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

# Tests run two at a time (pytest -n 2) on two cores: one intra-op thread each.
torch.set_num_threads(1)
os.environ.setdefault("RETINASSL_PROGRESS", "0")
# The suite's own cache (each xdist worker its own), never the user's ~/.cache/retinassl: a test that
# counts decodes or feature extractions must not depend on what earlier runs left behind.
if "RETINASSL_CACHE" not in os.environ:
    os.environ["RETINASSL_CACHE"] = tempfile.mkdtemp(prefix="retinassl-test-cache-")
    atexit.register(shutil.rmtree, os.environ["RETINASSL_CACHE"], ignore_errors=True)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("RETINASSL_SHARED_DATA", PROJECT_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (the public datasets); skips the test when the folder is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real datasets not found at {SHARED_DATA} (set RETINASSL_SHARED_DATA to run "
                    f"the real-data tests)")
    return SHARED_DATA


def shared_dataset(name: str) -> Path:
    """One dataset folder under ``../shared/data``, skipping when it is absent."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"dataset {name!r} not found at {path}")
    return path


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synthetic fundus dataset (40 images, 64 px), generated once per worker; shared by the
    probe, fine-tuning, transfer-sweep and evaluate-command tests."""
    from retinassl.data.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("synthetic")
    generate_dataset(root / "data", n_images=40, size=64, seed=3)
    return root


@pytest.fixture(scope="session")
def tiny_prepared(tiny_root: Path):
    """``tiny_root`` prepared at 32 px (a ``retinassl.data.cache.PreparedData``)."""
    from retinassl.data.cache import Cache
    from retinassl.data.manifest import Manifest
    from retinassl.data.preprocess import PreprocessConfig

    manifest = Manifest.load(tiny_root / "data" / "manifest.csv")
    return Cache(tiny_root / "cache").prepare(manifest, PreprocessConfig(size=32))
