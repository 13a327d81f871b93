"""What a masked autoencoder learned to see: reconstructions of seeded pool images, written at the end
of every ``mae`` pretraining (into its report) and by ``retinassl explain reconstructions RUN`` for a
pretraining run made earlier (from its newest training checkpoint, which holds the decoder that the
saved encoder leaves out).

He et al. 2022 show "reconstructions of ImageNet validation images" beside the masked input to judge
the pretext task; a reader of a retinal MAE looks for the vessels and the disc coming back in the
hidden patches, not just a blur of the fundus colour.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from retinassl.config import load_config
from retinassl.data.cache import Cache
from retinassl.data.datasets import ImageDataset
from retinassl.data.manifest import Manifest
from retinassl.engine.checkpoints import latest_checkpoint
from retinassl.errors import CheckpointError, ConfigError
from retinassl.figures.reconstructions import reconstruction_figure
from retinassl.io.tree import load_tree
from retinassl.methods.base import Method, seeded_method

log = logging.getLogger(__name__)

FIGURE_PREFIX = "reconstructions-"


def pick_rows(n_rows: int, images: int, seed: int) -> np.ndarray:
    """``images`` distinct row indices of ``n_rows``, drawn with ``seed`` (sorted)."""
    count = min(images, n_rows)
    return np.sort(np.random.default_rng(seed).choice(n_rows, size=count, replace=False))


def write_reconstructions(method: Method, x: torch.Tensor, path: Path, seed: int = 0, title: str = "",
                          captions: list[str] | None = None) -> Path:
    """Reconstruct the images ``x`` ``(N, C, H, W)`` (masks drawn from ``seed``) and write the
    figure to ``path``. ``method`` is an ``mae`` method (it has ``reconstruct(x, generator)``)."""
    if getattr(method, "name", "") != "mae":
        raise ConfigError(f"reconstructions are drawn for the mae method, not {getattr(method, 'name', method)!r}")
    was_training = method.training
    method.eval()
    try:
        visible, full, hidden = method.reconstruct(x.float(), torch.Generator().manual_seed(seed))
    finally:
        method.train(was_training)
    h, w = full.shape[2:]
    return reconstruction_figure(x[:, :, :h, :w].float().numpy(), visible.numpy(), full.numpy(), hidden.numpy(),
                                 path, title=title, captions=captions)


def pool_reconstructions(method: Method, dataset: ImageDataset, path: Path, images: int = 6, seed: int = 0,
                         title: str = "") -> Path:
    """:func:`write_reconstructions` of ``images`` items of ``dataset`` drawn with ``seed``."""
    rows = pick_rows(len(dataset), images, seed)
    x = torch.stack([dataset[int(i)]["image"] for i in rows])
    return write_reconstructions(method, x, path, seed, title, [f"pool image {int(i)}" for i in rows])


def method_from_run(run_path: Path) -> tuple[Method, object, int]:
    """The method of a pretraining run directory as its newest training checkpoint left it:
    ``(method, config, step)``."""
    from retinassl.jobs.pretrain import PretrainConfig

    config_file = run_path / "config.yaml"
    if not config_file.is_file():
        raise ConfigError(f"{run_path}: not a pretraining run directory (no config.yaml)")
    config = load_config(PretrainConfig, config_file)
    checkpoint = latest_checkpoint(run_path / "checkpoints")
    if checkpoint is None:
        raise CheckpointError(f"{run_path / 'checkpoints'}: no training checkpoint (the decoder is kept only "
                              f"there; runs with engine.checkpoint_every_n_steps=-1 keep none)")
    tree = load_tree(checkpoint.with_suffix(".json"))
    prefix = "method."
    state = {k.removeprefix(prefix): v for k, v in tree["state_dict"].items() if k.startswith(prefix)}
    method, _ = seeded_method(config.model.model_copy(update={"init": "scratch"}),
                              {**config.method, "name": config.method_name}, config.method_name, config.seed)
    missing, unexpected = method.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{checkpoint}: does not match the run's {config.method_name} method "
                              f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})")
    return method, config, int(tree.get("global_step", 0))


def reconstructions_of_run(run_path: Path, out: Path, images: int = 6, seed: int = 0) -> Path:
    """The figure of a finished (or interrupted) ``mae`` pretraining run, from its newest checkpoint,
    on ``images`` seeded images of the run's own pool (``manifest.csv``)."""
    method, config, step = method_from_run(run_path)
    manifest = Manifest.load(run_path / "manifest.csv")
    rows = pick_rows(len(manifest), images, seed)
    first = config.data[0]
    prepared = Cache(first.cache_dir).prepare(manifest.subset(rows), config.preprocess, workers=1, mask_columns=[])
    dataset = ImageDataset(prepared)
    x = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
    title = f"{config.method_name}, step {step}, mask ratio {config.method.get('mask_ratio', 0.75)}"
    return write_reconstructions(method, x, out, seed, title, [f"pool image {int(i)}" for i in rows])
