"""Configs that work anywhere (issue 22, item 4): the presets' data paths live under a data root
given with --data-root or $RETINASSL_DATA_ROOT, never relative to a checkout; a missing root or
folder is a ConfigError naming the option; every source's options are listed with an example; the
folder source never guesses which class is positive."""

from __future__ import annotations

import importlib.util
import inspect
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from retinassl.cli import app
from retinassl.config import config_data, load_config, preset_names, read_yaml
from retinassl.data_roots import DATA_ROOT_ENV, resolve_data_roots
from retinassl.errors import ConfigError

PROJECT = Path(__file__).resolve().parents[2]
FROZEN = {"idrid-transfer-real", "mx-dr-transfer-real"}  # still spelled ../shared/data/ (read as the root)
FOLDERS = ("idrid", "drive", "stare", "rfmid_subset", "mx_fundus_oct", "eye_disease_4class")


@pytest.fixture(autouse=True)
def _no_env_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DATA_ROOT_ENV, raising=False)


def data_root(tmp_path: Path) -> Path:
    for name in FOLDERS:
        (tmp_path / "datasets" / name).mkdir(parents=True, exist_ok=True)
    return tmp_path / "datasets"


def strings(value: object) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in strings(v)]
    return [value] if isinstance(value, str) else []


CONFIG = {"data": {"source": "idrid", "options": {"root": "$RETINASSL_DATA_ROOT/idrid", "parts": ["B"]}},
          "pool": {"data": [{"source": "drive", "options": {"root": "$RETINASSL_DATA_ROOT/drive"}}]},
          "evaluate_on": [{"name": "stare", "data": {"source": "stare",
                                                     "options": {"root": "../shared/data/stare"}}}],
          "name": "x"}


def test_placeholders_resolve_under_the_given_root(tmp_path: Path) -> None:
    root = data_root(tmp_path)
    out = resolve_data_roots(CONFIG, root, legacy=True)
    assert out["data"]["options"] == {"root": str(root / "idrid"), "parts": ["B"]}
    assert out["pool"]["data"][0]["options"]["root"] == str(root / "drive")
    assert out["evaluate_on"][0]["data"]["options"]["root"] == str(root / "stare")
    assert CONFIG["data"]["options"]["root"] == "$RETINASSL_DATA_ROOT/idrid"   # input unchanged
    # outside a packaged preset the old prefix is an ordinary relative path, left alone
    plain = resolve_data_roots(CONFIG, root)
    assert plain["evaluate_on"][0]["data"]["options"]["root"] == "../shared/data/stare"


def test_the_environment_variable_is_the_default_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = data_root(tmp_path)
    monkeypatch.setenv(DATA_ROOT_ENV, str(root))
    assert resolve_data_roots(CONFIG)["data"]["options"]["root"] == str(root / "idrid")
    other = tmp_path / "other"
    (other / "idrid").mkdir(parents=True)
    (other / "drive").mkdir()
    assert resolve_data_roots(CONFIG, other)["pool"]["data"][0]["options"]["root"] == str(other / "drive")


def test_no_root_is_an_error_naming_the_key_and_the_options() -> None:
    with pytest.raises(ConfigError) as info:
        resolve_data_roots(CONFIG, origin="preset x")
    text = str(info.value)
    for word in ("preset x", "data.options.root", "--data-root", DATA_ROOT_ENV, "idrid/"):
        assert word in text
    kept = resolve_data_roots(CONFIG, missing_ok=True)
    assert kept["data"]["options"]["root"] == "$RETINASSL_DATA_ROOT/idrid"


def test_a_root_without_the_dataset_names_the_key_and_path(tmp_path: Path) -> None:
    (tmp_path / "idrid").mkdir()
    with pytest.raises(ConfigError, match=r"pool\.data\.0\.options\.root is .*drive.*does not exist.*--data-root"):
        resolve_data_roots(CONFIG, tmp_path)
    # an override replaces a placeholder before it is resolved
    out = resolve_data_roots({"data": {"options": {"root": str(tmp_path / "idrid")}}}, None)
    assert out["data"]["options"]["root"] == str(tmp_path / "idrid")


def test_no_preset_has_a_checkout_relative_data_path(tmp_path: Path) -> None:
    root = data_root(tmp_path)
    for name in preset_names():
        raw = strings(read_yaml(name))
        if name not in FROZEN:
            assert not [s for s in raw if s.startswith("../")], name
        resolved = strings(config_data(name, data_root=root))
        assert not [s for s in resolved if "shared/data" in s or "$RETINASSL" in s], name
        if any(s.startswith(("$RETINASSL_DATA_ROOT", "../shared/data/")) for s in raw):
            with pytest.raises(ConfigError, match="--data-root"):
                config_data(name)


def test_overrides_apply_before_the_root_is_needed(tmp_path: Path) -> None:
    from retinassl.jobs.train import TrainConfig

    cfg = load_config(TrainConfig, "idrid-dr-image", [f"data.options.root={tmp_path}"])
    assert cfg.data.options["root"] == str(tmp_path)
    (tmp_path / "idrid").mkdir()
    cfg = load_config(TrainConfig, "idrid-dr-image", [], data_root=tmp_path)
    assert cfg.data.options["root"] == str(tmp_path / "idrid")


