"""What a masked autoencoder learned to see, for a pretraining run made earlier: ``retinassl explain
reconstructions RUN`` rebuilds the run's method from its newest training checkpoint (which holds the
decoder that the saved encoder leaves out) and draws reconstructions of seeded images of the run's
own pool. A finished ``pretrain mae`` draws the same figure itself (:meth:`MAE.figures
<retinassl.methods.mae.MAE.figures>`).

He et al. 2022 show "reconstructions of ImageNet validation images" beside the masked input to judge
the pretext task; a reader of a retinal MAE looks for the vessels and the disc coming back in the
hidden patches, not just a blur of the fundus colour.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from retinassl.config import load_config
from retinassl.data.cache import Cache
from retinassl.data.datasets import ImageDataset
from retinassl.data.manifest import Manifest
from retinassl.engine.checkpoints import latest_checkpoint
from retinassl.errors import CheckpointError, ConfigError
from retinassl.figures.reconstructions import sample_rows
from retinassl.io.tree import load_tree
from retinassl.jobs.pretrain import PretrainConfig
from retinassl.methods.base import Method, seeded_method

log = logging.getLogger(__name__)


def method_from_run(run_path: Path) -> tuple[Method, PretrainConfig, int]:
    """The method of a pretraining run directory as its newest training checkpoint left it:
    ``(method, config, step)``."""
    config_file = run_path / "config.yaml"
    if not config_file.is_file():
        raise ConfigError(f"{run_path}: not a pretraining run directory (no config.yaml)")
    config = load_config(PretrainConfig, config_file)
    checkpoint = latest_checkpoint(run_path / "checkpoints")
    if checkpoint is None:
        raise CheckpointError(f"{run_path / 'checkpoints'}: no training checkpoint (the decoder is kept only "
                              f"there; runs with engine.checkpoint_every_n_steps=-1 keep none)")
    tree = load_tree(checkpoint)
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
    on ``images`` images of the run's own pool (``manifest.csv``) drawn with ``seed``."""
    method, config, step = method_from_run(run_path)
    if not hasattr(method, "reconstruction_figure"):
        raise ConfigError(f"{run_path}: a {config.method_name} run has no reconstructions (an mae run has)")
    manifest = Manifest.load(run_path / "manifest.csv")
    rows = sample_rows(len(manifest), images, seed)
    prepared = Cache(config.data[0].cache_dir).prepare(manifest.subset(rows), config.preprocess, workers=1,
                                                       mask_columns=[])
    dataset = ImageDataset(prepared)
    x = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
    title = f"{config.method_name}, step {step}, mask ratio {config.method.get('mask_ratio', 0.75)}"
    return method.reconstruction_figure(x, out, seed, title, [f"pool image {int(i)}" for i in rows])
