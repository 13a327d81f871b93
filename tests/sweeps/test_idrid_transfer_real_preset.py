"""The idrid-transfer-real preset (issue 18): every budget resolves, the pool lists every real fundus
source, and the "Fundus" inits never train on IDRiD labels (they select split-less labelled rows)."""

from __future__ import annotations

from pathlib import Path

import pytest

from retinassl.config import read_yaml
from retinassl.data.manifest import Manifest
from retinassl.jobs.pretrain import label_column, select_rows
from retinassl.sweeps.transfer import resolve_config


@pytest.mark.parametrize("budget", ["smoke", "cpu", "full"])
def test_every_budget_resolves_with_the_whole_real_pool(budget: str) -> None:
    config = resolve_config(read_yaml("idrid-transfer-real"), budget)
    sources = [d.source for d in config.pool.data]
    assert sources == ["idrid", "mx_fundus_oct", "folder", "drive", "stare", "rfmid"]
    assert config.pool.detect_duplicates and config.dedupe and config.detect_duplicates
    assert [t.name for t in config.tasks] == ["referable", "any_dr", "dr_grade"]
    assert config.reference == "scratch"
    assert {"scratch", "fundus_glaucoma", "fundus_dme"} <= {i.name for i in config.inits}


def _pool(tmp_path: Path) -> Manifest:
    """IDRiD-like rows (a split, abnormal and dme labels), folder-like rows (no split, abnormal),
    MX-like rows (no split, dme) and a DRIVE-like row (a split, no label)."""
    records = [
        {"id": "idrid-A-1", "image": "a.png", "split": "train", "abnormal": 1, "dme": 2},
        {"id": "idrid-B-2", "image": "b.png", "split": "train", "abnormal": 0, "dme": 0},
        {"id": "eye-1", "image": "c.png", "split": "", "abnormal": 1},
        {"id": "eye-2", "image": "d.png", "split": "", "abnormal": 0},
        {"id": "mx-1", "image": "e.png", "split": "", "dme": 1},
        {"id": "mx-2", "image": "g.png", "split": "", "dme": 0, "dr_any": 1},
        {"id": "mx-3", "image": "h.png", "split": "", "dme": 0},
        {"id": "drive-1", "image": "f.png", "split": "test"},
    ]
    return Manifest.from_records(records, root=tmp_path, check_files=False)


@pytest.mark.parametrize("init, expected", [("fundus_glaucoma", ["eye-1", "eye-2"]),
                                            ("fundus_dme", ["mx-1", "mx-2", "mx-3"]),
                                            ("fundus_abnormal", ["eye-1", "eye-2", "mx-2"])])
def test_fundus_inits_select_only_non_idrid_labelled_rows(tmp_path: Path, init: str,
                                                          expected: list[str]) -> None:
    config = resolve_config(read_yaml("idrid-transfer-real"), "cpu")
    spec = next(i for i in config.inits if i.name == init)
    pretrain = config.pretrain_config(spec, tmp_path / "pool.csv")
    pool = _pool(tmp_path)
    # the pool is saved and read back by the sweep: empty splits must survive the round trip
    pool = Manifest.load(pool.save(tmp_path / "pool.csv"), check_files=False)
    assert select_rows(pool, pretrain).frame["id"].tolist() == expected


def test_fundus_abnormal_is_any_disease_of_the_row(tmp_path: Path) -> None:
    """normal vs abnormal over several sources: glaucoma or any DR is abnormal; a row is normal
    only when every label it has is 0 (columns a source lacks do not count); rows with none of
    the labels (MX rows graded for DME only) are left out."""
    config = resolve_config(read_yaml("idrid-transfer-real"), "cpu")
    spec = next(i for i in config.inits if i.name == "fundus_abnormal")
    pretrain = config.pretrain_config(spec, tmp_path / "pool.csv")
    pool = Manifest.load(_pool(tmp_path).save(tmp_path / "pool.csv"), check_files=False)
    selected = select_rows(pool, pretrain)
    assert selected.labels(label_column(pretrain)).tolist() == [1, 0, 1]
    assert pool.frame.columns.tolist().count(label_column(pretrain)) == 0  # the caller's pool is untouched


def test_the_full_budget_scales_up_every_cpu_initialisation(tmp_path: Path) -> None:
    """A GPU user runs the study the cpu budget measured, scaled up: the same initialisations
    (methods, labels, masks, two-step starts), at a higher resolution, pretrained by epochs."""
    cpu = {i.name: i for i in resolve_config(read_yaml("idrid-transfer-real"), "cpu").inits}
    full_config = resolve_config(read_yaml("idrid-transfer-real"), "full")
    full = {i.name: i for i in full_config.inits}
    assert set(full) == set(cpu)
    assert full_config.preprocess.size > resolve_config(read_yaml("idrid-transfer-real"), "cpu").preprocess.size
    for name, spec in cpu.items():
        here = full[name]
        assert here.init == spec.init, name
        if spec.pretrain is None:
            continue
        for key in ("method", "label", "mask", "splits"):
            a, b = dict(spec.pretrain).get(key), dict(here.pretrain).get(key)
            if key == "method":
                a = {k: v for k, v in a.items() if k != "patch_size"}
                b = {k: v for k, v in b.items() if k != "patch_size"}
            assert a == b, (name, key)
        assert "max_steps" not in (dict(here.pretrain).get("engine") or {}), name
    for name in ("mae", "mae_fundus"):  # the ViT is built for the budget's image size
        assert dict(full[name].pretrain)["model"]["kwargs"]["img_size"] == full_config.preprocess.size
    assert dict(full["lesions"].pretrain)["method"]["patch_size"] == full_config.preprocess.size
    for spec in full.values():  # every pretraining is a valid job configuration at this budget
        if spec.pretrain is not None:
            job = full_config.pretrain_config(spec, tmp_path / "pool.csv")
            assert job.preprocess.size == full_config.preprocess.size, spec.name