def test_user_yaml_keeps_its_relative_paths(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({"data": {"source": "drive", "options": {"root": "../shared/data/drive"}}}))
    assert config_data(path)["data"]["options"]["root"] == "../shared/data/drive"


def test_command_line_data_root(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["train", "idrid-dr-image", "--runs-dir", str(tmp_path / "runs")])
    assert isinstance(result.exception, ConfigError)
    assert "--data-root" in str(result.exception) and "data.options.root" in str(result.exception)
    result = runner.invoke(app, ["train", "idrid-dr-image", "--data-root", str(tmp_path / "nowhere"),
                                 "--runs-dir", str(tmp_path / "runs")])
    assert isinstance(result.exception, ConfigError)
    assert str(tmp_path / "nowhere" / "idrid") in str(result.exception)
    assert not (tmp_path / "runs").exists()                     # refused before a run directory exists
    for args in (["evaluate", "probe", "scratch", "idrid-transfer"], ["explain", "tsne", "scratch", "idrid-transfer"]):
        result = runner.invoke(app, [*args, "--runs-dir", str(tmp_path / "runs")])
        assert isinstance(result.exception, ConfigError) and "--data-root" in str(result.exception), args
        assert not (tmp_path / "runs").exists()
    # a sweep: the smoke budget of idrid-ssl-gan is synthetic, so it needs no root; cpu does
    from retinassl.cli.sweep import with_data_roots

    data = read_yaml("idrid-ssl-gan")
    smoke = with_data_roots(data, "smoke", None, "idrid-ssl-gan", legacy=True)
    assert smoke["data"]["options"]["root"] == "$RETINASSL_DATA_ROOT/idrid"   # unused by smoke: kept
    with pytest.raises(ConfigError, match=r"data\.options\.root.*--data-root"):
        with_data_roots(data, "cpu", None, "idrid-ssl-gan", legacy=True)
    root = data_root(tmp_path)
    cpu = with_data_roots(data, "cpu", root, "idrid-ssl-gan", legacy=True)
    assert cpu["extension"]["pool"]["options"]["root"] == str(root / "idrid")


def test_benchmark_helper_is_the_package_function() -> None:
    """benchmarks/_common.with_shared_data_root gives exactly what it gave before it called the
    package function (its data and pool roots under SHARED_DATA) on the presets running studies use."""
    spec = importlib.util.spec_from_file_location("_common_under_test", PROJECT / "benchmarks" / "_common.py")
    common = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("_common_under_test", common)
    spec.loader.exec_module(common)

    def old(data: dict) -> dict:  # the implementation before this change, verbatim in effect
        def fix(options: dict) -> None:
            root = options.get("root")
            if isinstance(root, str) and root.startswith("../shared/data/"):
                options["root"] = str(common.SHARED_DATA / root.removeprefix("../shared/data/"))
        fix(data["data"]["options"])
        for source in data.get("pool", {}).get("data", []):
            fix(source.get("options", {}))
        return data

    for name in sorted(FROZEN):
        assert common.with_shared_data_root(read_yaml(name)) == old(read_yaml(name)), name
    new = common.with_shared_data_root(read_yaml("idrid-transfer"))
    assert new["data"]["options"]["root"] == str(common.SHARED_DATA / "idrid")


# -- every source's options, with an example ------------------------------------------------------
def test_data_list_shows_every_option_and_an_example() -> None:
    from retinassl.data.sources import SOURCES

    result = CliRunner().invoke(app, ["data", "list"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for name, loader in SOURCES.items():
        start = next(i for i, line in enumerate(lines) if line.startswith(f"  {name} "))
        end = next(i for i in range(start + 1, len(lines)) if not lines[i].startswith("    "))
        block = "\n".join(lines[start:end])
        for option in inspect.signature(loader).parameters:
            assert f"    {option} (" in block or f"    **{option}" in block, (name, option)
        assert f"e.g. retinassl data inspect {name} " in block, name
    assert "stem_regex (default None): regex extracting the stem" in result.output
    help_text = CliRunner().invoke(app, ["data", "inspect", "--help"]).output
    assert "data list" in help_text and "Sources and their options" in help_text
    for name, loader in SOURCES.items():                     # the same listing ends the inspect help
        assert f"e.g. retinassl data inspect {name} " in help_text, name
        for option, parameter in inspect.signature(loader).parameters.items():
            assert (f"**{option}:" if parameter.kind is inspect.Parameter.VAR_KEYWORD else f"{option} (") in help_text
    assert "parts=[B]" in help_text                          # not eaten as rich markup


def test_the_folder_example_runs(tmp_path: Path) -> None:
    from retinassl.data.sources import load_source

    for name in ("normal/a.png", "glaucoma/b.png", "glaucoma/c.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    m = load_source("folder", root=str(tmp_path), positive="glaucoma")
    assert sorted(m.frame["abnormal"].tolist()) == [0, 1, 1]
    out = CliRunner().invoke(app, ["data", "inspect", "folder", "-o", f"root={tmp_path}", "-o",
                                   "positive=glaucoma"]).output
    assert "class folders: glaucoma=2 (abnormal=1), normal=1 (abnormal=0)" in out
    refused = CliRunner().invoke(app, ["data", "inspect", "folder", "-o", f"root={tmp_path}"])
    assert isinstance(refused.exception, ConfigError) and "positive=glaucoma" in str(refused.exception)
