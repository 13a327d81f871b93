"""The ssl-gan method: gradients reach the right networks, identical seeds give identical losses,
a smoke training through the engine (finite losses, checkpoint, exact resume), the collapsed-
generator stop, and the patch classifier it leaves behind."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from retinassl.config import EngineConfig
from retinassl.engine.checkpoints import latest_checkpoint
from retinassl.engine.fit import fit
from retinassl.errors import TrainingDiverged
from retinassl.methods.base import build_method
from retinassl.models import build_encoder
from retinassl.io.rundir import RunDir
from retinassl.io.tree import load_tree, save_tree
from retinassl.models.patch_classifier import PatchClassifier
from retinassl.data.patch_bank import PatchBank, SemiSupervisedPatches


def tiny_method(**params):
    encoder = build_encoder("convnet", width=4, weight_norm=True, dropout=True)
    return build_method("ssl-gan", {"generator_channels": [8, 8, 4, 4], "latent_dim": 8,
                                    "init_seed": 1, **params}, encoder)


def tiny_dataset(n_images: int = 2, margin: int = 2) -> SemiSupervisedPatches:
    rng = np.random.default_rng(0)
    w = 32 + 2 * margin
    windows = torch.from_numpy(rng.integers(0, 256, (n_images * 64, 3, w, w), dtype=np.uint8))
    labels = (rng.random(n_images * 64) < 0.3).astype(np.int64)
    bank = PatchBank(windows, torch.full((n_images, 3), 1 / 255.0), torch.zeros(n_images, 3), labels,
                     np.arange(n_images), 8, 32, margin)
    return SemiSupervisedPatches(bank, bank.images([0]), seed=0)


def batch_of(data: SemiSupervisedPatches, n: int = 8) -> dict:
    items = [data[i] for i in range(n)]
    return {k: torch.stack([torch.as_tensor(it[k]) for it in items]) for k in items[0]}


def test_gradients_reach_only_the_network_being_trained() -> None:
    method = tiny_method()
    batch = batch_of(tiny_dataset())
    d_params = [*method.encoder.parameters(), *method.head.parameters()]
    loss, metrics = method.loss(batch, "discriminator", torch.Generator().manual_seed(0))
    loss.backward()
    assert math.isfinite(float(loss.detach())) and {"l_supervised", "l_unsupervised"} <= set(metrics)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in d_params)
    assert all(p.grad is None for p in method.generator_net.parameters())
    for p in d_params:
        p.grad = None
    loss, _ = method.loss(batch, "generator", torch.Generator().manual_seed(0))
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.generator_net.parameters())
    assert all(p.grad is None for p in d_params)
    assert all(not p.requires_grad for p in [*method.ema_encoder.parameters(), *method.ema_head.parameters()])


def test_same_seed_same_loss() -> None:
    batch = batch_of(tiny_dataset())
    values = []
    for _ in range(2):
        torch.manual_seed(0)  # dropout (the engine reseeds it per batch)
        method = tiny_method()
        values.append(float(method.loss(batch, "discriminator", torch.Generator().manual_seed(5))[0].detach()))
    assert values[0] == values[1]


def test_gaussian_initialisation() -> None:
    method = tiny_method(init_std=0.05)
    w = method.generator_net.dense[0].weight
    assert abs(float(w.std()) - 0.05) < 0.01 and float(method.generator_net.dense[0].bias.abs().sum()) == 0
    conv = method.encoder.block1[2]   # weight-normalised: effective weight ~ N(0, 0.05)
    assert abs(float(conv.weight.std()) - 0.05) < 0.01


def test_data_dependent_init_normalises_every_weight_normalised_layer() -> None:
    from torch import nn

    from retinassl.models.gan import data_dependent_init
    torch.manual_seed(0)
    encoder = build_encoder("convnet", width=4, weight_norm=True, dropout=False)
    net = nn.Sequential(encoder, nn.utils.parametrizations.weight_norm(nn.Linear(encoder.num_features, 2)))
    x = torch.rand(32, 3, 32, 32) * 2 - 1
    assert data_dependent_init(net, x, scale=1.0, last_scale=0.1) == 11  # 10 convs (2 of them NiN) + head
    outputs = []       # after the init, a plain forward pass: every layer's output over the batch
    hooks = [m.register_forward_hook(lambda _m, _i, o: outputs.append(o.detach()))
             for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    net(x)
    for h in hooks:
        h.remove()
    assert len(outputs) == 11
    for out in outputs[:-1]:
        per_channel = out.transpose(0, 1).reshape(out.shape[1], -1)
        assert torch.allclose(per_channel.mean(1), torch.zeros(out.shape[1]), atol=1e-4)
        assert torch.allclose(per_channel.std(1), torch.ones(out.shape[1]), atol=1e-3)
    assert torch.allclose(outputs[-1].std(0), torch.full((2,), 0.1), atol=1e-4)


def test_discriminator_is_data_initialised_once_on_the_first_step() -> None:
    method = tiny_method()
    before = method.head.parametrizations.weight.original0.clone()
    batch = batch_of(tiny_dataset())
    method.loss(batch, "discriminator", torch.Generator().manual_seed(0))
    after = method.head.parametrizations.weight.original0.clone()
    assert bool(method.data_initialised) and not torch.equal(before, after)
    assert torch.equal(method.ema_head.parametrizations.weight.original0, after)  # EMA starts there
    method.loss(batch, "discriminator", torch.Generator().manual_seed(0))
    assert torch.equal(method.head.parametrizations.weight.original0, after)  # not again
    assert bool(tiny_method(data_init=False).data_initialised)  # nothing left to initialise


def _run(tmp: Path, steps: int, resume: bool = False, fail_at: int = 0, **params) -> torch.nn.Module:
    method = tiny_method(**params)
    if fail_at:
        loss = method.loss
        calls = []

        def failing(batch, group, generator):
            calls.append(group)
            if len(calls) > 2 * (fail_at - 1):
                raise RuntimeError("killed")
            return loss(batch, group, generator)

        method.loss = failing  # type: ignore[method-assign]
    run = RunDir(tmp)
    if not (tmp / "run.json").is_file():
        run.update_status(status="running")
    cfg = EngineConfig(max_epochs=50, max_steps=steps, batch_size=16, precision="32",
                       checkpoint_every_n_steps=2, log_every_n_steps=1)
    fit(method, tiny_dataset(), config=cfg, run=run, seed=3, resume=resume)
    return method


def test_smoke_training_checkpoint_and_exact_resume(tmp_path: Path) -> None:
    straight = _run(tmp_path / "a", 5)
    assert int(straight.steps) == 5
    with pytest.raises(RuntimeError, match="killed"):
        _run(tmp_path / "b", 5, fail_at=4)           # dies during step 4; step-2 checkpoint exists
    assert latest_checkpoint(tmp_path / "b" / "checkpoints") is not None
    resumed = _run(tmp_path / "b", 5, resume=True)
    a, b = straight.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    logged = pd.read_csv(tmp_path / "a" / "logs" / "csv" / "metrics.csv")
    for column in ("train/discriminator_loss", "train/generator_loss"):
        values = logged[column].dropna().to_numpy()
        assert len(values) == 5 and np.isfinite(values).all()


def test_sample_variance_ratio_is_measured_on_the_generated_patches() -> None:
    """The pixel-space ratio: positive for the initial generator, exactly 0 once its output layer
    ignores the noise (every generated patch the same), whatever the discriminator's dropout."""
    method = tiny_method(collapse_every=1)
    batch = batch_of(tiny_dataset())
    _, metrics = method.loss(batch, "discriminator", torch.Generator().manual_seed(0))
    assert metrics["sample_variance_ratio"] > 1e-3
    assert float(method.last_sample_ratio) == metrics["sample_variance_ratio"]
    with torch.no_grad():
        out = method.generator_net.deconv[-2]
        out.parametrizations.weight.original0.zero_()          # weight-norm gain 0: weight 0
        out.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    _, metrics = method.loss(batch, "discriminator", torch.Generator().manual_seed(0))
    assert metrics["sample_variance_ratio"] == 0.0 and metrics["feature_variance_ratio"] > 0.0


