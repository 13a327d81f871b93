"""The SSL-GAN and its ConvNet with camera-robust recipes beside the current one (issue 23 item 4):
idrid-ssl-gan sweeps that differ only in the recipe (e.g. `preprocess.color_standardize`: each
channel's mean and standard deviation inside the FOV mapped to fixed values; or
`learners.*.method.acquisition`: colour augmentation of the real patches), the same cells (labelled
images x 5 samplings, the cpu budget) and the same external set through `evaluate_on` (MX fundus
photographs with a DR grade, any DR).

Per learner, recipe and labelled-image count: the validation patch AUC of the weights each cell
keeps (the sweep's ``selected_val_*`` rows; for older runs the cells' training logs, where the run
still has them: what a recipe is chosen on), the
IDRiD test image AUC and the MX external AUC (mean ± sd over the samplings); per sampling, paired
DeLong tests on the same images: SSL-GAN vs ConvNet (each recipe) and each recipe vs the first
(each learner), at every count both have cells for. One recipe's
cells may come from several sweeps (``recipe=RUN_A,RUN_B``, e.g. a label count run later); a cell
present in two of them is refused.

A recipe whose run is gone but whose table was written by ``benchmarks/ssl_gan_table.py`` joins as
numbers only (``--numbers recipe=RESULTS.json``): its IDRiD test image AUCs per sampling, shown beside
the runs' rows; no paired test is possible without its predictions, so the table says so.

    .venv/bin/python benchmarks/ssl_gan_robust.py current=RUN robust=RUN [augment=RUN[,RUN] ...]
        [--numbers recipe=RESULTS.json] [--seeds 0,1] [--name ssl_gan_robust] [--command "..."]
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

from retinassl.io.results import read_results  # noqa: E402
from retinassl.io.rundir import RunDir  # noqa: E402
from retinassl.metrics.classification import roc_auc  # noqa: E402
from retinassl.metrics.stats import delong_test, significant_by_sign  # noqa: E402
from retinassl.sweeps.ssl_gan import parse_cell_name, predictions_path  # noqa: E402

LEARNERS = ("ssl-gan", "convnet")
SETS = {"IDRiD test": "ssl-gan", "MX DR (external)": "ssl-gan@mx"}


def predictions(runs: list[Path], folder: str, learner: str,
                seeds: set[int] | None = None) -> dict[tuple[int, int], pd.DataFrame]:
    """The learner's saved predictions in ``folder`` of each run, by (labelled images, seed); only
    the samplings ``seeds`` when given."""
    out: dict[tuple[int, int], pd.DataFrame] = {}
    for run in runs:
        for path in sorted((run / "predictions" / folder).glob(f"{learner}-n*-s*.csv")):
            n, seed = path.stem[len(learner) + 2:].split("-s")
            key = (int(n), int(seed))
            if seeds is not None and key[1] not in seeds:
                continue
            if key in out:
                raise SystemExit(f"{path}: the cell {learner} n={key[0]} seed={key[1]} is in two of the runs {runs}")
            out[key] = pd.read_csv(path, usecols=["id", "label", "score"])
    return out


VALIDATION_METRICS = ("selected_val_patch_auc", "selected_val_auc")  # the SSL-GAN's, the supervised learners'


def validation_auc(runs: list[Path], learner: str, n: int, seeds: set[int] | None = None) -> list[float]:
    """Per cell of ``learner`` with ``n`` labelled images, the validation patch AUC of the weights
    the cell kept (the SSL-GAN's ``select_on_validation``, the supervised learners' best validation
    epoch): the run's ``selected_val_*`` result row, which archived runs keep too; for a cell of a
    run made before that row existed, its ``selected_epoch`` pass (else its last) read from the
    cell's training log, none where the logs are gone. Only finished cells count (those whose test
    predictions are saved): a cell still training has a log too, of passes it may not keep."""
    out = []
    for run in runs:
        recorded: dict[int, float] = {}
        if (run / "results.csv").is_file():
            rows = read_results(run / "results.csv")
            rows = rows[(rows["method"] == learner) & (rows["n_labelled"] == n)
                        & rows["metric"].isin(VALIDATION_METRICS)]
            recorded = {int(r.seed): float(r.value) for r in rows.itertuples()}
        cells = sorted(p for p in (run / "cells").iterdir() if p.is_dir()) if (run / "cells").is_dir() else []
        for cell in cells:  # an archived run keeps no cells: its rows above are all there is
            cell_learner, cell_n, seed = parse_cell_name(cell.name)
            if (cell_learner, cell_n) != (learner, n) or not predictions_path(RunDir(run), learner, n, seed).is_file():
                continue
            if seed not in recorded and (value := _logged_validation_auc(cell)) is not None:
                recorded[seed] = value
        out += [recorded[seed] for seed in sorted(recorded) if seeds is None or seed in seeds]
    return out


def _logged_validation_auc(cell: Path) -> float | None:
    """A cell's kept validation patch AUC from its training log (runs made before ``selected_val_*``)."""
    log = cell / "logs" / "csv" / "metrics.csv"
    if not log.is_file():
        return None
    frame = pd.read_csv(log)
    column = next((c for c in ("val/patch_auc", "val/auc") if c in frame.columns), None)
    if column is None:
        return None
    passes = frame.dropna(subset=[column])
    record = cell / "train.json"
    selected = json.loads(record.read_text()).get("selected_epoch") if record.is_file() else None
    if selected is not None:
        passes = passes[passes["epoch"] == int(selected)]
    return float(passes[column].iloc[-1]) if len(passes) else None


