"""``retinassl evaluate probe|finetune ENCODER [CONFIG] [key=value ...]``: evaluate one encoder;
``retinassl evaluate external MODEL... --source ... --label ...``: validate saved classifiers on
another labelled dataset (:mod:`retinassl.jobs.external`).

Both commands run the transfer protocol of :mod:`retinassl.sweeps.transfer` with a single
initialisation (the encoder) and a single protocol: every task, label fraction, seed and fold of
CONFIG (a transfer experiment: a packaged preset such as ``idrid-transfer``, or a YAML file;
default ``transfer-demo``, synthetic data), into a run directory with the results table,
predictions and a report.
"""

from __future__ import annotations

from pathlib import Path

import typer

from retinassl.cli.common import DATA_ROOT, RESUME, RUNS_DIR, SKIP_BAD, run_job, split_args
from retinassl.cli.predict import CACHE_DIR, MATCH_SCALE, OPTIONS, key_values

app = typer.Typer(no_args_is_help=True, help="Evaluate an encoder: linear probe or fine-tuning over "
                                             "label fractions, seeds and folds.")

ENCODER = typer.Argument(..., help="An encoder checkpoint directory (.../encoder), external weights "
                                   "(.safetensors), or 'scratch'.")
ARGS = typer.Argument(None, help="[CONFIG] [key=value ...]: a transfer experiment (preset or YAML; "
                                 "default transfer-demo), then overrides such as fractions=[0.1,1.0] "
                                 "seeds=[0].", show_default=False)
BUDGET = typer.Option(None, "--budget", help="Apply the experiment's smoke/cpu/full budget.")
NAME = typer.Option(None, "--name", help="The initialisation's name in results (default: from the "
                                         "path).")

DEFAULT_CONFIG = "transfer-demo"


def one_encoder(data: dict, label: str, encoder: str, protocol: str) -> dict:
    """A transfer experiment reduced to one given encoder (``label``) and one protocol, whatever the
    budget, and without the pretraining pool (:func:`~retinassl.sweeps.transfer_config.downstream_only`)."""
    from retinassl.sweeps.transfer_config import downstream_only

    data = {**downstream_only(data), "inits": [{"name": label, "init": encoder}], "reference": label,
            "protocols": [protocol], "name": f"{data.get('name', 'transfer')}-{protocol}"}
    if "budgets" in data:
        data["budgets"] = {budget: {k: v for k, v in override.items() if k not in ("inits", "reference", "protocols")}
                           for budget, override in data["budgets"].items()}
    return data


def _evaluate(protocol: str, encoder: str, args: list[str] | None, budget: str | None,
              name: str | None, resume: Path | None, runs_dir: Path | None,
              data_root: Path | None = None) -> None:
    import yaml

    from retinassl.cli.sweep import with_data_roots
    from retinassl.config import apply_overrides, read_yaml
    from retinassl.sweeps.transfer import run_transfer
    from retinassl.sweeps.transfer_config import resolve_config
    from retinassl.io.rundir import RunDir

    source, overrides = split_args(args, DEFAULT_CONFIG)
    if resume is not None:
        from retinassl.cli.common import refuse_finished

        data = with_data_roots(apply_overrides(read_yaml(Path(resume) / "evaluate.yaml"), overrides),
                               budget, data_root, str(resume), legacy=False)
        config = resolve_config(data, budget)
        refuse_finished(resume, overrides)  # before RunDir.resume marks the run running
        run = RunDir.resume(resume)
    else:
        from retinassl.models.initialize import init_label

        label = name or init_label(encoder)
        data = with_data_roots(one_encoder(apply_overrides(read_yaml(source), overrides), label, encoder, protocol),
                               budget, data_root, source, legacy=not Path(source).is_file())
        config = resolve_config(data, budget)  # a config error leaves no run directory behind
        from retinassl.cli.common import check_batch_config
        from retinassl.models.initialize import check_init_preprocess

        check_init_preprocess(encoder, config.preprocess, "ENCODER")

        check_batch_config(config)
        root = runs_dir or Path(str(data.get("runs_dir", "runs")))
        run = RunDir.create(root, f"evaluate-{protocol}-{label}")
    run.attach_log_file()
    typer.echo(f"run directory: {run.path}")
    from retinassl.cli.common import experiment_record

    with experiment_record(run.path / "evaluate.yaml", yaml.safe_dump(data, sort_keys=False)):
        _, report = run_job(run, lambda: run_transfer(config, run))
    typer.echo((run.path / "comparison.md").read_text())
    typer.echo(f"report: {report}")


