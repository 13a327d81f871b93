"""Configs: unknown keys and wrong types are errors naming the key; overrides; presets."""

from __future__ import annotations

from pathlib import Path

import pytest

from retinassl.config import apply_overrides, load_config, preset_names
from retinassl.errors import ConfigError
from retinassl.jobs.train import TrainConfig


def test_preset_loads_and_overrides_apply() -> None:
    cfg = load_config(TrainConfig, "demo", ["engine.max_epochs=2", "model.kwargs.width=8",
                                            "data.options.n_images=10"])
    assert cfg.engine.max_epochs == 2 and cfg.model.kwargs["width"] == 8
    assert cfg.data.options["n_images"] == 10
    assert "demo" in preset_names()


def test_unknown_key_and_wrong_type_are_named(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("engine:\n  max_epoch: 3\n  batch_size: many\n")
    with pytest.raises(ConfigError) as info:
        load_config(TrainConfig, path)
    text = str(info.value)
    assert "engine.max_epoch: unknown key" in text
    assert "engine.batch_size: Input should be a valid integer" in text and str(path) in text


def test_bad_yaml_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("engine: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(TrainConfig, path)
    with pytest.raises(ConfigError, match="no such config file or preset"):
        load_config(TrainConfig, tmp_path / "nope.yaml")
    path.write_text("- a list\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(TrainConfig, path)


def test_override_syntax() -> None:
    assert apply_overrides({"a": {"b": 1}}, ["a.c=[1, 2]", "d=x"]) == {"a": {"b": 1, "c": [1, 2]}, "d": "x"}
    with pytest.raises(ConfigError, match="not of the form key=value"):
        apply_overrides({}, ["oops"])
    with pytest.raises(ConfigError, match="is not a section"):
        apply_overrides({"a": 1}, ["a.b=2"])


def test_overrides_address_list_items_and_a_new_source_drops_old_options() -> None:
    from retinassl.config import apply_overrides

    data = {"data": {"source": "synthetic", "options": {"n_images": 3, "size": 64}},
            "evaluate_on": [{"name": "stare", "data": {"source": "stare", "options": {"root": "a"}}}]}
    out = apply_overrides(data, ["evaluate_on.0.data.options.root=/x", "data.source=idrid",
                                 "data.options.root=/y"])
    assert out["evaluate_on"][0]["data"]["options"] == {"root": "/x"}
    assert out["data"] == {"source": "idrid", "options": {"root": "/y"}}     # no n_images left behind
    assert apply_overrides(data, ["data.source=synthetic"])["data"]["options"] == {"n_images": 3, "size": 64}
    with pytest.raises(ConfigError, match="'3' is not an index of a list of 1"):
        apply_overrides(data, ["evaluate_on.3.data.options.root=/x"])
