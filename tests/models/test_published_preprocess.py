"""A published model's normalisation and input size travel with it: the ``meanstd`` normalisation,
``model.weights`` setting the architecture and the preprocessing, and the round trip through a
saved classifier's JSON back to the network inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from retinassl.config import ModelConfig
from retinassl.data.cache import Cache
from retinassl.data.datasets import ImageDataset
from retinassl.data.manifest import Manifest
from retinassl.data.preprocess import PreprocessConfig, normalize
from retinassl.data.synthetic import generate_dataset
from retinassl.errors import ConfigError
from retinassl.models.initialize import initial_encoder
from retinassl.models.published import published_meta, published_model, published_preprocess, with_published
from retinassl.models.vit_weights import KNOWN_WEIGHTS, KnownWeights

PIXELS = np.array([[[0, 51, 255], [255, 102, 0]]], dtype=np.uint8)  # (1, 2, 3)


def test_meanstd_normalisation_and_its_validation() -> None:
    half = PreprocessConfig(normalize="meanstd", normalize_mean=(0.5,), normalize_std=(0.5,))
    out = normalize(PIXELS, half.normalization())
    expected = np.array([[[-1.0, 1.0]], [[-0.6, -0.2]], [[1.0, -1.0]]], dtype=np.float32)  # (x/255 - .5)/.5
    assert out.shape == (3, 1, 2) and np.allclose(out, expected, atol=1e-6)
    per_channel = PreprocessConfig(normalize="meanstd", normalize_mean=(0.485, 0.456, 0.406),
                                   normalize_std=(0.229, 0.224, 0.225))
    assert np.array_equal(normalize(PIXELS, per_channel.normalization()), normalize(PIXELS, "imagenet"))
    with pytest.raises(ValueError, match="normalize_mean"):
        PreprocessConfig(normalize="meanstd")
    with pytest.raises(ValueError, match="1 or 3"):
        PreprocessConfig(normalize="meanstd", normalize_mean=(0.5, 0.5), normalize_std=(0.5,))
    with pytest.raises(ValueError, match="only with"):
        PreprocessConfig(normalize="imagenet", normalize_mean=(0.5,), normalize_std=(0.5,))
    with pytest.raises(ValueError, match="meanstd"):
        normalize(PIXELS, "meanstd")                        # a bare mode has no constants
    # normalisation never changes the cached pixels: the cache keys are those of before the mode
    assert PreprocessConfig(size=32).cache_key() == "6f033285fbaf"
    assert PreprocessConfig(size=392, normalize="imagenet", clahe=True).cache_key() == "56d154ff3ec4"
    assert PreprocessConfig(size=392, clahe=True, normalize="meanstd", normalize_mean=(0.5,),
                            normalize_std=(0.5,)).cache_key() == "56d154ff3ec4"


def test_model_weights_sets_architecture_and_preprocessing() -> None:
    base = PreprocessConfig(size=128, normalize="max", clahe=True)
    green = ModelConfig(weights="retfound-green", arch="vit_small", kwargs={"drop_path": 0.1})
    pre = published_preprocess(green, base)
    assert (pre.size, pre.normalize, pre.normalize_mean, pre.normalize_std) == (392, "meanstd", (0.5,) * 3, (0.5,) * 3)
    assert pre.clahe                                       # the rest is left as it was
    mae = published_preprocess(ModelConfig(weights="retfound-mae"), base)
    assert (mae.size, mae.normalize, mae.normalize_mean) == (224, "imagenet", None)
    assert published_preprocess(ModelConfig(), base) == base and published_model(ModelConfig()) == ModelConfig()
    model = published_model(green)
    assert model.arch == "vit_small" and model.kwargs == {
        "patch_size": 14, "img_size": 392, "num_register_tokens": 4, "layer_scale": 1e-5, "pooling": "mean",
        "drop_path": 0.1}
    torch.manual_seed(0)
    encoder = initial_encoder(green).encoder
    assert (encoder.num_features, encoder.patch_size, encoder.num_register_tokens, encoder.pooling) == (384, 14, 4, "mean")
    assert published_meta(green) == {"weights": {"weights": "retfound-green", "size": 392, "mean": [0.5] * 3,
                                                 "std": [0.5] * 3, "normalize": "meanstd"}}
    # a preset's architecture is replaced with its arguments; the default one too
    for arch in ("resnet18", ModelConfig().arch):
        replaced = published_model(ModelConfig(weights="retfound-green", arch=arch, kwargs={"width": 8}))
        assert (replaced.arch, replaced.kwargs) == ("vit_small", KNOWN_WEIGHTS["retfound-green"].kwargs)
    with pytest.raises(ConfigError, match="retfound-green"):
        published_model(ModelConfig(weights="retfound-blue"))


def test_published_normalisation_round_trips_through_a_saved_classifier(tmp_path) -> None:
    from retinassl.jobs.finetune import load_classifier, save_classifier
    from retinassl.jobs.predict import model_preprocess
    from retinassl.methods.base import build_method
    from retinassl.metrics.tasks import TaskSpec
    from retinassl.models import build_encoder
    from retinassl.sweeps.transfer_config import resolve_config

    green = ModelConfig(weights="retfound-green")
    preprocess = published_preprocess(green, PreprocessConfig(size=32)).model_copy(update={"size": 28})
    torch.manual_seed(0)
    kwargs = {"embed_dim": 8, "depth": 1, "num_heads": 2, "patch_size": 14, "img_size": 28}
    method = build_method("supervised", {"task": "binary"}, build_encoder("vit", **kwargs))
    task = TaskSpec(name="dr", label="grade", positive_from=1)
    save_classifier(tmp_path / "clf", method, arch="vit", kwargs=kwargs, preprocess=preprocess.model_dump(),
                    task=task, extra=published_meta(green))
    meta = json.loads((tmp_path / "clf" / "model.json").read_text())
    assert meta["weights"]["weights"] == "retfound-green"
    assert meta["preprocess"]["normalize_mean"] == [0.5] * 3 and meta["preprocess"]["normalize_std"] == [0.5] * 3
    _, _, loaded = load_classifier(tmp_path / "clf")
    recorded = model_preprocess(loaded)
    assert recorded == preprocess
    # the inputs the recorded preprocessing gives are (pixels / 255 - 0.5) / 0.5
    generate_dataset(tmp_path / "data", n_images=2, size=40, seed=1)
    prepared = Cache(tmp_path / "cache").prepare(Manifest.load(tmp_path / "data" / "manifest.csv"), recorded)
    pixels = np.asarray(prepared.entries[0].image(), dtype=np.float32)          # (28, 28, 3) uint8 values
    image = ImageDataset(prepared)[0]["image"].numpy()
    assert np.allclose(image, (pixels.transpose(2, 0, 1) / 255 - 0.5) / 0.5, atol=1e-6)
    # a transfer experiment naming the weights gets the model's architecture and inputs
    config = resolve_config({"name": "t", "data": {"source": "synthetic"}, "tasks": [task.model_dump()],
                             "inits": [{"name": "green", "init": "scratch"}], "reference": "green",
                             "model": {"weights": "retfound-green"}}, None)
    assert config.model.arch == "vit_small" and config.preprocess.normalize == "meanstd"
    assert config.preprocess.size == 392


def test_pretraining_from_published_weights_records_their_inputs(tmp_path, monkeypatch) -> None:
    """``retinassl pretrain`` (a preset that sets resnet18) with ``model.weights`` naming a published
    model (a tiny stand-in entry): the ViT is built and loaded, trained on 0.5 / 0.5 inputs at the
    model's size, and the encoder JSON records them."""
    from safetensors.torch import save_file

    from retinassl.config import load_config
    from retinassl.io.rundir import RunDir
    from retinassl.jobs.pretrain import PretrainConfig, run_pretrain
    from retinassl.models import build_encoder
    from retinassl.models.checkpoint import load_encoder

    kwargs = {"embed_dim": 16, "depth": 1, "num_heads": 2, "patch_size": 8, "img_size": 32,
              "num_register_tokens": 1, "pooling": "mean"}
    monkeypatch.setitem(KNOWN_WEIGHTS, "tiny-green", KnownWeights("vit", kwargs, (0.5,) * 3, (0.5,) * 3, 32,
                                                                  "meanstd", "a test stand-in"))
    monkeypatch.setenv("RETINASSL_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    weights = tmp_path / "tiny-green.safetensors"
    save_file({k: v.contiguous() for k, v in build_encoder("vit", **kwargs).state_dict().items()}, str(weights))
    cfg = load_config(PretrainConfig, "pretrain-supervised", [
        "data.options.n_images=8", "data.options.size=64", f"data.options.out_dir={tmp_path / 'data'}",
        "preprocess.size=64", "engine.batch_size=4", "engine.precision='32'", "engine.max_steps=1",
        "model.weights=tiny-green", f"model.init={weights}", f"runs_dir={tmp_path}"])
    assert cfg.model.arch != "vit"                                   # the preset's architecture
    encoder, meta = load_encoder(run_pretrain(cfg, RunDir.create(tmp_path, "green")))
    assert meta["arch"] == "vit" and meta["kwargs"] == kwargs and meta["init"] == "external"
    assert meta["preprocess"]["size"] == 32 and meta["preprocess"]["normalize"] == "meanstd"
    assert meta["preprocess"]["normalize_mean"] == [0.5] * 3 and meta["weights"]["weights"] == "tiny-green"
    assert with_published(cfg).preprocess == PreprocessConfig.model_validate(meta["preprocess"])