@app.command("probe")
def probe(encoder: str = ENCODER, args: list[str] = ARGS, budget: str = BUDGET, name: str = NAME,
          resume: Path = RESUME, runs_dir: Path = RUNS_DIR, data_root: Path = DATA_ROOT) -> None:
    """Linear probe (logistic regression on frozen, cached features) at every label fraction and
    seed; asserts afterwards that the encoder did not change."""
    _evaluate("probe", encoder, args, budget, name, resume, runs_dir, data_root)


@app.command("finetune")
def finetune(encoder: str = ENCODER, args: list[str] = ARGS, budget: str = BUDGET, name: str = NAME,
             resume: Path = RESUME, runs_dir: Path = RUNS_DIR, data_root: Path = DATA_ROOT) -> None:
    """Full fine-tuning (early stopping on a validation split carved from the labelled subset) at
    every label fraction and fine-tuning seed."""
    _evaluate("finetune", encoder, args, budget, name, resume, runs_dir, data_root)


@app.command("external")
def external(models: list[Path] = typer.Argument(..., help="One or more saved image classifiers "
                                                 "(classifier or patch-classifier folders, or run "
                                                 "directories holding classifier/); two or more get "
                                                 "a paired DeLong test against the first."),
             source: str = typer.Option(..., "--source", help="The labelled dataset's source "
                                        "(mx_fundus_oct, idrid, rfmid, eyepacs, folder, csv...).",
                                        show_default=False),
             options: list[str] = OPTIONS,
             label: str = typer.Option(..., "--label", help="The binary label in the dataset's terms, "
                                       "e.g. 'dr_any', 'dr_stage>=1', 'dr_grade>=2', 'level>=2'.",
                                       show_default=False),
             name: str = typer.Option(None, "--name", help="The dataset's name in results (default: "
                                      "the source).", show_default=False),
             split: str = typer.Option(None, "--split", help="Only this split of the dataset (default: "
                                       "every labelled image).", show_default=False),
             misses: int = typer.Option(4, "--misses", help="Worst false positives and false negatives "
                                        "of each model shown with Grad-CAM / patch heatmaps (0: none)."),
             skip_bad: bool = SKIP_BAD, runs_dir: Path = RUNS_DIR, cache_dir: Path = CACHE_DIR,
             match_scale: bool = MATCH_SCALE) -> None:
    """External validation: AUC [DeLong and bootstrap 95 % intervals], sensitivity and specificity at
    each model's saved operating threshold, calibration (ECE, reliability diagram), per-grade positive
    rates, ROC curves, a gallery of each model's worst misses, and a paired DeLong test between
    models, on a labelled dataset the models never saw."""
    from retinassl.io.rundir import RunDir
    from retinassl.io.saved_model import is_saved_model
    from retinassl.explain.overlays import misses_gallery
    from retinassl.jobs.external import evaluate_external
    from retinassl.jobs.predict import input_manifest

    paths = [m / "classifier" if not is_saved_model(m) and is_saved_model(m / "classifier") else m
             for m in models]
    manifest = input_manifest([], source, key_values(options))
    if split:
        manifest = manifest.subset((manifest.frame["split"].astype(str) == split).to_numpy())
    dataset = name or source
    run = RunDir.create(runs_dir or Path("runs"), f"external-{dataset}")
    run.attach_log_file()
    typer.echo(f"run directory: {run.path}")
    table, report = run_job(run, lambda: evaluate_external(paths, manifest, label, run, name=dataset,
                                                           cache_dir=cache_dir, skip_bad=skip_bad,
                                                           gallery=misses_gallery, misses=misses,
                                                           match_scale=match_scale))
    main = table[table["metric"].isin(["auc", "auc_lo", "auc_hi", "sensitivity", "specificity"])]
    for init, block in main.groupby("init", sort=False):
        values = dict(zip(block["metric"], block["value"]))
        typer.echo(f"{init}: AUC {values['auc']:.3f} [{values['auc_lo']:.3f}, {values['auc_hi']:.3f}]"
                   + (f", sensitivity {values['sensitivity']:.3f}, specificity {values['specificity']:.3f}"
                      if "sensitivity" in values else ""))
    typer.echo(f"report: {report}")