def at(cells: dict[tuple[int, int], pd.DataFrame], n: int) -> dict[int, pd.DataFrame]:
    """The cells with ``n`` labelled images, by seed."""
    return {seed: frame for (count, seed), frame in cells.items() if count == n}


def paired(a: dict[int, pd.DataFrame], b: dict[int, pd.DataFrame]) -> dict:
    """Per common seed, DeLong of a vs b on the images both scored; the sign count of p < 0.05."""
    ps, diffs = [], []
    for seed in sorted(set(a) & set(b)):
        both = a[seed].merge(b[seed], on=["id", "label"], suffixes=("_a", "_b"))
        test = delong_test(both["label"].to_numpy(int), both["score_a"].to_numpy(float), both["score_b"].to_numpy(float))
        ps.append(test.p_value)
        diffs.append(test.difference)
    better, worse = significant_by_sign(ps, diffs)
    return {"p": ps, "difference": diffs, "better": better, "worse": worse, "n": len(ps)}


def table_numbers(path: Path) -> dict[tuple[str, int], list[float]]:
    """``(learner, labelled) -> IDRiD test image AUC per sampling`` from a results JSON of
    ``benchmarks/ssl_gan_table.py``."""
    rows = json.loads(path.read_text()).get("metrics", {}).get("image_auc")
    if not rows:
        raise SystemExit(f"{path}: no metrics.image_auc (not a results file of benchmarks/ssl_gan_table.py)")
    return {(r["method"], int(r["n_labelled"])): [float(v) for v in r["values"]] for r in rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="recipe=RUN_DIRECTORY[,RUN_DIRECTORY]; the first recipe is the reference")
    parser.add_argument("--name", default="ssl_gan_robust")
    parser.add_argument("--command", default="", help="the sweeps' command lines, recorded verbatim")
    parser.add_argument("--numbers", action="append", default=[], metavar="RECIPE=RESULTS.json",
                        help="a recipe known only by its ssl_gan_table.py results (IDRiD test image AUCs)")
    parser.add_argument("--seeds", default=None, help="only these samplings, e.g. 0,1 (default: all)")
    args = parser.parse_args()
    seeds = None if args.seeds is None else {int(x) for x in args.seeds.split(",")}
    numbers = {name: (Path(path), table_numbers(Path(path)))
               for name, path in (item.split("=", 1) for item in args.numbers)}
    runs = {name: [Path(run) for run in value.split(",")] for name, value in (item.split("=", 1) for item in args.runs)}
    for recipe, paths in runs.items():
        for run in paths:
            if not any((run / "predictions" / SETS["IDRiD test"]).glob("*-n*-s*.csv")):
                raise SystemExit(f"{recipe}={run}: no idrid-ssl-gan predictions there (predictions/ssl-gan/*.csv)")
    reference = next(iter(runs))
    scores = {(recipe, learner, name): predictions(paths, folder, learner, seeds)
              for recipe, paths in runs.items() for learner in LEARNERS for name, folder in SETS.items()}
    counts = sorted({n for cells in scores.values() for n, _ in cells})
    data = {"runs": {k: [str(p) for p in v] for k, v in runs.items()}, "sweep_command": args.command,
            "seeds": None if seeds is None else sorted(seeds),
            "labelled": counts, "auc": {}, "tests": []}
    for (recipe, learner, name), cells in scores.items():
        for n in counts:
            by_seed = at(cells, n)
            if by_seed:
                data["auc"][f"{recipe} / {learner} / {name} / n={n}"] = [
                    roc_auc(t["label"].to_numpy(int), t["score"].to_numpy(float)) for t in by_seed.values()]
    for recipe, (path, table) in numbers.items():
        data.setdefault("numbers", {})[recipe] = str(path)
        for (learner, n), values in table.items():
            if learner in LEARNERS and n in counts:
                data["auc"][f"{recipe} / {learner} / IDRiD test / n={n}"] = values
    for recipe, paths in runs.items():
        for learner in LEARNERS:
            for n in counts:
                if values := validation_auc(paths, learner, n, seeds):
                    data.setdefault("validation_patch_auc", {})[f"{recipe} / {learner} / n={n}"] = values
    lines = ["| learner | recipe | labelled | validation patch AUC (kept pass; mean ± sd, n) | "
             + " | ".join(f"{n} AUC (mean ± sd, n seeds)" for n in SETS) + " |", "|---|---|---|---|" + "---|" * len(SETS)]
    for learner in LEARNERS:
        for recipe in [*runs, *numbers]:
            for n in counts:
                cells = []
                for name in SETS:
                    aucs = np.array(data["auc"].get(f"{recipe} / {learner} / {name} / n={n}", []))
                    cells.append(f"{aucs.mean():.3f} ± {aucs.std(ddof=1) if len(aucs) > 1 else 0:.3f} ({len(aucs)})"
                                 if len(aucs) else "-")
                val = np.array(data.get("validation_patch_auc", {}).get(f"{recipe} / {learner} / n={n}", []))
                validation = f"{val.mean():.3f} ± {val.std(ddof=1) if len(val) > 1 else 0:.3f} ({len(val)})" \
                    if len(val) else "-"
                if any(c != "-" for c in cells):
                    lines.append(f"| {learner} | {recipe} | {n} | {validation} | " + " | ".join(cells) + " |")
    lines += ["", "Paired DeLong tests per sampling (same images; difference = first - second):", "",
              "| comparison | labelled | images | mean AUC difference | p per seed | p < 0.05 (higher / lower) |",
              "|---|---|---|---|---|---|"]
    comparisons = [(f"ssl-gan vs convnet, {recipe}", (recipe, "ssl-gan"), (recipe, "convnet")) for recipe in runs]
    comparisons += [(f"{recipe} vs {reference}, {learner}", (recipe, learner), (reference, learner))
                    for recipe in list(runs)[1:] for learner in LEARNERS]
    for label, (ra, la), (rb, lb) in comparisons:
        for n in counts:
            for name in SETS:
                test = paired(at(scores[(ra, la, name)], n), at(scores[(rb, lb, name)], n))
                if not test["n"]:
                    continue
                data["tests"].append({"comparison": label, "labelled": n, "set": name, **test})
                lines.append(f"| {label} | {n} | {name} | {np.mean(test['difference']):+.3f} | "
                             + ", ".join(f"{p:.3g}" for p in test["p"])
                             + f" | {test['better']} / {test['worse']} of {test['n']} |")
    lines += ["", "Runs: " + ", ".join(f"{k} " + ", ".join(f"`{p}`" for p in v) for k, v in runs.items())
              + "".join(f"  \nNumbers only (its predictions were not kept: no paired test): {k} `{path}`, "
                        "IDRiD test image AUC per sampling" for k, (path, _) in numbers.items())
              + (f"  \nSweep commands: {args.command}" if args.command else "")]
    write_results(args.name, data, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
