"""The grid runner's record of what done cells depend on (``check_unchanged``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from retinassl.errors import ConfigError
from retinassl.sweeps.grid import check_unchanged


def test_settings_are_recorded_extended_and_a_change_refused(tmp_path: Path) -> None:
    path = tmp_path / "run" / "grid.settings.json"
    path.parent.mkdir()
    check_unchanged(path, {"preprocess": {"size": 224}, "seed": 0}, "sweep run")
    assert json.loads(path.read_text()) == {"preprocess": {"size": 224}, "seed": 0}
    check_unchanged(path, {"preprocess": {"size": 224}, "seed": 0}, "sweep run")  # the same: accepted
    # a protocol's settings first seen on a resume are added; a recorded key left out is kept
    check_unchanged(path, {"preprocess": {"size": 224}, "finetune": {"lr": 0.001}}, "sweep run")
    assert json.loads(path.read_text()) == {"preprocess": {"size": 224}, "seed": 0, "finetune": {"lr": 0.001}}
    with pytest.raises(ConfigError, match=r"sweep run \(.*run\) was started with other settings "
                                          r"\(finetune, preprocess changed"):
        check_unchanged(path, {"preprocess": {"size": 384}, "seed": 0, "finetune": {"lr": 0.01}}, "sweep run")
    assert json.loads(path.read_text())["preprocess"] == {"size": 224}  # the record is not touched



def test_fields_added_later_tasks_left_out_and_unused_settings_do_not_block_a_resume(tmp_path: Path) -> None:
    path = tmp_path / "grid.settings.json"
    check_unchanged(path, {"finetune": {"lr": 0.001}, "tasks": {"a": {"k": 1}, "b": {"k": 2}}}, "run")
    # a config field that did not exist when the record was written; one task of two run again
    check_unchanged(path, {"finetune": {"lr": 0.001, "batch_norm": None}, "tasks": {"b": {"k": 2}}}, "run")
    with pytest.raises(ConfigError, match="tasks changed"):
        check_unchanged(path, {"tasks": {"b": {"k": 3}}}, "run")   # a task redefined under its name
    # settings no done result depends on yet are recorded anew
    check_unchanged(path, {"finetune": {"lr": 0.01}}, "run", replace={"finetune"})
    assert json.loads(path.read_text())["finetune"] == {"lr": 0.01}
    with pytest.raises(ConfigError, match="finetune changed"):
        check_unchanged(path, {"finetune": {"lr": 0.001}}, "run")


def test_data_settings_say_what_the_data_is_not_where_it_lies() -> None:
    from retinassl.config import DataConfig, EngineConfig
    from retinassl.sweeps.grid import data_settings

    here = DataConfig(source="idrid", options={"root": "/a/idrid", "parts": ["B"]}, cache_dir="/a/cache", workers=2)
    there = DataConfig(source="idrid", options={"root": "/b/data/idrid", "parts": ["B"]}, workers=8)
    assert data_settings(here) == data_settings(there)
    assert data_settings(here) != data_settings(DataConfig(source="idrid", options={"root": "/a", "parts": ["A"]}))
    # an engine's result settings leave out where and how fast it runs, not what it trains
    cpu, gpu = EngineConfig(batch_size=16), EngineConfig(batch_size=16, accelerator="gpu", num_threads=8)
    assert cpu.result_settings() == gpu.result_settings() != EngineConfig(batch_size=32).result_settings()
    assert cpu.result_settings() != EngineConfig(batch_size=16, devices=2).result_settings()  # the global batch


def test_paths_an_archive_replaced_match_only_in_a_restored_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    from retinassl.io.archive import LOCAL_PATH

    def recorded(labels: str) -> Path:
        path = tmp_path / "grid.settings.json"
        path.write_text(json.dumps({"preprocess": {"reference_image": LOCAL_PATH},
                                    "data": {"options": {"labels": labels, "roots": [labels]}}}))
        return path

    monkeypatch.setenv("RETINASSL_DATA_ROOT", str(tmp_path / "root"))
    here = str(tmp_path / "root" / "idrid" / "labels.csv")
    same = {"preprocess": {"reference_image": "/anywhere/ref.png"},
            "data": {"options": {"labels": here, "roots": [here]}}}
    # an ordinary run: the stand-ins are values like any other
    with pytest.raises(ConfigError, match="data, preprocess changed"):
        check_unchanged(recorded("$RETINASSL_DATA_ROOT/idrid/labels.csv"), same, "run")
    # restored from an archive: they take this machine's paths (in lists too), named by key in a warning
    record = recorded("$RETINASSL_DATA_ROOT/idrid/labels.csv")
    with caplog.at_level("WARNING"):
        check_unchanged(record, same, "run", archived=True)
    assert json.loads(record.read_text()) == same                      # recorded anew with this machine's paths
    assert "preprocess.reference_image, data.options.labels, data.options.roots.0" in caplog.text
    assert "/anywhere" not in caplog.text and here not in caplog.text  # keys, never paths
    # a placeholder names one file under the data root: another file is a change
    with pytest.raises(ConfigError, match="data changed"):
        check_unchanged(recorded("$RETINASSL_DATA_ROOT/idrid/labels.csv"),
                        {"data": {"options": {"labels": str(tmp_path / "root" / "other.csv")}}}, "run", archived=True)
    with pytest.raises(ConfigError, match="data changed"):              # an ordinary value is still compared
        check_unchanged(recorded("labels.csv"), {"data": {"options": {"labels": "other.csv"}}}, "run", archived=True)


def test_a_field_added_later_is_accepted_only_at_its_default(tmp_path: Path) -> None:
    """A run recorded before a field existed ran at the field's default in effect: resumed with another value
    (e.g. fine-tuning's test-time augmentation), its done cells would be mixed with cells of the new setting."""
    path = tmp_path / "grid.settings.json"
    check_unchanged(path, {"finetune": {"lr": 0.001}}, "run")  # written before `tta` existed
    defaults = {"finetune": {"lr": 0.0003, "tta": "none"}}
    with pytest.raises(ConfigError, match="finetune changed"):
        check_unchanged(path, {"finetune": {"lr": 0.001, "tta": "dihedral"}}, "run", defaults=defaults)
    check_unchanged(path, {"finetune": {"lr": 0.001, "tta": "none"}}, "run", defaults=defaults)
    assert json.loads(path.read_text())["finetune"] == {"lr": 0.001, "tta": "none"}  # recorded from now on
    check_unchanged(path, {"finetune": {"lr": 0.001, "tta": "none", "new": 1}}, "run", defaults=defaults)  # no default known
