"""Learning curves of an idrid-ssl-gan sweep's cells: validation patch AUC and the GAN's health
(feature-variance ratio of generated vs real features, p(fake) on real and generated patches) against
the training step, next to each cell's test metrics. Used to ask whether a longer schedule closes the
gap to the paper, e.g. on a one-cell sweep::

    retinassl sweep idrid-ssl-gan --budget cpu "labelled=[40]" "seeds=[0]" \\
        extension.enabled=false budgets.cpu.workers=1 \\
        budgets.cpu.learners.ssl-gan.engine.max_steps=2000 budgets.cpu.learners.convnet.engine.max_steps=2000
    python benchmarks/ssl_gan_curve.py runs/idrid-ssl-gan-cpu-<time> --name ssl_gan_long --command "..."

``--patience 10,20`` adds what early stopping would have done to each cell, replayed on its logged
validation passes with the engine's rule (stop once the monitored metric has not improved for that
many passes; keep the best pass): where training would have stopped, which pass it would have kept,
and whether that is the pass the whole schedule kept. Training before the stop is the same run, so the
same kept pass means the same weights at the fraction of the steps.

Writes ``benchmarks/results/<name>.{json,md}``; reads only the run directory.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_results  # noqa: E402

from retinassl.config import config_data  # noqa: E402
from retinassl.io.results import read_results  # noqa: E402
from retinassl.sweeps.ssl_gan import parse_cell_name  # noqa: E402

HEALTH = ["train/feature_variance_ratio", "train/p_fake_real", "train/p_fake_generated", "train/l_supervised"]


def cell_curve(cell: Path, every: int) -> pd.DataFrame:
    """Per logged step: validation AUC (where computed) and the training curves, mean over ``every`` steps."""
    metrics = pd.read_csv(next(cell.glob("logs/csv/metrics.csv")))
    metrics = metrics.groupby("step").first().reset_index()
    val_column = next((c for c in ("val/patch_auc", "val/auc") if c in metrics.columns), None)  # not val/image_auc
    bins = (metrics["step"] // every) * every
    train = metrics.drop(columns=[c for c in metrics.columns if c.startswith("val/")] + ["epoch"],
                         errors="ignore").groupby(bins).mean(numeric_only=True).drop(columns="step")
    if val_column is not None:
        val = metrics.dropna(subset=[val_column]).groupby(bins)[val_column].last()
        train[val_column] = val
    return train.reset_index().rename(columns={"step": "step_bin"})


def early_stopping(passes: pd.DataFrame, patience: int, mode: str = "max", val_every: int = 1) -> dict:
    """Replay early stopping on a cell's validation passes (rows with ``epoch``, ``step`` and
    ``value``, in training order; a NaN value is a pass that is never better), as
    :meth:`retinassl.engine.module.TrainingModule` does it: a pass is kept when strictly better than
    the best so far; training stops at the first pass not better whose epoch is ``patience *
    val_every`` epochs or more after the kept one (0: never). Returns the step and epoch of the stop
    and of the kept pass (none is kept while every value is NaN, and then nothing stops)."""
    def better(value: float, best: float) -> bool:
        return not np.isnan(value) and (np.isnan(best) or (value > best if mode == "max" else value < best))

    best = passes.iloc[0]
    stop = passes.iloc[-1]
    for row in passes.iloc[1:].itertuples(index=False):
        if better(row.value, best.value):
            best = row
        elif patience and not np.isnan(best.value) and row.epoch - best.epoch >= patience * val_every:
            stop = row
            break
    return {"stop_step": int(stop.step), "stop_epoch": int(stop.epoch),
            "kept_epoch": int(best.epoch), "kept_value": float(best.value)}


def validation_passes(metrics_file: Path, column: str) -> pd.DataFrame | None:
    """``epoch, step, value`` of every validation pass logged in a cell's ``metrics.csv`` (a pass
    whose metric was NaN included), or None when ``column`` is not logged."""
    metrics = pd.read_csv(metrics_file, dtype={column: str}, keep_default_na=False)
    if column not in metrics.columns:
        return None
    passes = metrics[metrics[column] != ""]
    return pd.DataFrame({"epoch": passes["epoch"].astype(int), "step": passes["step"].astype(int),
                         "value": passes[column].astype(float)}).reset_index(drop=True)


def patience_table(run: Path, patiences: list[int], column: str, mode: str) -> tuple[pd.DataFrame, dict]:
    """Per finished cell with ``column`` logged that trained its whole schedule (no early stop): the pass the
    whole schedule kept (checked against the cell's ``train.json``), and per patience the stop, the
    kept pass and whether it is the same. Same pass means same weights only for a rerun with the same
    ``max_steps`` (the learning-rate decay starts at a share of it) and patience added."""
    engines = {name: learner["engine"] for name, learner in config_data(run / "config.yaml")["learners"].items()}
    rows, data = [], {}
    for cell in sorted(p for p in (run / "cells").iterdir() if p.is_dir()):
        metrics_file = next(cell.glob("logs/csv/metrics.csv"), None)
        learner = parse_cell_name(cell.name)[0]
        if metrics_file is None or not (cell / "train.json").is_file():
            continue  # unfinished
        trained = json.loads((cell / "train.json").read_text())
        max_steps = engines[learner].get("max_steps")
        if engines[learner].get("patience") and (max_steps is None or int(trained["train_steps"]) < int(max_steps)):
            continue  # stopped early: no whole schedule to compare with
        passes = validation_passes(metrics_file, column)
        if passes is None:
            continue
        val_every = int(engines[learner].get("val_every_n_epochs", 1))
        whole = early_stopping(passes, 0, mode, val_every)
        if whole["kept_epoch"] != int(trained["selected_epoch"]):
            raise AssertionError(f"{cell}: the replay keeps epoch {whole['kept_epoch']}, the engine kept "
                                 f"{trained['selected_epoch']:g}")
        total = int(trained["train_steps"])
        row = {"cell": cell.name, "kept epoch (whole schedule)": whole["kept_epoch"],
               f"kept {column}": whole["kept_value"]}
        data[cell.name] = {"whole": whole, "steps": total}
        for patience in patiences:
            replay = early_stopping(passes, patience, mode, val_every)
            same = replay["kept_epoch"] == whole["kept_epoch"]
            done = replay["stop_step"] + 1  # the logged step counts the batches before the pass's
            row[f"patience {patience}: steps"] = f"{done} ({done / total:.0%})"
            row[f"patience {patience}: same pass"] = "yes" if same else f"no (epoch {replay['kept_epoch']})"
            data[cell.name][f"patience_{patience}"] = {**replay, "same_pass": same}
        rows.append(row)
    return pd.DataFrame(rows), data


def markdown(table: pd.DataFrame) -> str:
    """A DataFrame as a Markdown table (3 decimals)."""
    rows = ["| " + " | ".join(str(c) for c in table.columns) + " |", "|" + "---|" * len(table.columns)]
    for values in table.itertuples(index=False):
        rows.append("| " + " | ".join("" if pd.isna(v) else f"{v:.3f}" if isinstance(v, float) else str(v)
                                      for v in values) + " |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--name", default="ssl_gan_curve")
    parser.add_argument("--every", type=int, default=200, help="steps per row of the curves")
    parser.add_argument("--command", default="", help="the sweep's command line, recorded verbatim")
    parser.add_argument("--patience", default="", help="comma-separated patiences to replay, e.g. 10,20")
    parser.add_argument("--monitor", default="val/patch_auc:max",
                        help="the monitored column and its direction (max or min) for --patience; cells "
                             "that do not log it are left out")
    args = parser.parse_args()
    results = read_results(args.run / "results.csv")
    parts = [f"Sweep run: `{args.run}`  ", f"Sweep command: `{args.command}`", ""]
    data: dict = {"run": str(args.run), "sweep_command": args.command, "cells": {}}
    if not (args.run / "cells").is_dir():
        parser.error(f"{args.run}: no cells/ with training logs (an archived run keeps none)")
    for cell in sorted(p for p in (args.run / "cells").iterdir() if p.is_dir()):
        if not any(cell.glob("logs/csv/metrics.csv")):
            continue
        curve = cell_curve(cell, args.every)
        method, n, seed = parse_cell_name(cell.name)
        test = results[(results["method"] == method) & (results["n_labelled"] == n)
                       & (results["seed"] == seed)
                       & results["metric"].isin(["image_auc", "patch_auc", "localisation_auc"])]
        summary = {r.metric: float(r.value) for r in test.itertuples()}
        data["cells"][cell.name] = {"test": summary, "curve": curve.to_dict(orient="list")}
        columns = ["step_bin"] + [c for c in curve.columns if c.startswith("val/")] + \
                  [c for c in HEALTH if c in curve.columns] + \
                  [c for c in curve.columns if c == "train/main_loss"]
        parts += [f"## {cell.name}", "",
                  "Test: " + ", ".join(f"{k} {v:.3f}" for k, v in sorted(summary.items())), "",
                  markdown(curve[columns]), ""]
    if args.patience:
        column, mode = args.monitor.split(":")
        if mode not in ("max", "min"):
            parser.error(f"--monitor direction must be max or min, not {mode!r}")
        table, replays = patience_table(args.run, [int(p) for p in args.patience.split(",")], column, mode)
        data["patience"] = replays
        parts[3:3] = ["## Early stopping replayed on the validation passes", "",
                      f"Monitor `{column}` ({mode}); steps: where training would stop (share of the whole "
                      "schedule); same pass: the kept weights are those the whole schedule kept.", "",
                      markdown(table) if len(table) else
                      f"No cell to replay: none is finished with `{column}` logged and its whole schedule "
                      "trained.", ""]
    write_results(args.name, data, "\n".join(parts))
    print("\n".join(parts))


if __name__ == "__main__":
    main()
