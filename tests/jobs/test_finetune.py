"""Fine-tuning: validation carved from the labelled subset, early stopping, saved classifiers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from retinassl.config import EngineConfig, ModelConfig
from retinassl.data.cache import PreparedData
from retinassl.data.splits import carve_validation
from retinassl.jobs.finetune import (FinetuneConfig, finetune, load_classifier,
                                         predict, save_classifier)
from retinassl.metrics.tasks import TaskSpec

REFERABLE = TaskSpec(name="referable", label="dr_grade", positive_from=2)


def test_carve_validation_stratified_grouped_or_none() -> None:
    strata = np.array([0] * 10 + [1] * 10)
    groups = [f"p{i // 2}" for i in range(20)]  # two images per patient
    fit, val = carve_validation(strata, groups, 0.2, seed=0)
    assert sorted(np.r_[fit, val]) == list(range(20))
    assert set(strata[val]) == {0, 1} and len(val) == 4            # one patient (2 images) per class
    assert not {groups[i] for i in fit} & {groups[i] for i in val}  # patients never split
    assert np.array_equal(val, carve_validation(strata, groups, 0.2, seed=0)[1])
    # one example of a class: it stays in training; the other class alone cannot validate
    fit, val = carve_validation(np.array([0, 0, 0, 1]), None, 0.5, seed=0)
    assert len(val) == 0 and len(fit) == 4
    # a singleton class stays in the fitted part, the others still validate
    fit, val = carve_validation(np.array([0, 0, 1, 1, 2]), None, 0.5, seed=1)
    assert 4 in fit and set(np.array([0, 0, 1, 1, 2])[val]) == {0, 1}
    # items always fitted (with their groups): the others carved as if they were all there is
    kept = np.zeros(20, dtype=bool)
    kept[[0, 13]] = True                                            # patients p0 and p6
    fit, val = carve_validation(strata, groups, 0.2, seed=0, always_fitted=kept)
    assert {0, 1, 12, 13} <= set(fit) and sorted(np.r_[fit, val]) == list(range(20))
    free = np.array([i for i in range(20) if i not in (0, 1, 12, 13)])
    f2, v2 = carve_validation(strata[free], [groups[i] for i in free], 0.2, seed=0)
    assert np.array_equal(val, free[v2]) and np.array_equal(fit, np.sort(np.r_[free[f2], [0, 1, 12, 13]]))
    assert np.array_equal(carve_validation(strata, groups, 0.2, 0, np.zeros(20, dtype=bool))[1],
                          carve_validation(strata, groups, 0.2, 0)[1])


def test_finetune_early_stops_without_checkpoints(tiny_prepared: PreparedData, tmp_path: Path) -> None:
    split = tiny_prepared.manifest.frame["split"].to_numpy()
    train, test = np.flatnonzero(split != "test"), np.flatnonzero(split == "test")
    model = ModelConfig(arch="convnet", kwargs={"width": 8})
    # lr 0: the validation loss never improves after the first validation -> stop after `patience`
    config = FinetuneConfig(lr=1e-12, epochs=50, min_steps=1, max_steps=200, val_every_steps=1,
                            patience=2, augment="none")
    engine = EngineConfig(batch_size=16, checkpoint_every_n_steps=-1, precision="32")
    result = finetune(model, tiny_prepared, train, test, REFERABLE, config, engine, tmp_path / "w", seed=0)
    per_epoch = (len(train) - len(result.val_rows)) // 16
    # images the encoder's pretraining read the labels of are never validated on (nor their patients')
    never = np.zeros(len(split), dtype=bool)
    never[result.val_rows[:2]] = True
    other = finetune(model, tiny_prepared, train, test, REFERABLE, config, engine, tmp_path / "w0", seed=0,
                     never_held_out=never)
    assert len(other.val_rows) > 0 and not set(other.val_rows) & set(result.val_rows[:2])
    patients = tiny_prepared.manifest.frame["patient"].astype(str).to_numpy()
    assert not (set(patients[other.val_rows]) & set(patients[never])) - {""}
    assert len(result.val_rows) > 0 and result.steps < 50 * per_epoch
    assert result.steps <= 4 * per_epoch
    assert not list((tmp_path / "w" / "checkpoints").glob("step-*.json"))
    assert result.scores.shape == (len(test),) and np.all((result.scores >= 0) & (result.scores <= 1))
    # a saved classifier predicts exactly what the trained one does
    save_classifier(tmp_path / "model", result.method, arch="convnet", kwargs={"width": 8},
                    preprocess=tiny_prepared.config.model_dump(), task=REFERABLE)
    method, task, _ = load_classifier(tmp_path / "model")
    assert task == REFERABLE
    np.testing.assert_allclose(predict(method, tiny_prepared, test), result.scores, atol=1e-6)
    # the same seed gives the same scratch initialisation (not the global RNG state)
    torch.manual_seed(123)
    again = finetune(model, tiny_prepared, train, test, REFERABLE, config, engine, tmp_path / "w2", seed=0)
    np.testing.assert_allclose(again.scores, result.scores, atol=1e-6)


def test_probe_head_is_the_fitted_probe_as_a_linear_layer_on_raw_embeddings() -> None:
    """LP-FT's head: the standardised logistic regression folded into one linear layer gives the
    same logits (binary) and probabilities (multiclass, a class absent from the rows near 0) as
    scikit-learn's scaler + logistic pipeline."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from retinassl.jobs.probe import ProbeConfig, probe_head

    rng = np.random.default_rng(0)
    x = rng.normal(3.0, [0.1, 1.0, 5.0, 2.0], size=(60, 4))
    y = (x[:, 1] + 0.2 * x[:, 2] + rng.normal(0, 0.5, 60) > 3.6).astype(int)
    config = ProbeConfig(c_grid=[0.5], c_default=0.5)
    weight, bias = probe_head(x, y, TaskSpec(name="b"), 1, config)
    reference = make_pipeline(StandardScaler(), LogisticRegression(C=0.5, max_iter=3000)).fit(x, y)
    np.testing.assert_allclose(x @ weight.T[:, 0] + bias[0], reference.decision_function(x), atol=1e-6)

    y3 = np.digitize(x[:, 1], [2.5, 3.5])
    y3 = np.where(y3 == 2, 3, y3)  # classes 0, 1, 3: class 2 absent
    assert set(y3) == {0, 1, 3}
    task = TaskSpec(name="grade", kind="multiclass", num_classes=4)
    weight, bias = probe_head(x, y3, task, 4, config)
    logits = x @ weight.T + bias
    proba = np.exp(logits - logits.max(1, keepdims=True))
    proba /= proba.sum(1, keepdims=True)
    reference = make_pipeline(StandardScaler(), LogisticRegression(C=0.5, max_iter=3000)).fit(x, y3)
    np.testing.assert_allclose(proba[:, [0, 1, 3]], reference.predict_proba(x), atol=1e-5)
    assert proba[:, 2].max() < 1e-9


