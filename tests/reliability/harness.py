"""Shared machinery of the reliability tests: running ``retinassl`` commands in subprocesses (with
SIGKILL injection and sampler/weight recording, see ``cli_wrapper.py``), one tiny configuration per
training family, and bit-for-bit comparison of two run directories.

Every run uses CPU float32 (``engine.precision=32``), a private cache directory and one thread.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
WRAPPER = HERE / "cli_wrapper.py"
RETINASSL = Path(sys.executable).with_name("retinassl")
TIMING = ("seconds", "time")  # metrics that measure time, not results

# ---------------------------------------------------------------------------------------------
# running commands


def cli_env(tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RELIABILITY_", "PL_", "LOCAL_RANK", "RETINASSL_RUN_DIR",
                                                                      "NODE_RANK", "WORLD_SIZE", "MASTER_"))}
    env.update(RETINASSL_CACHE=str(tmp / "cache"), RETINASSL_PROGRESS="0", OMP_NUM_THREADS="1",
               MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore", RETINASSL_PATIENT_SALT="reliability-tests")
    env.update(extra)
    return env


def run_cli(args: list[str], tmp: Path, *, kill_at: int = 0, record: Path | None = None,
            timeout: float = 900, env: dict[str, str] | None = None,
            wrapper: bool = True) -> subprocess.CompletedProcess:
    """``retinassl ARGS`` in a subprocess (through ``cli_wrapper.py`` unless ``wrapper`` is False,
    then through the installed console script), working directory ``tmp``."""
    extra = {}
    if kill_at:
        extra["RELIABILITY_KILL_AT_STEP"] = str(kill_at)
    if record is not None:
        extra["RELIABILITY_RECORD"] = str(record)
    environment = {**cli_env(tmp, **extra), **(env or {})}
    cmd = [sys.executable, str(WRAPPER), *args] if wrapper else [str(RETINASSL), *args]
    return subprocess.run(cmd, cwd=tmp, env=environment, capture_output=True, text=True,
                          timeout=timeout)


def cli_in_process(args: list[str], capsys) -> tuple[int, str, str]:
    """Run ``retinassl ARGS`` in this process (``retinassl.cli.main``, as the console script does);
    (exit status, stdout, stderr). Any exception other than the toolkit's escapes to the caller."""
    import logging

    from retinassl.cli import main

    argv = sys.argv
    sys.argv = ["retinassl", *args]
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = argv
        logger = logging.getLogger("retinassl")
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
            handler.close()
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def kill_step(seed: int, first: int, last: int) -> int:
    """A step in ``[first, last]`` drawn from ``seed`` (the step at which the run is killed)."""
    return int(np.random.default_rng(seed).integers(first, last + 1))


def only_run(runs: Path) -> Path:
    found = [p for p in runs.iterdir() if (p / "run.json").is_file()]
    assert len(found) == 1, f"expected one run directory in {runs}, found {found}"
    return found[0]


def assert_clean_failure(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit status 2, an ``error: ...`` line naming every needle, no Python traceback."""
    assert proc.returncode == 2, f"status {proc.returncode}\nSTDOUT {proc.stdout[-2000:]}\nSTDERR {proc.stderr[-4000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, proc.stderr[-3000:]
    message = proc.stderr[proc.stderr.index("error: "):]
    for needle in needles:
        assert needle in lines[0] or needle in message, f"{needle!r} not in {message!r}"
    return lines[0]


# ---------------------------------------------------------------------------------------------
# comparing runs


def weights(run: Path) -> dict[str, dict[str, object]]:
    """Every safetensors file of a run outside ``checkpoints/`` (the products), as tensors."""
    from safetensors.torch import load_file

    out = {}
    for path in sorted(run.rglob("*.safetensors")):
        rel = path.relative_to(run)
        if rel.parts[0] == "checkpoints":
            continue
        out[str(rel)] = load_file(str(path))
    return out


def results(run: Path) -> dict[tuple, float]:
    """The run's results table without timing rows, keyed by every non-value column."""
    out: dict[tuple, float] = {}
    for path in sorted(run.rglob("results.csv")):
        table = pd.read_csv(path, keep_default_na=False)
        for row in table.to_dict("records"):
            if any(t in str(row["metric"]) for t in TIMING):
                continue
            key = (str(path.relative_to(run)),) + tuple(str(row[c]) for c in table.columns if c != "value")
            out[key] = float(row["value"]) if str(row["value"]) != "" else math.nan
    return out


def predictions(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("predictions/*.csv"))}


