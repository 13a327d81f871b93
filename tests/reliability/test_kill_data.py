"""Kills during data work (the single-process cache kill is tests/data/test_cache.py): the synthetic
generator killed part-way, and a parallel prepare (2 worker processes) whose whole process group is
killed, both complete on the rerun with exactly the bytes of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

GENERATE = """
import sys
from retinassl.data.sources.synthetic import load_synthetic
load_synthetic(sys.argv[1], n_images=int(sys.argv[2]), size=64, seed=5, workers=int(sys.argv[3]))
"""
PREPARE = """
import sys
from retinassl.data.cache import Cache
from retinassl.data.manifest import Manifest
from retinassl.data.preprocess import PreprocessConfig
Cache(sys.argv[2]).prepare(Manifest.load(sys.argv[1]), PreprocessConfig(size=48), workers=2)
"""


def _start(code: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "RETINASSL_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", code, *args], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 300) -> bool:
    """SIGKILL the process group once ``ready()``; False when the process ended first."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if ready():
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.05)
    proc.wait()
    return False


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.startswith(".tmp-")}


@pytest.mark.slow
def test_synthetic_generator_killed_then_rerun_matches(tmp_path: Path) -> None:
    n = 24
    proc = _start(GENERATE, str(tmp_path / "killed"), str(n), "2")
    killed = _kill_when(proc, lambda: len(list((tmp_path / "killed" / "images").glob("*.png"))) >= 6
                        if (tmp_path / "killed" / "images").is_dir() else False)
    assert killed, "the generator finished before it could be killed"
    assert not (tmp_path / "killed" / "complete.json").exists()
    rerun = _start(GENERATE, str(tmp_path / "killed"), str(n), "1")
    assert rerun.wait(timeout=600) == 0, rerun.stderr.read().decode()[-2000:]
    fresh = _start(GENERATE, str(tmp_path / "fresh"), str(n), "1")
    assert fresh.wait(timeout=600) == 0
    a, b = _files(tmp_path / "killed"), _files(tmp_path / "fresh")
    b = {k: v.replace(str(tmp_path / "fresh").encode(), str(tmp_path / "killed").encode()) for k, v in b.items()}
    assert a.keys() == b.keys()
    assert [k for k in a if a[k] != b[k]] == []


@pytest.mark.slow
def test_parallel_prepare_killed_then_rerun_matches(tmp_path: Path) -> None:
    from retinassl.data.cache import Cache
    from retinassl.data.manifest import Manifest
    from retinassl.data.preprocess import PreprocessConfig
    from retinassl.data.synthetic import generate_dataset

    manifest = generate_dataset(tmp_path / "data", n_images=40, size=96, seed=2)
    csv = tmp_path / "data" / "manifest.csv"
    proc = _start(PREPARE, str(csv), str(tmp_path / "cache"))
    killed = _kill_when(proc, lambda: len(list((tmp_path / "cache").rglob("entry.json"))) >= 4)
    assert killed, "prepare finished before it could be killed"
    time.sleep(0.2)
    for entry in (tmp_path / "cache").rglob("entry.json"):  # complete-looking entries are complete
        for npy in entry.parent.glob("*.npy"):
            np.load(npy)
    done = len(list((tmp_path / "cache").rglob("entry.json")))
    assert done < len(manifest)
    config = PreprocessConfig(size=48)
    prepared = Cache(tmp_path / "cache").prepare(Manifest.load(csv), config, workers=2)
    reference = Cache(tmp_path / "fresh").prepare(Manifest.load(csv), config)
    for a, b in zip(prepared.entries, reference.entries):
        assert np.array_equal(a.image(), b.image()) and np.array_equal(a.fov(), b.fov())
        for column in ("mask_MA", "mask_vessels"):
            assert np.array_equal(a.mask(column), b.mask(column))
