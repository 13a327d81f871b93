"""Every registered method (pretext tasks, supervised, cross-modal, the SSL-GAN, vessel and OCT layer
segmentation) on a tiny input (timm's test_models style): finite loss, a
gradient on every trainable parameter, identical loss for identical generator seeds and a different
loss for different seeds, and an exact encoder checkpoint round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from retinassl.models.checkpoint import load_encoder, save_encoder
from retinassl.methods.base import build_method, method_names
from retinassl.models import build_encoder

SIZE = 64
ENCODER = {"arch": "convnet", "kwargs": {"width": 8, "dropout": False}}
# segmentation methods need an encoder with a feature pyramid (the U-Net decoder reads every level)
ENCODERS: dict[str, dict] = {
    "segmentation": {"arch": "unet", "kwargs": {"in_channels": 1, "channels": [4, 8, 16]}},
    "oct-layers": {"arch": "unet", "kwargs": {"in_channels": 1, "channels": [4, 8, 16]}},
    "mae": {"arch": "vit", "kwargs": {"embed_dim": 32, "depth": 2, "num_heads": 2, "patch_size": 16,
                                      "img_size": 64}},
}
# Tiny heads for speed; a method missing here runs with its defaults.
TINY: dict[str, dict] = {
    "relative_position": {"patch_size": 32},
    "offset_heatmap": {"patch_size": 32, "hidden": 32, "heatmap_size": 7},
    "inpainting": {"adversarial": 0.001, "decoder_width": 32, "bottleneck": 8, "discriminator_width": 8},
    "autoencoder": {"decoder_width": 32, "bottleneck": 8},
    "simclr": {"projection_hidden": 32, "projection_dim": 16},
    "ssl-gan": {"generator_channels": [32, 16, 8, 8], "latent_dim": 16, "patch_size": 32,
                "collapse_every": 0},
    "segmentation": {"patch_size": 32, "patches_per_image": 2},
    "oct-layers": {},
    "mae": {"decoder_dim": 16, "decoder_depth": 1, "decoder_heads": 2},
}
METHODS = method_names()


def encoder_spec(name: str) -> dict:
    return ENCODERS.get(name, ENCODER)


def make_method(name: str):
    torch.manual_seed(0)
    spec = encoder_spec(name)
    encoder = build_encoder(spec["arch"], **spec["kwargs"])
    return build_method(name, TINY.get(name, {}), encoder)


def make_batch(name: str = "") -> dict:
    g = torch.Generator().manual_seed(123)
    batch = {"image": torch.rand(4, 3, SIZE, SIZE, generator=g), "label": torch.tensor([0, 1, 0, 1]),
             "index": torch.arange(4)}
    if name == "cross-modal":  # its dataset pairs each image with a thickness map and its mask
        batch["target"] = 200 + 100 * torch.rand(4, 1, SIZE, SIZE, generator=g)
        batch["mask"] = (torch.rand(4, 1, SIZE, SIZE, generator=g) > 0.3).float()
    if name == "ssl-gan":  # labelled and unlabelled patches
        batch = {"labelled": torch.rand(4, 3, 32, 32, generator=g), "label": torch.tensor([0, 1, 0, 1]),
                 "unlabelled": torch.rand(4, 3, 32, 32, generator=g), "image": torch.rand(4, 3, 32, 32, generator=g)}
    if name == "segmentation":  # whole images with vessel and field-of-view masks
        batch = {"image": torch.rand(2, 1, SIZE, SIZE, generator=g),
                 "target": (torch.rand(2, 1, SIZE, SIZE, generator=g) > 0.8).float(),
                 "fov": torch.ones(2, 1, SIZE, SIZE)}
    if name == "oct-layers":  # B-scans and their region labels (0..K)
        rows = torch.arange(SIZE)[:, None].expand(SIZE, SIZE)
        label = (rows >= 20).long() + (rows >= 40).long()
        batch = {"image": torch.rand(2, 1, SIZE, SIZE, generator=g), "label": label.expand(2, SIZE, SIZE).clone()}
    return batch


def step_losses(method, batch: dict, seed: int, backward: bool = False) -> dict[str, torch.Tensor]:
    """The loss of every optimizer group on one batch, called in order with one generator, as the
    engine does; with ``backward``, check that each group's parameters get finite gradients."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    losses = {}
    for group, optimizer in method.configure_optimizers().items():
        method.zero_grad(set_to_none=True)
        with torch.set_grad_enabled(backward):
            loss, metrics = method.loss(batch, group, generator)
        assert all(isinstance(v, float) for v in metrics.values())
        assert loss.ndim == 0 and torch.isfinite(loss), f"{method.name}/{group}: loss {loss}"
        if backward:
            loss.backward()
            for param_group in optimizer.param_groups:
                for p in param_group["params"]:
                    assert p.grad is not None, \
                        f"{method.name}/{group}: a parameter of shape {tuple(p.shape)} got no gradient"
                    assert torch.isfinite(p.grad).all()
        losses[group] = loss.detach()
    return losses


def test_every_method_is_registered() -> None:
    expected = {"rotation", "relative_position", "offset_heatmap", "inpainting", "autoencoder",
                "simclr", "supervised", "cross-modal", "ssl-gan", "segmentation", "oct-layers", "mae"}
    assert expected <= set(METHODS)


@pytest.mark.parametrize("name", METHODS)
def test_loss_gradients_and_seeds(name: str) -> None:
    method = make_method(name)
    method.train()
    batch = make_batch(name)
    first = step_losses(method, batch, seed=1, backward=True)
    grouped = {id(p) for opt in method.configure_optimizers().values()
               for pg in opt.param_groups for p in pg["params"]}
    trainable = {id(p) for p in method.parameters() if p.requires_grad}
    assert trainable <= grouped, f"{name}: {len(trainable - grouped)} trainable parameters are in no optimizer"
    again = step_losses(method, batch, seed=1)
    other = step_losses(method, batch, seed=2)
    for group, loss in first.items():
        assert torch.equal(loss, again[group]), f"{name}/{group}: same seed gave {loss} and {again[group]}"
        assert not torch.equal(loss, other[group]), f"{name}/{group}: seeds 1 and 2 gave the same loss"


@pytest.mark.parametrize("name", METHODS)
def test_checkpoint_round_trip(name: str, tmp_path: Path) -> None:
    method = make_method(name)
    method.train()
    batch = make_batch(name)
    step_losses(method, batch, seed=3, backward=True)
    for optimizer in method.configure_optimizers().values():
        optimizer.step()  # weights and BN statistics now differ from the initialisation
    method.eval()
    spec = encoder_spec(name)
    save_encoder(tmp_path / "encoder", method.encoder, arch=spec["arch"], kwargs=spec["kwargs"],
                 preprocess={"size": SIZE}, method=name, config=TINY.get(name, {}), data_fingerprint="test")
    encoder, meta = load_encoder(tmp_path / "encoder")
    encoder.eval()
    assert meta["method"] == name and meta["arch"] == spec["arch"]
    x = batch["image"]
    with torch.no_grad():
        assert torch.equal(method.encoder(x), encoder(x))
        assert torch.equal(method.encoder.forward_features(x), encoder.forward_features(x))
