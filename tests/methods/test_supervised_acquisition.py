"""The supervised method's acquisition augmentation: off by default (inputs unchanged), on when
configured, and the same for the same generator seed."""

from __future__ import annotations

import torch

from retinassl.methods.base import build_method
from retinassl.models import build_encoder


def augmented(params: dict, seed: int) -> torch.Tensor:
    method = build_method("supervised", {"augment": "none", **params}, build_encoder("convnet", width=4))
    x = torch.linspace(0.1, 0.9, 2 * 3 * 16 * 16).reshape(2, 3, 16, 16)
    return method._augment(x, torch.Generator().manual_seed(seed))


def test_acquisition_augmentation_is_off_by_default_and_seeded() -> None:
    x = torch.linspace(0.1, 0.9, 2 * 3 * 16 * 16).reshape(2, 3, 16, 16)
    assert torch.equal(augmented({}, 0), x)
    on = {"acquisition": {"gamma_probability": 1.0, "blur_probability": 1.0}}
    a, b, c = augmented(on, 0), augmented(on, 0), augmented(on, 1)
    assert not torch.equal(a, x) and torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1


def test_acquisition_augmentation_on_z_scored_images_is_refused_before_anything_runs() -> None:
    """It clips to [0, 1]: on z-scored inputs the training images would lose every value below the mean
    while validation and test images keep theirs (such a training ended at a constant model)."""
    import pytest

    from retinassl.config import validate
    from retinassl.errors import ConfigError
    from retinassl.jobs.patch_config import SemisupTrainConfig, SSLGANExperimentConfig
    from retinassl.jobs.train import TrainConfig

    on = {"name": "supervised", "acquisition": {"gamma_probability": 0.5}}
    off = {"name": "supervised", "acquisition": {"gamma_probability": 0.0}}
    for normalize in ("image", "imagenet"):
        with pytest.raises(ConfigError, match=rf"method\.acquisition .*'{normalize}'"):
            validate(TrainConfig, {"method": on, "preprocess": {"normalize": normalize}})
        validate(TrainConfig, {"method": off, "preprocess": {"normalize": normalize}})  # off: nothing clipped
    for normalize in ("max", "unit"):
        validate(TrainConfig, {"method": on, "preprocess": {"normalize": normalize}})
    with pytest.raises(ConfigError, match=r"learner\.method\.acquisition"):
        validate(SemisupTrainConfig, {"learner": {"method": {**on, "name": "ssl-gan"}},
                                      "preprocess": {"normalize": "image"}})
    with pytest.raises(ConfigError, match=r"learners\.cnn\.method\.acquisition"):
        validate(SSLGANExperimentConfig, {"learners": {"cnn": {"method": on}}, "reference": "cnn", "baselines": [],
                                          "preprocess": {"normalize": "image"}})
    # a published model brings its own normalisation (RETFound-Green: mean/std 0.5), whatever preprocess says
    with pytest.raises(ConfigError, match=r"(?s)published model 'retfound-green'.*augmentation off"):
        validate(TrainConfig, {"method": on, "preprocess": {"normalize": "max"},
                               "model": {"weights": "retfound-green"}})
    # probabilities given as strings are numbers to the method, and to the check
    with pytest.raises(ConfigError, match=r"method\.acquisition"):
        validate(TrainConfig, {"method": {**on, "acquisition": {"gamma_probability": "0.5"}},
                               "preprocess": {"normalize": "image"}})
    # supervised pretraining ("Fundus" pretraining) runs the same augmentation
    from retinassl.jobs.pretrain import PretrainConfig

    with pytest.raises(ConfigError, match=r"method\.acquisition .*'imagenet'"):
        validate(PretrainConfig, {"method": on, "label": "abnormal",
                                  "preprocess": {"normalize": "imagenet"}})
    # an SSL-GAN experiment checks the learners it trains, not one it only defines
    unused = {"cnn": {"method": {"name": "supervised"}}, "spare": {"method": on}}
    validate(SSLGANExperimentConfig, {"learners": unused, "reference": "cnn", "baselines": [],
                                      "preprocess": {"normalize": "image"}})
