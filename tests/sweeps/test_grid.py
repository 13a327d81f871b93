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
