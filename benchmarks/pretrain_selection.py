"""The pretraining-seed choice of finished sweeps (``pretrain_seeds``) rescored with and without the
training images whose labels or masks the candidates' pretraining read (the held-out rule of
:func:`retinassl.sweeps.transfer_data.training_holdout`); nothing is retrained and no test image is read.

Each candidate encoder (``pretrain/<init>/seed-<s>/encoder``) gets the sweep's own selection score
(:meth:`~retinassl.sweeps.transfer_inits.TransferInits.selection_scores`: a linear probe fitted beside
the held-out training patients, mean over the selection splits) twice: on the held-out splits that may
hold those images out, with the probe's ``C`` chosen on folds over the rows (the rule before session
28, ``probe.inner_cv: rows``), and on the splits that never do, ``C`` chosen on folds of patients that
never validate on them either (the rule now, ``inner_cv: grouped``). The first is checked against the score the run recorded when it was made under that rule. The run's
records are not changed (its cleaned downstream files are prepared again, to the same content).

    python benchmarks/pretrain_selection.py RUN [RUN ...] --name pretrain_selection_rule
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_results  # noqa: E402


def rescore(run_path: Path) -> list[dict]:
    from retinassl.sweeps.transfer_config import resolve_config
    from retinassl.io.rundir import RunDir
    from retinassl.sweeps.transfer import TransferGrid
    from retinassl.sweeps.transfer_inits import selection_records

    config = resolve_config(yaml.safe_load((run_path / "transfer.yaml").read_text()), None).model_dump(mode="json")
    rules = {"may hold them out": "rows", "never holds them out": "grouped"}  # the probe's inner_cv of each rule
    grids = {rule: TransferGrid({**config, "probe": {**config["probe"], "inner_cv": inner_cv}}, RunDir(run_path))
             for rule, inner_cv in rules.items()}  # not resumed: the run's status stays
    grid = grids["never holds them out"]
    task = grid.config.choice_task()
    out = []
    for record in selection_records(grid.run):
        candidates = {c["seed"]: run_path / "pretrain" / record["init"] / f"seed-{c['seed']}" / "encoder"
                      for c in record["candidates"]}
        spec = grid.config.init_named(record["init"])
        annotated = grid.annotated_by_candidates(spec, candidates)
        splits = {"may hold them out": grid.selection_holdouts(task, None),
                  "never holds them out": grid.selection_holdouts(task, annotated)}
        held = {rule: [int(annotated[v].sum()) for _, v in s] for rule, s in splits.items()}
        sizes = {rule: [len(v) for _, v in s] for rule, s in splits.items()}
        for c in record["candidates"]:
            scores = {rule: grids[rule].selection_scores(candidates[c["seed"]], task, s,
                                                         annotated if rule == "never holds them out" else None)
                      for rule, s in splits.items()}
            out.append({"run": run_path.name, "init": record["init"], "seed": c["seed"],
                        "recorded_rule": recorded_rule(record),
                        "recorded_mean": c["mean"], "recorded_chosen": record["chosen"] == c["seed"],
                        "annotated_training_images": int(annotated.sum()),
                        **{f"{rule}: scores": v for rule, v in scores.items()},
                        **{f"{rule}: mean": float(np.mean(v)) for rule, v in scores.items()},
                        **{f"{rule}: held out": sizes[rule] for rule in splits},
                        **{f"{rule}: annotated held out": held[rule] for rule in splits}})
    return out


def recorded_rule(record: dict) -> str:
    """The rule a run's choice was made under: before session 28 (no ``never_held_out``), the held-out
    rule with C on row folds (session 28), or the rule now (``probe_inner_cv: grouped``)."""
    if "never_held_out" not in record:
        return "may hold them out"
    if record.get("probe_inner_cv", "rows") == "rows":
        return "never holds them out, C on row folds"
    return "never holds them out"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--name", default="pretrain_selection_rule")
    args = parser.parse_args()
    rows = [row for run in args.runs for row in rescore(run)]
    for row in rows:  # each rescoring reproduces what a run recorded under its rule
        if row["recorded_rule"] in ("may hold them out", "never holds them out"):
            assert abs(row[f"{row['recorded_rule']}: mean"] - row["recorded_mean"]) < 1e-9, row
    lines = ["| run | init | seed | annotated training images | held out per split (annotated among them), before "
             "| validation, before | held out per split, now | validation, now | chosen by the run |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['run']} | {r['init']} | {r['seed']} | {r['annotated_training_images']} | "
                     f"{np.mean(r['may hold them out: held out']):.0f} "
                     f"({np.mean(r['may hold them out: annotated held out']):.1f}) | "
                     f"{r['may hold them out: mean']:.3f} | {np.mean(r['never holds them out: held out']):.0f} | "
                     f"{r['never holds them out: mean']:.3f} | {'yes' if r['recorded_chosen'] else ''} |")
    best = {}
    for r in rows:
        key = (r["run"], r["init"])
        if key not in best or r["never holds them out: mean"] > best[key]["never holds them out: mean"]:
            best[key] = r
    lines.append("")
    lines += [f"- {run} {init}: the rule now keeps seed {r['seed']}" for (run, init), r in best.items()]
    write_results(args.name, {"rows": rows}, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
