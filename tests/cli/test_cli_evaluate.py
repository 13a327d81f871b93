"""``retinassl evaluate probe`` and ``retinassl explain tsne|gradcam`` on a tiny synthetic experiment."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml
from typer.testing import CliRunner

from retinassl.cli import app
from retinassl.config import ModelConfig
from retinassl.data.cache import Cache
from retinassl.data.manifest import Manifest
from retinassl.data.preprocess import PreprocessConfig
from retinassl.jobs.finetune import FinetuneConfig, build_classifier, save_classifier
from retinassl.metrics.tasks import TaskSpec
from retinassl.io.results import read_results


def _experiment(root: Path, tmp_path: Path) -> Path:
    config = {"kind": "transfer", "name": "cli", "runs_dir": str(tmp_path / "runs"),
              "data": {"source": "manifest", "manifest": str(root / "data" / "manifest.csv"),
                       "cache_dir": str(root / "cache")},
              "preprocess": {"size": 32}, "model": {"arch": "convnet", "kwargs": {"width": 8}},
              "tasks": [{"name": "referable", "label": "dr_grade", "positive_from": 2}],
              "fractions": [0.5, 1.0], "seeds": [0, 1], "probe": {"c_grid": [1.0]},
              "explain": {"tsne": False, "gradcam": 0}}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_evaluate_probe_and_explain(tiny_root: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    exp = _experiment(tiny_root, tmp_path)
    result = runner.invoke(app, ["evaluate", "probe", "scratch", str(exp), "seeds=[0]"])
    assert result.exit_code == 0, result.output
    run = next((tmp_path / "runs").glob("evaluate-probe-scratch-*"))
    table = read_results(run / "results.csv")
    cells = table[table["metric"] == "auc"]
    assert len(cells) == 2 and set(cells["protocol"]) == {"probe"} and set(cells["seed"]) == {0}
    assert (run / "report" / "index.html").is_file() and "| scratch |" in result.output

    result = runner.invoke(app, ["explain", "tsne", "scratch", str(exp)])
    assert result.exit_code == 0, result.output
    assert list((tmp_path / "runs").glob("explain-tsne-scratch-*/report/figures/tsne-scratch.png"))

    task = TaskSpec(name="referable", label="dr_grade", positive_from=2)
    prepared = Cache(tiny_root / "cache").prepare(Manifest.load(tiny_root / "data" / "manifest.csv"),
                                                  PreprocessConfig(size=32))
    torch.manual_seed(0)
    method, _ = build_classifier(ModelConfig(arch="convnet", kwargs={"width": 8}), task, prepared,
                                 FinetuneConfig(), seed=0)
    save_classifier(tmp_path / "models" / "referable-mine", method, arch="convnet", kwargs={"width": 8},
                    preprocess=prepared.config.model_dump(), task=task)
    result = runner.invoke(app, ["explain", "gradcam", str(tmp_path / "models" / "referable-mine"),
                                 str(exp), "--images", "2"])
    assert result.exit_code == 0, result.output
    assert list((tmp_path / "runs").glob("explain-gradcam-*/report/figures/gradcam-referable-mine.png"))


def test_evaluate_refuses_an_encoder_prepared_otherwise_before_making_a_run(tiny_root: Path, tmp_path: Path) -> None:
    from retinassl.errors import ConfigError
    from retinassl.models import build_encoder
    from retinassl.models.checkpoint import save_encoder

    exp = _experiment(tiny_root, tmp_path)
    encoder = save_encoder(tmp_path / "enc", build_encoder("convnet", width=8), arch="convnet", kwargs={"width": 8},
                           preprocess=PreprocessConfig(size=64, clahe=True).model_dump())
    result = CliRunner().invoke(app, ["evaluate", "probe", str(encoder), str(exp)])
    assert result.exit_code != 0 and isinstance(result.exception, ConfigError)
    assert "preprocess.clahe is False, the encoder's True" in str(result.exception)
    assert not (tmp_path / "runs").exists()                             # no run directory left behind
    # given the encoder's preparation it runs (at the experiment's own size)
    result = CliRunner().invoke(app, ["evaluate", "probe", str(encoder), str(exp), "seeds=[0]",
                                      "preprocess.clahe=true"])
    assert result.exit_code == 0, result.output


def test_one_encoder_needs_no_pretraining_pool_on_the_machine(tiny_root: Path, tmp_path: Path, monkeypatch) -> None:
    """A preset's pretraining pool (here under a data root that is not given) is read only by the
    initialisations that pretrain: evaluating one given encoder, or drawing its t-SNE, runs without it."""
    monkeypatch.delenv("RETINASSL_DATA_ROOT", raising=False)
    exp = _experiment(tiny_root, tmp_path)
    data = yaml.safe_load(exp.read_text())
    pool = {"data": [{"source": "drive", "options": {"root": "$RETINASSL_DATA_ROOT/drive"}}]}
    data.update({"pool": pool, "budgets": {"cpu": {"pool": pool, "seeds": [0]}}})
    exp.write_text(yaml.safe_dump(data))
    runner = CliRunner()
    result = runner.invoke(app, ["evaluate", "probe", "scratch", str(exp), "--budget", "cpu"])
    assert result.exit_code == 0, result.output
    run = next((tmp_path / "runs").glob("evaluate-probe-scratch-*"))
    assert set(read_results(run / "results.csv")["seed"]) == {0}        # the budget's other keys still apply
    assert "pool" not in yaml.safe_load((run / "evaluate.yaml").read_text())
    result = runner.invoke(app, ["explain", "tsne", "scratch", str(exp)])
    assert result.exit_code == 0, result.output