def test_pull_away_weight_adds_the_term_to_the_generator_loss() -> None:
    batch = batch_of(tiny_dataset())
    torch.manual_seed(0)                                   # the discriminator's dropout
    plain, _ = tiny_method().loss(batch, "generator", torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    loss, metrics = tiny_method(pull_away_weight=2.0).loss(batch, "generator",
                                                           torch.Generator().manual_seed(0))
    assert 0 < metrics["pull_away"] <= 1
    assert abs(float(loss) - float(plain) - 2.0 * metrics["pull_away"]) < 1e-5 * max(1.0, float(loss))


def test_collapsed_generator_stops_training(tmp_path: Path) -> None:
    with pytest.raises(TrainingDiverged, match="generator collapsed"):
        _run(tmp_path, 6, collapse_ratio=1e9, collapse_patience=2, collapse_every=1)
    assert (tmp_path / "checkpoints" / "last-good-weights.safetensors").is_file()


def test_patch_classifier_folds_the_ema_head(tmp_path: Path) -> None:
    method = tiny_method()
    batch = batch_of(tiny_dataset())
    method.after_step()   # EMA moves towards the live weights
    method.eval()
    classifier = PatchClassifier.from_method(method, 32)
    cells = batch["unlabelled"][:, :, 2:34, 2:34]
    logits, _ = method.discriminate(cells * 2 - 1, ema=True)
    assert torch.allclose(classifier(cells), logits[:, 1] - logits[:, 0], atol=1e-5)
    assert torch.allclose(classifier(cells), method(cells), atol=1e-5)
    classifier.save(tmp_path / "clf", arch="convnet", kwargs={"width": 4, "weight_norm": True,
                                                             "dropout": True},
                    method="ssl-gan", preprocess={"size": 256})
    loaded, meta = PatchClassifier.load(tmp_path / "clf")
    assert meta["patch_classifier"]["input_range"] == "tanh"
    assert torch.allclose(loaded(cells), classifier(cells), atol=1e-6)


def test_balanced_ssl_gan_weights_classes_by_labelled_prevalence() -> None:
    from retinassl.config import ModelConfig
    from retinassl.jobs.patch_config import LearnerConfig
    from retinassl.jobs.patch_training import _pos_weight, build_learner_method
    model = ModelConfig(arch="convnet", kwargs={"width": 4, "weight_norm": True, "dropout": True})
    method_params = {"name": "ssl-gan", "generator_channels": [8, 8, 4, 4], "latent_dim": 8}
    labels = np.array([0, 0, 0, 1, 0, 0, 0, 1])  # 2 diseased of 8: weight 6 / 2 = 3
    balanced = LearnerConfig(method={**method_params, "balance_classes": True}, model=model)
    method, _, _ = build_learner_method(balanced, 0, _pos_weight(labels))
    assert method.config.class_weights == (1.0, 3.0)
    plain, _, _ = build_learner_method(LearnerConfig(method=method_params, model=model), 0,
                                       _pos_weight(labels))
    assert plain.config.class_weights is None
    assert _pos_weight(np.zeros(5)) is None


def test_generator_output_layer_is_data_initialised_when_asked() -> None:
    method = tiny_method(data_init_generator=True)     # init_seed 1: the init noise is seeded 2
    batch = batch_of(tiny_dataset())
    method.loss(batch, "discriminator", torch.Generator().manual_seed(0))
    z = method.generator_net.sample_latent(16, torch.Generator().manual_seed(2))  # 8 + 8 real
    captured = []
    last = method.generator_net.deconv[-2]            # the weight-normalised ConvTranspose2d
    last.register_forward_hook(lambda _m, _i, o: captured.append(o.detach()))
    with torch.no_grad():
        method.generator_net(z)                        # same noise, same batch statistics
    per_channel = captured[0].transpose(0, 1).reshape(captured[0].shape[1], -1)
    assert torch.allclose(per_channel.std(1), torch.full((per_channel.shape[0],), 0.1), atol=1e-3)
    assert torch.allclose(per_channel.mean(1), torch.zeros(per_channel.shape[0]), atol=1e-4)


@pytest.mark.parametrize("select", [True, False])
def test_select_on_validation_ends_with_the_best_validation_weights(tmp_path: Path, select: bool) -> None:
    from retinassl.data.patch_bank import LabelledPatches
    from retinassl.jobs.patch_training import Trained, training_info

    data = tiny_dataset()
    val = LabelledPatches(data.labelled)
    method = tiny_method(select_on_validation=select)
    cfg = EngineConfig(max_epochs=4, batch_size=16, precision="32", log_every_n_steps=1)
    result = fit(method, data, val=val, config=cfg, run=RunDir(tmp_path), seed=3)
    logged = pd.read_csv(tmp_path / "logs" / "csv" / "metrics.csv")["val/patch_auc"].dropna()
    assert len(logged) == 4 and logged.iloc[-1] < logged.max() - 1e-3  # the last pass is not the best
    final = _val_auc(method, val)
    info = training_info(Trained(method, None, result, "convnet", {}))  # type: ignore[arg-type]
    if select:
        assert result.best["patch_auc"] == pytest.approx(logged.max())
        assert final == pytest.approx(logged.max())   # the weights of the best pass, not the last
        epochs = pd.read_csv(tmp_path / "logs" / "csv" / "metrics.csv").dropna(subset=["val/patch_auc"])["epoch"]
        assert info["selected_epoch"] == epochs.loc[logged.idxmax()]
        assert info["selected_val_patch_auc"] == pytest.approx(final)  # recorded: what the kept weights score
    else:
        assert result.best == {} and final == pytest.approx(logged.iloc[-1])
        assert "selected_epoch" not in info and not any(k.startswith("selected_val_") for k in info)


def _val_auc(method, val) -> float:
    from retinassl.metrics.classification import roc_auc

    method.eval()
    with torch.no_grad():
        logits = method.forward(torch.stack([val[i]["image"] for i in range(len(val))]))
    return roc_auc(val.bank.labels, logits.numpy())


def _selecting_run(tmp_path: Path, epochs: int, every: int = 50):
    """A tiny SSL-GAN run that selects on validation: (data, val, config, result, logged AUCs)."""
    from retinassl.data.patch_bank import LabelledPatches

    data = tiny_dataset()
    val = LabelledPatches(data.labelled)
    cfg = EngineConfig(max_epochs=epochs, batch_size=16, precision="32", log_every_n_steps=1,
                       checkpoint_every_n_steps=every)
    first = fit(tiny_method(select_on_validation=True), data, val=val, config=cfg,
                run=RunDir(tmp_path / "first"), seed=3)
    logged = pd.read_csv(tmp_path / "first" / "logs" / "csv" / "metrics.csv")["val/patch_auc"].dropna()
    return data, val, cfg, first, logged


def _moved_checkpoints(tmp_path: Path) -> RunDir:
    """The first run's step checkpoint copied into a fresh run directory (as if on another disk)."""
    import shutil

    moved = RunDir(tmp_path / "moved")
    moved.checkpoints.mkdir(parents=True, exist_ok=True)
    for path in (tmp_path / "first" / "checkpoints").glob("step-*"):
        shutil.copy(path, moved.checkpoints / path.name)
    return moved


def test_a_resumed_run_ends_with_the_best_weights_of_its_checkpoint(tmp_path: Path) -> None:
    """The best validation weights travel in the step checkpoint: a run resumed from it (here
    after its last pass) ends with them, not with its last pass or a stray file."""
    data, val, cfg, first, logged = _selecting_run(tmp_path, epochs=4)
    assert logged.iloc[-1] < logged.max() - 1e-3
    moved = _moved_checkpoints(tmp_path)
    stray = {k: torch.zeros_like(v) for k, v in tiny_method().state_dict().items()}
    save_file(stray, str(moved.checkpoints / "best-weights.safetensors"))  # an abandoned run's file
    method = tiny_method(select_on_validation=True)
    resumed = fit(method, data, val=val, config=cfg, run=moved, seed=3, resume=True)
    assert resumed.best == first.best and resumed.batches == first.batches   # nothing retrained
    assert _val_auc(method, val) == pytest.approx(logged.max())


def test_the_last_checkpoint_holds_the_last_validation(tmp_path: Path) -> None:
    """With checkpoints every epoch's worth of steps, the checkpoint at an epoch's end is taken
    after that epoch's validation (here the best one, the last)."""
    per_epoch = len(tiny_dataset()) // 16
    data, val, cfg, first, logged = _selecting_run(tmp_path, epochs=2, every=per_epoch)
    assert logged.idxmax() == logged.index[-1] and first.best["epoch"] == 1.0
    checkpoint = load_tree(latest_checkpoint(tmp_path / "first" / "checkpoints"))
    assert checkpoint["retinassl"]["best"] == first.best
    method = tiny_method(select_on_validation=True)
    resumed = fit(method, data, val=val, config=cfg, run=_moved_checkpoints(tmp_path), seed=3, resume=True)
    assert resumed.batches == first.batches == 2 * per_epoch
    assert _val_auc(method, val) == pytest.approx(logged.max())


def test_a_run_resumed_after_its_last_step_validates_it(tmp_path: Path) -> None:
    """A run stopped by max_steps mid-epoch checkpoints its last step before the validation that
    follows it (so that a longer max_steps continues the epoch); resumed from there, it trains
    nothing and validates again, ending with the same best weights as the uninterrupted run."""
    from retinassl.data.patch_bank import LabelledPatches

    data = tiny_dataset()
    val = LabelledPatches(data.labelled)
    cfg = EngineConfig(max_epochs=5, max_steps=12, batch_size=16, precision="32", log_every_n_steps=1,
                       checkpoint_every_n_steps=2)
    first = fit(tiny_method(select_on_validation=True), data, val=val, config=cfg,
                run=RunDir(tmp_path / "first"), seed=3)
    logged = pd.read_csv(tmp_path / "first" / "logs" / "csv" / "metrics.csv")["val/patch_auc"].dropna()
    assert logged.idxmax() == logged.index[-1] and len(logged) == 2     # the last validation is the best
    checkpoint = load_tree(latest_checkpoint(tmp_path / "first" / "checkpoints"))
    assert checkpoint["retinassl"]["batches_done"] == 12 and checkpoint["retinassl"]["best"] != first.best
    method = tiny_method(select_on_validation=True)
    resumed = fit(method, data, val=val, config=cfg, run=_moved_checkpoints(tmp_path), seed=3, resume=True)
    assert resumed.batches == 12 and resumed.best == first.best
    assert _val_auc(method, val) == pytest.approx(logged.max())


@pytest.mark.parametrize("side_file", [True, False])
def test_a_checkpoint_of_the_older_format_resumes(tmp_path: Path, side_file: bool) -> None:
    """Checkpoints written before the best weights moved into them kept them in
    ``best-weights.safetensors``: a resume uses that file, or without it forgets the best epoch
    (and says so) rather than report one whose weights it does not have."""
    data, val, cfg, first, logged = _selecting_run(tmp_path, epochs=4)
    moved = _moved_checkpoints(tmp_path)
    step = latest_checkpoint(moved.checkpoints)
    tree = load_tree(step)
    best_weights = tree["retinassl"].pop("best_weights")                    # the older format
    save_tree(tree, step)
    if side_file:
        save_file({k: v.contiguous() for k, v in best_weights.items()},
                  str(moved.checkpoints / "best-weights.safetensors"))
    method = tiny_method(select_on_validation=True)
    resumed = fit(method, data, val=val, config=cfg, run=moved, seed=3, resume=True)
    if side_file:
        assert resumed.best == first.best and _val_auc(method, val) == pytest.approx(logged.max())
    else:
        assert resumed.best == {} and _val_auc(method, val) == pytest.approx(logged.iloc[-1])


def test_channel_gain_recolours_real_patches_within_the_tanh_range() -> None:
    windows = tiny_dataset().unlabelled.windows[:32].float() / 255
    plain = tiny_method()._real(windows, torch.Generator().manual_seed(0))
    gained = tiny_method(channel_gain=[0.0, 0.0, 1.0])._real(windows, torch.Generator().manual_seed(0))
    assert plain.shape == gained.shape == (32, 3, 32, 32)
    assert gained.min() >= -1 and gained.max() <= 1
    assert torch.equal(plain[:, :2], gained[:, :2]) and not torch.equal(plain[:, 2], gained[:, 2])


def test_acquisition_augmentation_changes_real_patches_reproducibly_and_off_draws_nothing() -> None:
    windows = tiny_dataset().unlabelled.windows[:32].float() / 255
    plain = tiny_method()._real(windows, torch.Generator().manual_seed(0))
    off = tiny_method(acquisition={"gamma_probability": 0.0})._real(windows, torch.Generator().manual_seed(0))
    assert torch.equal(plain, off)
    on = {"gamma_probability": 1.0, "blur_probability": 1.0}
    first = tiny_method(acquisition=on)._real(windows, torch.Generator().manual_seed(0))
    again = tiny_method(acquisition=on)._real(windows, torch.Generator().manual_seed(0))
    other = tiny_method(acquisition=on)._real(windows, torch.Generator().manual_seed(1))
    assert torch.equal(first, again) and not torch.equal(first, other) and not torch.equal(first, plain)
    assert first.min() >= -1 and first.max() <= 1


def test_validation_scores_whole_images_by_their_patches() -> None:
    method = tiny_method()
    # three images of two patches each, in shuffled order; image 1 has a diseased patch
    image = torch.tensor([2, 0, 1, 0, 2, 1])
    logits = torch.tensor([1.0, 0.0, 2.0, -2.0, 1.0, -1.0])
    labels = torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0, 0.0])
    image_label = torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0, 1.0])   # image 1 holds a diseased cell
    metrics = method.validation_metrics({"logits": logits, "label": labels, "image_index": image.float(),
                                         "image_label": image_label})
    sigmoid = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    score = [(sigmoid(0) + sigmoid(-2)) / 2, (sigmoid(2) + sigmoid(-1)) / 2, sigmoid(1)]  # 0.310, 0.575, 0.731
    assert score[0] < score[1] < score[2]          # the diseased image beats one healthy image of two
    assert metrics["image_auc"] == pytest.approx(0.5)
    assert metrics["patch_auc"] == pytest.approx(1.0)  # its diseased patch has the highest logit
    assert "image_auc" not in method.validation_metrics({"logits": logits, "label": labels})
    one_class = method.validation_metrics({"logits": logits, "label": labels, "image_index": image.float(),
                                           "image_label": torch.zeros(6)})
    assert "image_auc" not in one_class              # undefined with one class: not logged as NaN