def assert_same_run(a: Path, b: Path) -> None:
    """Bit-identical trained weights, identical metrics (NaN == NaN) and prediction files."""
    wa, wb = weights(a), weights(b)
    assert wa, f"no trained weights in {a}"
    assert wa.keys() == wb.keys(), (sorted(wa), sorted(wb))
    import torch

    for name in wa:
        assert wa[name].keys() == wb[name].keys(), name
        for key in wa[name]:
            assert torch.equal(wa[name][key], wb[name][key]), f"{name}: {key} differs"
    ra, rb = results(a), results(b)
    assert ra.keys() == rb.keys(), (sorted(ra), sorted(rb))
    for key in ra:
        same = ra[key] == rb[key] or (math.isnan(ra[key]) and math.isnan(rb[key]))
        assert same, f"{key}: {ra[key]!r} != {rb[key]!r}"
    assert predictions(a) == predictions(b)


# ---------------------------------------------------------------------------------------------
# one tiny configuration per training family


@dataclass
class Family:
    """How to run one family's training command on tiny synthetic data.

    Attributes:
        name: the family.
        args: ``(tmp, runs_dir) -> command-line arguments`` of a fresh run.
        resume_args: ``(run_dir) -> arguments`` that resume it.
        steps: optimizer steps of a whole run (the kill step is drawn from [3, steps]).
        requires: ``module`` or ``module:attribute`` implementing the family's command (the test
            skips while a colleague's family has not landed yet).
    """

    name: str
    args: Callable[[Path, Path], list[str]]
    resume_args: Callable[[Path], list[str]]
    steps: int
    requires: str

    def skip_unless_available(self) -> None:
        import importlib

        import pytest

        module, _, attribute = self.requires.partition(":")
        try:
            found = importlib.import_module(module)
        except ImportError as exc:
            pytest.skip(f"{self.name}: {module} is not available yet ({exc})")
        if attribute and not hasattr(found, attribute):
            pytest.skip(f"{self.name}: {self.requires} is not available yet")


F32 = ["engine.precision=32", "engine.num_threads=1"]


def _supervised(tmp: Path, runs: Path) -> list[str]:
    return ["train", "demo", "data.options={n_images: 12, size: 128, prevalence: 0.5, seed: 0}",
            "preprocess.size=128", "model.arch=convnet", "model.kwargs={width: 4}",
            "preprocess.normalize=max", "method={name: supervised, lr: 0.002, augment: dihedral}",
            "task.grid=4", "task.patch_size=32",
            "task.heatmaps=0", "engine.max_epochs=2", "engine.batch_size=32",
            "engine.checkpoint_every_n_steps=2", *F32, "--runs-dir", str(runs)]


def _rotation(tmp: Path, runs: Path) -> list[str]:
    return ["pretrain", "rotation", "data.options={n_images: 16, size: 128, prevalence: 0.5, seed: 0}",
            "preprocess.size=64", "model.arch=convnet", "model.kwargs={width: 4}", "engine.max_epochs=2",
            "engine.batch_size=4",
            "engine.checkpoint_every_n_steps=2", *F32, "--runs-dir", str(runs)]


