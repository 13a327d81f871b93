"""Adapting a layer model to real B-scans with graph-search pseudo-labels (jobs/oct_adapt.py): the
partial-label loss against a hand computation (inner regions merged, ignored columns without
gradient), pseudo-labels only from clean B-scans, a few steps pulling the model towards crafted
pseudo-labels, the job end to end (no file name in any output, the report's B-scan figure) and its
exact resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from retinassl.config import validate
from retinassl.data.manifest import Manifest
from retinassl.io.rundir import RunDir
from retinassl.io.saved_model import read_model
from retinassl.jobs.oct_adapt import (AdaptLayersConfig, PseudoLabelDataset, adaptation_method, agreement,
                                      graph_search_labels, pseudo_label_indices, pseudo_region_labels,
                                      run_adapt_layers, split_groups)
from retinassl.methods.oct_layers import UNRESOLVED_LABEL, partial_layer_losses

ENGINE = {"max_epochs": 100, "batch_size": 4, "precision": "32", "num_threads": 1}


def test_partial_loss_merges_inner_regions_and_ignores_columns():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 5, 6, 3, generator=g, requires_grad=True)        # K = 4 boundaries
    labels = torch.tensor([0, 0, UNRESOLVED_LABEL, UNRESOLVED_LABEL, 4, 4])[None, :, None].repeat(1, 1, 3)
    labels[0, :, 2] = -1                                                      # an undefined column
    ce, dice = partial_layer_losses(logits, labels)
    # by hand: -log p0 above, -log(p1 + p2 + p3) between, -log p4 below, over the two defined columns
    p = torch.softmax(logits.detach(), dim=1)[0].numpy()                     # (5, 6, 3)
    terms = [-np.log(p[0, r, c]) if r < 2 else -np.log(p[1:4, r, c].sum()) if r < 4 else -np.log(p[4, r, c])
             for r in range(6) for c in range(2)]
    assert float(ce.detach()) == pytest.approx(np.mean(terms), rel=1e-5)
    (ce + dice).backward()
    grad = logits.grad[0]
    assert torch.count_nonzero(grad[:, :, 2]) == 0                            # ignored column: none
    # where the inner boundaries lie carries no gradient: d loss / d l_c = (d loss / d log P_inner)
    # * q_c with q the softmax within the inner regions, so grad_c / q_c is the same for c = 1..3
    q = torch.softmax(logits.detach()[0, 1:4], dim=0)
    ratio = grad[1:4] / q
    assert torch.allclose(ratio, ratio[:1].expand_as(ratio), rtol=1e-4, atol=1e-7)
    # and the loss does not change when the inner regions' logits are permuted
    permuted = logits.detach()[:, [0, 3, 1, 2, 4]]
    ce2, dice2 = partial_layer_losses(permuted, labels)
    assert float(ce2) == pytest.approx(float(ce), rel=1e-6) and float(dice2) == pytest.approx(float(dice), rel=1e-6)
    # exact labels only: the ordinary cross-entropy
    exact = torch.tensor([0, 1, 2, 3, 4, 4])[None, :, None].repeat(1, 1, 3)
    ce3, _ = partial_layer_losses(logits.detach(), exact)
    assert float(ce3) == pytest.approx(float(F.cross_entropy(logits.detach(), exact)), rel=1e-6)


def test_pseudo_region_labels_by_hand():
    rows = np.array([[2.5, 1.5, np.nan], [5.5, 6.5, 4.0]])
    lab = pseudo_region_labels(rows, 8, 10)
    assert lab[:, 0].tolist() == [0, 0, 0, -2, -2, -2, 10, 10]
    assert lab[:, 1].tolist() == [0, 0, -2, -2, -2, -2, -2, 10]
    assert (lab[:, 2] == -1).all()
    assert pseudo_region_labels(rows, 8, 2)[:, 0].tolist() == [0, 0, 0, 1, 1, 1, 2, 2]


def test_group_split_keeps_groups_together_and_is_seeded():
    groups = [f"p{i // 3}" for i in range(30)]
    tr, va = split_groups(groups, 0.25, seed=4)
    assert len(tr) + len(va) == 30 and {groups[i] for i in tr}.isdisjoint({groups[i] for i in va})
    assert len({groups[i] for i in va}) == 2                           # round(0.25 * 10 groups)
    assert np.array_equal(split_groups(groups, 0.25, seed=4)[1], va)
    assert not np.array_equal(split_groups(groups, 0.25, seed=5)[1], va)


def _bad_bscans(shape: tuple[int, int]) -> list[np.ndarray]:
    blank = np.full(shape, 40, np.uint8)
    noise = np.random.default_rng(3).integers(0, 60, shape).astype(np.uint8)
    return [blank, noise]


def test_pseudo_labels_only_from_clean_bscans(tiny_volumes):
    volume, _ = tiny_volumes[1]
    good = [volume.bscans[i] for i in range(3, 6)]
    bscans = good[:2] + _bad_bscans(good[0].shape) + good[2:]
    rows, clean, reasons = graph_search_labels(bscans, volume.spacing_mm[1] * 1000, volume.spacing_mm[2] * 1000)
    assert clean.tolist() == [True, True, False, False, True]
    assert reasons[2] and reasons[3] and not reasons[0]
    assert pseudo_label_indices(clean, rows, np.arange(5)).tolist() == [0, 1, 4]
    assert pseudo_label_indices(clean, rows, np.array([1, 2, 3])).tolist() == [1]
    # a clean B-scan whose boundaries are mostly undefined is not used either
    holes = [r.copy() for r in rows]
    holes[0][:, : holes[0].shape[1] * 2 // 3] = np.nan
    assert pseudo_label_indices(clean, holes, np.arange(5)).tolist() == [1, 4]


def test_a_few_steps_pull_the_model_towards_pseudo_labels(tmp_path, tiny_volumes, tiny_layer_model):
    model_dir, base = tiny_layer_model
    from retinassl.engine.fit import fit
    from retinassl.methods.oct_layers import LayerModel

    volume, truth = tiny_volumes[0]
    bscans = [volume.bscans[i] for i in range(volume.shape[0])]
    # crafted pseudo-labels: the ILM 4 rows lower and the BM 4 rows higher than the truth
    pseudo = [np.stack([truth.boundaries[0][i] + 4, truth.boundaries[9][i] - 4]) for i in range(len(bscans))]
    before = agreement(base, bscans, pseudo)
    assert before["mad_px"] > 2.5                                       # the model follows the truth
    method = adaptation_method(base, lr=3e-3, seed=0)
    data = PseudoLabelDataset(bscans, pseudo, base.input_size, len(base.boundaries))
    cfg = validate(AdaptLayersConfig, {"model": str(model_dir), "engine": {
        **ENGINE, "max_steps": 40, "checkpoint_every_n_steps": -1}})
    fit(method, data, config=cfg.engine, run=RunDir.create(tmp_path, "pull"), seed=0)
    method.eval()
    adapted = LayerModel(method.network(), base.boundaries, base.input_size, base.arch,
                         base.encoder_kwargs, base.decoder_channels)
    after = agreement(adapted, bscans, pseudo)
    assert after["mad_px"] < 0.6 * before["mad_px"], (before, after)


def _manifest(tmp_path: Path, tiny_volumes) -> Manifest:
    """PNG B-scans of three tiny volumes (patients named as a clinic might name them) and two bad
    images, as a manifest with patient groups."""
    folder = tmp_path / "bscans"
    folder.mkdir()
    records = []
    for v in range(3):
        volume, _ = tiny_volumes[v]
        for i in range(2, 7):
            name = f"Zyxwvut_Qwertina_{v}_OD_{i}.png"
            Image.fromarray(volume.bscans[i]).save(folder / name)
            records.append({"id": f"Zyxwvut-{v}-{i}", "image": f"bscans/{name}", "patient": f"Zyxwvut-{v}"})
    for k, bad in enumerate(_bad_bscans(tiny_volumes[0][0].bscans[0].shape)):
        Image.fromarray(bad).save(folder / f"Zyxwvut_bad_{k}.png")
        records.append({"id": f"Zyxwvut-bad-{k}", "image": f"bscans/Zyxwvut_bad_{k}.png",
                        "patient": f"Zyxwvut-{k}"})
    return Manifest.from_records(records, tmp_path)


def _config(model_dir: Path, runs: Path, steps: int, spacing) -> AdaptLayersConfig:
    return validate(AdaptLayersConfig, {
        "model": str(model_dir), "runs_dir": str(runs), "val_fraction": 0.34, "lr": 3e-3,
        "axial_um": spacing[0], "lateral_um": spacing[1],
        "engine": {**ENGINE, "max_steps": steps, "checkpoint_every_n_steps": 3}})


def _weights(run: RunDir) -> dict:
    return read_model(run.path / "layer-model").state


def test_adapt_job_end_to_end_and_resume(tmp_path, tiny_volumes, tiny_layer_model, monkeypatch):
    model_dir, _ = tiny_layer_model
    manifest = _manifest(tmp_path, tiny_volumes)
    volume = tiny_volumes[0][0]
    spacing = (volume.spacing_mm[1] * 1000, volume.spacing_mm[2] * 1000)
    synthetic = [v for v, _ in tiny_volumes[4:6]]
    cfg = _config(model_dir, tmp_path / "runs", 6, spacing)
    full = RunDir.create(cfg.runs_dir, "full")
    model, summary = run_adapt_layers(cfg, full, manifest, synthetic)
    c = summary["counts"]
    assert c["bscans"] == 17 and c["clean"] <= 15
    assert c["train_pseudo_labels"] + c["held_out_clean"] == c["clean"]   # only clean ones, all used
    for when in ("before", "after"):
        assert np.isfinite(summary[when]["real"]["mad_px"])
        assert np.isfinite(summary[when]["synthetic"]["error_um_all"])
    assert read_model(full.path / "layer-model").meta["adapted_on_bscans"] == c["train_pseudo_labels"]
    assert read_model(full.path / "layer-model").meta["precision"] == full.status()["precision"]  # what it trained with
    assert read_model(tiny_layer_model[0]).meta["precision"] == "32-true"  # the trained one too (engine precision 32)
    # no file name, id or patient group reaches the run directory
    for path in full.path.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".yaml", ".csv", ".txt"):
            assert "Zyxwvut" not in path.read_text(errors="replace"), path.name
    # killed during step 5 (checkpoints every 3 steps), then resumed: the same weights as six steps
    # straight, the pseudo-labels read back rather than searched again
    monkeypatch.setattr(PseudoLabelDataset, "__getitem__", _failing_after(16))
    part = RunDir.create(cfg.runs_dir, "part")
    with pytest.raises(RuntimeError, match="killed"):
        run_adapt_layers(cfg, part, manifest, synthetic)
    assert not (part.path / "layer-model").exists()
    monkeypatch.undo()
    cached = (part.path / "pseudo-labels.npz").stat().st_mtime_ns
    resumed = RunDir.resume(part.path)
    run_adapt_layers(cfg, resumed, manifest, synthetic, resume=True)
    assert (part.path / "pseudo-labels.npz").stat().st_mtime_ns == cached
    a, b = _weights(full), _weights(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _failing_after(n_items: int):
    original = PseudoLabelDataset.__getitem__
    served = [0]

    def getitem(self, index):
        served[0] += 1
        if served[0] > n_items:
            raise RuntimeError("killed")
        return original(self, index)

    return getitem


def test_command_line_keeps_file_names_out_of_the_run(tmp_path, tiny_volumes, tiny_layer_model):
    import yaml
    from typer.testing import CliRunner

    from retinassl.cli import app

    model_dir, _ = tiny_layer_model
    manifest = _manifest(tmp_path, tiny_volumes)
    table = tmp_path / "bscans.csv"
    manifest.frame[["id", "image", "patient"]].to_csv(table, index=False)
    volume = tiny_volumes[0][0]
    config = tmp_path / "adapt.yaml"
    config.write_text(yaml.safe_dump({
        "model": str(model_dir), "runs_dir": str(tmp_path / "runs"), "val_fraction": 0.34,
        "data": {"source": "csv", "options": {"csv": str(table)}},
        "axial_um": volume.spacing_mm[1] * 1000, "lateral_um": volume.spacing_mm[2] * 1000,
        "synthetic_test": {"n_volumes": 2, "seed": 1, "shape": [3, 96, 64]},
        "engine": {**ENGINE, "max_steps": 2, "checkpoint_every_n_steps": -1}}))
    result = CliRunner().invoke(app, ["oct", "adapt-layers", str(config)])
    assert result.exit_code == 0, result.output
    assert "before: graph-search agreement" in result.output and "Zyxwvut" not in result.output
    run = next((tmp_path / "runs").iterdir())
    assert (run / "layer-model" / "model.json").is_file() and (run / "adapt.json").is_file()
    texts = [p for p in run.rglob("*") if p.is_file() and p.suffix in (".json", ".yaml", ".csv", ".txt")]
    assert (run / "logs" / "log.txt") in texts and "graph search on 17" in (run / "logs" / "log.txt").read_text()
    for path in texts:
        assert "Zyxwvut" not in path.read_text(errors="replace"), path.name
    # the report shows held-out B-scans with both methods' boundaries, named by index only
    figure = run / "report" / "figures" / "bscans-held-out.png"
    assert figure.is_file() and Image.open(figure).size[0] > 300
    page = (run / "report" / "index.html").read_text()
    assert "figures/bscans-held-out.png" in page and "Zyxwvut" not in page


def test_replay_adds_fully_labelled_synthetic_bscans(tiny_volumes, tiny_layer_model):
    from retinassl.jobs.oct_adapt import with_replay

    model_dir, base = tiny_layer_model
    volume, truth = tiny_volumes[0]
    real = PseudoLabelDataset([volume.bscans[0]], [np.stack([truth.boundaries[0][0], truth.boundaries[9][0]])],
                              base.input_size, len(base.boundaries))
    cfg = validate(AdaptLayersConfig, {"model": str(model_dir), "replay_bscans": 5,
                                       "replay_volumes": {"n_volumes": 2, "seed": 3, "shape": [4, 96, 64]}})
    mixed = with_replay(real, cfg, base)
    assert len(mixed) == 6
    labels = [mixed[i]["label"] for i in range(1, 6)]
    assert all(set(torch.unique(lab).tolist()) <= {-1, 0, 1, 2} and (lab == 1).any() for lab in labels)