def test_validation_refuses_images_with_missing_patches() -> None:
    # image 0 lost a patch: no image score would be the test's, and image_auc must not silently vanish
    outputs = {"logits": torch.tensor([0.0, 1.0, 2.0]), "label": torch.tensor([0.0, 0.0, 1.0]),
               "image_index": torch.tensor([0.0, 1.0, 1.0]), "image_label": torch.tensor([0.0, 1.0, 1.0])}
    with pytest.raises(ValueError, match="1 to 2 patches each"):
        tiny_method().validation_metrics(outputs)


@pytest.mark.parametrize("metric", ["image_auc", "patch_auc"])
def test_selection_follows_the_chosen_validation_metric(tmp_path: Path, metric: str) -> None:
    from retinassl.data.patch_bank import LabelledPatches

    data = tiny_dataset(n_images=6)
    val = LabelledPatches(data.unlabelled, image_labels=np.array([0, 1, 0, 1, 0, 1]))  # 6 images, every patch
    method = tiny_method(select_on_validation=True, select_metric=metric)
    assert method.monitor == (metric, "max")
    cfg = EngineConfig(max_epochs=5, batch_size=32, precision="32", log_every_n_steps=1)
    result = fit(method, data, val=val, config=cfg, run=RunDir(tmp_path), seed=0)
    logged = pd.read_csv(tmp_path / "logs" / "csv" / "metrics.csv").dropna(subset=["val/image_auc"])
    best = {m: logged.loc[logged[f"val/{m}"].idxmax(), "epoch"] for m in ("image_auc", "patch_auc")}
    assert len(logged) == 5 and best["image_auc"] != best["patch_auc"]   # the two metrics peak apart here
    assert result.best["epoch"] == best[metric] and result.best[metric] == pytest.approx(logged[f"val/{metric}"].max())


def test_select_metric_without_selection_is_refused() -> None:
    from retinassl.errors import ConfigError

    with pytest.raises(ConfigError, match="select_on_validation"):
        tiny_method(select_metric="image_auc")