def test_finetune_with_a_probe_head_starts_where_the_linear_probe_ends(tiny_prepared: PreparedData, tmp_path: Path,
                                                                       monkeypatch) -> None:
    """``head_init: probe``: before any optimizer step the classifier scores the test rows as the
    linear probe of the initial encoder's embeddings of the fitted rows does (fit_probe, computed
    apart); ``random`` does not."""
    from types import SimpleNamespace

    from retinassl.jobs import finetune as finetune_module
    from retinassl.jobs.features import embed
    from retinassl.jobs.probe import ProbeConfig, fit_probe

    monkeypatch.setattr(finetune_module, "fit",
                        lambda *a, **k: SimpleNamespace(batches=0, seconds=0.0, best={}, precision="32-true"))
    split = tiny_prepared.manifest.frame["split"].to_numpy()
    train, test = np.flatnonzero(split != "test"), np.flatnonzero(split == "test")
    model = ModelConfig(arch="convnet", kwargs={"width": 8})
    engine = EngineConfig(batch_size=16, checkpoint_every_n_steps=-1, precision="32")
    settings = ProbeConfig(c_grid=[0.05], c_default=0.05)  # the sweep's probe settings are the head's
    probe = finetune(model, tiny_prepared, train, test, REFERABLE, FinetuneConfig(head_init="probe"), engine,
                     tmp_path / "p", seed=3, probe=settings)
    assert probe.method.config.pos_weight is not None  # class_balance: the probe is weighted alike
    features = embed(probe.method.encoder, tiny_prepared.subset(np.r_[probe.fit_rows, test])).astype(np.float64)
    y = REFERABLE.targets(tiny_prepared.manifest)[probe.fit_rows]
    fitted, tested = features[:len(probe.fit_rows)], features[len(probe.fit_rows):]
    expected, _ = fit_probe(fitted, y, tested, REFERABLE, 1, settings.model_copy(update={"class_weight": "balanced"}),
                            seed=3)
    unweighted, _ = fit_probe(fitted, y, tested, REFERABLE, 1, settings, seed=3)
    default, _ = fit_probe(fitted, y, tested, REFERABLE, 1, ProbeConfig(class_weight="balanced"), seed=3)
    # the weighting and the settings matter on these rows
    assert min(np.abs(unweighted - expected).max(), np.abs(default - expected).max()) > 0.01
    fc = probe.method.head.fc  # the head (float32 weights) read in float64: the probe up to the weights' rounding
    logits = features[len(probe.fit_rows):] @ fc.weight.detach().double().numpy().T + fc.bias.detach().double().numpy()
    np.testing.assert_allclose(1 / (1 + np.exp(-logits[:, 0])), expected, atol=3e-3)
    # through the float32 network: the same up to float32 rounding of the folded standardisation
    np.testing.assert_allclose(probe.scores, expected, atol=0.02)
    random = finetune(model, tiny_prepared, train, test, REFERABLE, FinetuneConfig(), engine, tmp_path / "r", seed=3)
    assert np.abs(random.scores - expected).max() > 0.2