GAN_YAML = """\
name: gan
seed: 0
data: {source: synthetic, options: {n_images: 16, size: 128, prevalence: 0.5, seed: 3}}
preprocess: {size: 128}
split: {train: 8, val: 4}
patches: {grid: 4}
n_labelled: 4
learner:
  method: {name: ssl-gan, generator_channels: [16, 8, 8, 8]}
  model: {arch: convnet, kwargs: {width: 8}}
  patch_size: 32
  margin: 2
  engine: {max_epochs: 100, max_steps: 6, batch_size: 16, checkpoint_every_n_steps: 2,
           precision: '32', num_threads: 1}
heatmaps: 0
"""


def _gan(tmp: Path, runs: Path) -> list[str]:
    config = tmp / "gan.yaml"
    config.write_text(GAN_YAML)
    return ["semisup", "train", str(config), "--runs-dir", str(runs)]


def _vessels(tmp: Path, runs: Path) -> list[str]:
    return ["segment", "train", "drive-vessels",
            "data={source: synthetic, options: {n_images: 8, size: 128, seed: 1}}", "evaluate_on=[]",
            "preprocess.size=128", "model.kwargs={channels: [4, 8]}", "method.patch_size=32",
            "method.patches_per_image=2", "train.samples_per_epoch=8", "engine.max_epochs=2",
            "engine.batch_size=2", "engine.checkpoint_every_n_steps=2", "bootstrap=10", "figures=0",
            "inference.roi_size=64", *F32, "--runs-dir", str(runs)]


LAYERS_YAML = """\
name: layers
input_size: [64, 64]
synthetic: {n_volumes: 3, seed: 1, shape: [5, 96, 64]}
model: {arch: unet, kwargs: {in_channels: 1, channels: [4, 8]}}
engine: {max_epochs: 100, max_steps: 6, batch_size: 4, precision: '32', checkpoint_every_n_steps: 2,
         num_threads: 1}
"""


def _layers(tmp: Path, runs: Path) -> list[str]:
    config = tmp / "layers.yaml"
    config.write_text(LAYERS_YAML)
    return ["oct", "train-seg", str(config), "--runs-dir", str(runs)]


CROSS_MODAL_YAML = """\
name: cross-modal
data: {source: synthetic, options: {n_images: 12, size: 64, with_oct: true, oct_shape: [5, 48, 32], seed: 0}}
preprocess: {size: 64}
model: {arch: convnet, kwargs: {width: 4}}
engine: {max_epochs: 2, batch_size: 2, checkpoint_every_n_steps: 2, precision: '32', num_threads: 1}
predictions: 0
"""


def _cross_modal(tmp: Path, runs: Path) -> list[str]:
    config = tmp / "cross-modal.yaml"
    config.write_text(CROSS_MODAL_YAML)
    return ["oct", "pretrain", str(config), "--runs-dir", str(runs)]


FAMILIES: dict[str, Family] = {
    "supervised": Family("supervised", _supervised, lambda run: ["train", "demo", "--resume", str(run)],
                         6, "retinassl.cli.train"),
    "pretext-rotation": Family("pretext-rotation", _rotation,
                               lambda run: ["pretrain", "rotation", "--resume", str(run)], 6,
                               "retinassl.cli.pretrain"),
    "patch-gan": Family("patch-gan", _gan, lambda run: ["semisup", "train", "gan", "--resume", str(run)],
                        12, "retinassl.cli.semisup"),
    "vessel-segmentation": Family("vessel-segmentation", _vessels,
                                  lambda run: ["segment", "train", "--resume", str(run)], 8,
                                  "retinassl.cli.segment"),
    "oct-layer-segmentation": Family("oct-layer-segmentation", _layers,
                                     lambda run: ["oct", "train-seg", "--resume", str(run)], 6,
                                     "retinassl.cli.oct:train_seg"),
    "cross-modal": Family("cross-modal", _cross_modal, lambda run: ["oct", "pretrain", "--resume", str(run)],
                          6, "retinassl.cli.oct:pretrain"),
}
