"""Choices made on held-out training patients (a pretraining seed, the fine-tuning settings) never hold
out an image whose labels or masks the encoder's pretraining read: the encoder has learnt its answer,
which no test image gives it (lesion pretraining on IDRiD part A reads the masks of 68 part-B training
photographs, all referable)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from retinassl.data.leakage import PRETRAINING_KEY, pretraining_record
from retinassl.data.manifest import Manifest
from retinassl.data.splits import carve_validation
from retinassl.metrics.tasks import TaskSpec
from retinassl.models.checkpoint import save_encoder
from retinassl.models.registry import build_encoder
from retinassl.sweeps.transfer_data import annotated_in_pretraining, training_holdout

REFERABLE = TaskSpec(name="referable", label="dr_grade", positive_from=2, stratify="dr_grade")


def _downstream(n_train: int = 120, n_test: int = 30, seed: int = 0) -> Manifest:
    """Training and test rows; patients of two images (one per eye) and of one."""
    rng = np.random.default_rng(seed)
    n = n_train + n_test
    grades = rng.choice(5, size=n, p=[0.35, 0.05, 0.3, 0.2, 0.1])
    patients = [f"p{i // 2}" if i < n_train and i % 3 else f"q{i}" for i in range(n)]
    frame = pd.DataFrame({"id": [f"im{i}" for i in range(n)], "image": [f"im{i}.png" for i in range(n)],
                          "patient": patients, "eye": "", "split": ["train"] * n_train + ["test"] * n_test,
                          "dr_grade": grades})
    return Manifest(frame, Path("."))


def test_the_patients_of_annotated_rows_are_always_fitted_and_nothing_else_changes() -> None:
    manifest = _downstream()
    frame = manifest.frame
    train = np.flatnonzero(frame["split"].to_numpy() == "train")
    patients = frame["patient"].to_numpy()
    # the held-out rows without any mark: carve_validation's own choice, unchanged
    fitted, held = training_holdout(manifest, REFERABLE, 5, 0, 0.25, 3, "test")
    strata = (frame["dr_grade"].to_numpy() >= 2).astype(int)[train]
    fit_pos, val_pos = carve_validation(strata, patients[train], 0.25, 3)
    assert np.array_equal(fitted, train[fit_pos]) and np.array_equal(held, train[val_pos])
    assert np.array_equal(training_holdout(manifest, REFERABLE, 5, 0, 0.25, 3, "test",
                                           np.zeros(len(frame), dtype=bool))[1], held)
    # mark a third of the held-out rows (one image of a two-image patient among them)
    marked = np.zeros(len(frame), dtype=bool)
    marked[held[::3]] = True
    blocked = set(patients[marked])
    fitted2, held2 = training_holdout(manifest, REFERABLE, 5, 0, 0.25, 3, "test", marked)
    assert not blocked & set(patients[held2])                          # no marked patient held out
    assert set(np.flatnonzero(np.isin(patients, list(blocked)))) & set(train) <= set(fitted2)
    assert sorted(set(fitted2) | set(held2)) == sorted(train)         # every training row, once
    assert not set(fitted2) & set(held2) and not set(patients[fitted2]) & set(patients[held2])
    assert np.array_equal(fitted2, np.sort(fitted2))
    y = frame["dr_grade"].to_numpy()[held2] >= 2
    assert y.any() and (~y).any()
    # about the share asked for of the patients that may be held out
    free = set(patients[train]) - blocked
    assert 0.15 < len(set(patients[held2])) / len(free) < 0.35


def test_when_everything_is_marked_the_marks_are_set_aside_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    """A pretraining that read every training image's label (``pool: train``) leaves nothing else to
    hold out: the split is the unmarked one, and the log says so."""
    manifest = _downstream()
    marked = (manifest.frame["split"] == "train").to_numpy()
    plain = training_holdout(manifest, REFERABLE, 5, 0, 0.25, 0, "pretrain_seeds")
    with caplog.at_level("WARNING"):
        fitted, held = training_holdout(manifest, REFERABLE, 5, 0, 0.25, 0, "pretrain_seeds", marked)
    assert np.array_equal(fitted, plain[0]) and np.array_equal(held, plain[1])
    assert "may be validated on" in caplog.text


def _encoder(path: Path, pool: Manifest, *, label=None, mask=None, init_source: str = "scratch") -> str:
    digests = [f"{i:032x}" for i in range(len(pool))]
    save_encoder(path, build_encoder("convnet", width=4), arch="convnet", kwargs={"width": 4}, method="x",
                 config={"label": label, "mask": mask},
                 extra={"init_source": init_source, PRETRAINING_KEY: pretraining_record(pool, digests)})
    return str(path)


def test_rows_are_marked_when_a_supervised_or_segmentation_pretraining_read_their_answers(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    manifest = _downstream()
    frame = manifest.frame
    digests = [f"d{i}" for i in range(len(frame))]
    # a pretraining pool with two downstream patients (under other image ids, as IDRiD part A links
    # part-B photographs by patient group) and unrelated images
    pool = Manifest(pd.DataFrame({"id": ["a1", "a2", "other1", "other2"], "image": "x.png",
                                  "patient": ["p2", "p5", "zz1", "zz2"]}), Path("."))
    expected = frame["patient"].isin(["p2", "p5"]).to_numpy()
    assert expected.sum() == 4
    masks = _encoder(tmp_path / "masks", pool, mask=["mask_MA"])
    labels = _encoder(tmp_path / "labels", pool, label="dme")
    ssl = _encoder(tmp_path / "ssl", pool)
    assert np.array_equal(annotated_in_pretraining(masks, manifest, digests), expected)
    assert np.array_equal(annotated_in_pretraining(labels, manifest, digests), expected)
    assert not annotated_in_pretraining(ssl, manifest, digests).any()  # read no labels
    assert not annotated_in_pretraining("scratch", manifest, digests).any()
    # two-step: a self-supervised step continued from the segmentation encoder still knows the answers
    two_step = _encoder(tmp_path / "two-step", pool, init_source=masks)
    assert np.array_equal(annotated_in_pretraining(two_step, manifest, digests), expected)
    # digests are computed only when a record with labels is read
    calls: list[int] = []

    def lazy() -> list[str]:
        calls.append(1)
        return digests

    assert not annotated_in_pretraining(ssl, manifest, lazy).any() and not calls
    assert annotated_in_pretraining(masks, manifest, lazy).sum() == 4 and calls == [1]
    # a first step that is gone cannot be followed: warned, not silently empty
    gone = _encoder(tmp_path / "after-gone", pool, init_source=str(tmp_path / "moved" / "encoder"))
    with caplog.at_level("WARNING"):
        assert not annotated_in_pretraining(gone, manifest, digests).any()
    assert "which is not there" in caplog.text
    # a byte-identical copy under another id and patient is found by its content
    copy_pool = Manifest(pd.DataFrame({"id": ["c"], "image": "x.png", "patient": ["elsewhere"]}), Path("."))
    copy = tmp_path / "copy"
    save_encoder(copy, build_encoder("convnet", width=4), arch="convnet", kwargs={"width": 4}, method="x",
                 config={"label": None, "mask": ["mask_EX"]},
                 extra={PRETRAINING_KEY: pretraining_record(copy_pool, ["d7"])})
    assert np.flatnonzero(annotated_in_pretraining(str(copy), manifest, digests)).tolist() == [7]


def test_the_report_says_how_many_annotated_images_the_choice_never_held_out(tmp_path: Path) -> None:
    import json

    from retinassl.io.rundir import RunDir
    from retinassl.report.transfer import transfer_selection_section

    run = RunDir.create(tmp_path / "runs", "seeds")
    (run.path / "data").mkdir(exist_ok=True)
    record = {"init": "lesions", "task": "referable", "metric": "auc", "val_fraction": 0.25, "selection_seeds": 5,
              "candidates": [{"seed": 0, "scores": [0.8], "mean": 0.8}, {"seed": 1, "scores": [0.9], "mean": 0.9}],
              "chosen": 1}
    path = run.path / "data" / "pretrain-selection-lesions.json"
    path.write_text(json.dumps({**record, "never_held_out": 68}))
    assert "never held out" in (page := transfer_selection_section(run).html) and "68 for lesions" in page
    assert "before that rule" not in page and "choice of C" not in page  # C chosen on row folds (session 28)
    path.write_text(json.dumps({**record, "never_held_out": 68, "probe_inner_cv": "grouped"}))
    assert "choice of C validate on them (lesions" in transfer_selection_section(run).html
    path.write_text(json.dumps({**record, "never_held_out": 0}))  # a self-supervised init: nothing to say
    assert "never held out" not in (page := transfer_selection_section(run).html) and "before that rule" not in page
    path.write_text(json.dumps(record))  # a record from before the rule
    assert "Chosen before that rule existed (lesions)" in transfer_selection_section(run).html