def test_a_probe_head_with_frozen_batch_norm_trains_from_the_probes_logits(tiny_prepared: PreparedData) -> None:
    """With ``head_init: probe`` the batch-norm layers are frozen by default: in training mode the
    network gives the eval-mode logits the probe was fitted to (with batch statistics it does not),
    and an optimizer step trains the layers' scale and shift but leaves their running statistics."""
    from retinassl.data.datasets import ImageDataset
    from retinassl.jobs.finetune import build_classifier

    model = ModelConfig(arch="convnet", kwargs={"width": 8, "batch_norm": True, "dropout": False,
                                                "weight_norm": False})
    dataset = ImageDataset(tiny_prepared)
    x = torch.stack([dataset[i]["image"] for i in range(8)])
    outputs = {}
    for name, config in {"lpft": FinetuneConfig(head_init="probe"), "batch": FinetuneConfig(),
                         "frozen": FinetuneConfig(batch_norm="frozen")}.items():
        method, _ = build_classifier(model, REFERABLE, tiny_prepared, config, seed=0, pos_weight=2.0)
        with torch.no_grad():
            method.eval()
            evaluated = method(x)
            method.train()
            trained = method(x)
        outputs[name] = (method, evaluated, trained)
    assert outputs["lpft"][0].config.batch_norm == "frozen" and outputs["batch"][0].config.batch_norm == "batch"
    method, evaluated, trained = outputs["lpft"]
    torch.testing.assert_close(trained, evaluated)
    _, evaluated, trained = outputs["batch"]
    assert (trained - evaluated).abs().max() > 1e-2
    method = outputs["frozen"][0]
    norms = [m for m in method.encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and not any(m.training for m in norms) and method.head.training
    before = [(m.running_mean.clone(), m.running_var.clone(), m.weight.detach().clone()) for m in norms]
    optimizer = torch.optim.SGD(method.parameters(), lr=0.1)
    method(x).pow(2).mean().backward()
    optimizer.step()
    for m, (mean, var, weight) in zip(norms, before):
        assert torch.equal(m.running_mean, mean) and torch.equal(m.running_var, var)
    assert any(not torch.equal(m.weight, weight) for m, (_, _, weight) in zip(norms, before))


def test_frozen_batch_norm_holds_through_a_real_fine_tuning(tiny_prepared: PreparedData, tmp_path: Path) -> None:
    """Through the engine (Lightning, validation passes in between, the probe head's embedding pass
    before): with ``batch_norm: frozen`` the running statistics end as they started while the
    layers' scale and shift trained; with ``batch`` the statistics move."""
    split = tiny_prepared.manifest.frame["split"].to_numpy()
    train, test = np.flatnonzero(split != "test"), np.flatnonzero(split == "test")
    model = ModelConfig(arch="convnet", kwargs={"width": 8, "batch_norm": True})
    engine = EngineConfig(batch_size=8, checkpoint_every_n_steps=-1, precision="32")
    ends = {}
    for mode, config in {"frozen": FinetuneConfig(head_init="probe", lr=1e-2), "batch": FinetuneConfig(lr=1e-2)}.items():
        config = config.model_copy(update={"epochs": 1, "min_steps": 4, "max_steps": 4, "val_every_steps": 2,
                                           "patience": 0, "augment": "none"})
        torch.manual_seed(0)
        start, _ = __import__("retinassl.jobs.finetune", fromlist=["build_classifier"]).build_classifier(
            model, REFERABLE, tiny_prepared, config, seed=1)
        result = finetune(model, tiny_prepared, train, test, REFERABLE, config, engine, tmp_path / mode, seed=1)
        assert result.steps == 4
        norms = lambda m: [x for x in m.encoder.modules() if isinstance(x, torch.nn.BatchNorm2d)]  # noqa: E731
        pairs = list(zip(norms(start), norms(result.method)))
        assert pairs
        ends[mode] = (all(torch.equal(a.running_mean, b.running_mean) and torch.equal(a.running_var, b.running_var)
                          for a, b in pairs),
                      any(not torch.equal(a.weight, b.weight) for a, b in pairs))
    assert ends["frozen"] == (True, True)    # statistics kept, scale/shift trained
    assert ends["batch"] == (False, True)
