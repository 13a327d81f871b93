"""External validation of IDRiD-trained DR models on other populations and cameras (issue 17).

Trains, through the command line, (1) a whole-image any-DR classifier (`retinassl train
idrid-dr-image`), (2) the patch SSL-GAN and (3) its supervised ConvNet baseline with 20 labelled
images (`retinassl semisup train ssl-gan`, the idrid-ssl-gan cpu-budget recipe of one cell), then
applies them with `retinassl evaluate external` to the MX fundus photographs with a DR grade
(dr 0 vs NPDR/PDR, `dr_any`) and to the RFMiD images that exist (DR column). Each step is skipped
when its run directory has finished, so a killed benchmark continues where it stopped.

    flock /work/heavy.lock nice -n 5 .venv/bin/python benchmarks/external_dr.py [--runs runs/external-dr]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from _common import ROOT, SHARED_DATA, write_results

BIN = Path(sys.executable).parent / "retinassl"
SSL_GAN = ["learner.method.select_on_validation=true", "learner.val_patches=1024", "n_labelled=20"]
STEPS = {
    "image": ["train", "idrid-dr-image", f"data.options.root={SHARED_DATA / 'idrid'}"],
    "ssl-gan": ["semisup", "train", "ssl-gan", "name=ssl-gan-20", *SSL_GAN,
                f"data.options.root={SHARED_DATA / 'idrid'}"],
    "convnet": ["semisup", "train", "ssl-gan", "name=convnet-20", *SSL_GAN,
                "learner.method={name: supervised, lr: 0.001}", "learner.engine.max_steps=400",
                "learner.engine.patience=0", f"data.options.root={SHARED_DATA / 'idrid'}"],
}


def finished(folder: Path) -> Path | None:
    for run in sorted(folder.glob("*")):
        status = run / "run.json"
        if status.is_file() and json.loads(status.read_text()).get("status") == "finished":
            return run
    return None


def step(name: str, runs: Path) -> Path:
    folder = runs / name
    done = finished(folder)
    if done is not None:
        print(f"{name}: reusing {done}")
        return done
    stale = [p for p in folder.glob("*") if (p / "run.json").is_file()]
    args = [str(BIN), *STEPS[name], "--runs-dir", str(folder)] if not stale else \
        [str(BIN), *STEPS[name][:3 if name != "image" else 2], "--resume", str(stale[-1])]
    subprocess.run(args, check=True)
    done = finished(folder)
    assert done is not None, f"{name} did not finish"
    return done


def in_domain(run: Path) -> dict[str, float]:
    """Test AUC on IDRiD with its DeLong interval, from the run's own test predictions."""
    from retinassl.metrics.classification import roc_auc
    from retinassl.metrics.stats import delong_ci

    table = pd.read_csv(next(p for p in (run / "predictions").glob("*.csv")))
    labels, scores = table["label"].to_numpy(int), table["score"].to_numpy(float)
    lo, hi = delong_ci(labels, scores)
    return {"auc": roc_auc(labels, scores), "auc_lo": lo, "auc_hi": hi, "n": float(len(table)),
            "n_positive": float(labels.sum())}


def external(models: list[Path], source: str, options: list[str], label: str, name: str, runs: Path) -> pd.DataFrame:
    folder = runs / f"external-{name}"
    if finished(folder) is None:
        args = [str(BIN), "evaluate", "external", *map(str, models), "--source", source, "--label", label,
                "--name", name, "--runs-dir", str(folder)]
        for option in options:
            args += ["-o", option]
        subprocess.run(args, check=True)
    from retinassl.io.results import read_results

    return read_results(finished(folder) / "results.csv")


def cell(values: dict, key: str = "auc") -> str:
    if key not in values or not np.isfinite(values[key]):
        return "n/a"
    return f"{values[key]:.3f} [{values[key + '_lo']:.3f}, {values[key + '_hi']:.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "external-dr")
    args = parser.parse_args()
    runs = args.runs.resolve()
    trained = {name: step(name, runs) for name in STEPS}
    models = {"image": trained["image"] / "classifier", "ssl-gan": trained["ssl-gan"] / "classifier",
              "convnet": trained["convnet"] / "classifier"}
    mx = [f"root={SHARED_DATA / 'mx_fundus_oct'}", "require=dr_any"]
    tables = {"MX fundus (dr_any)": pd.concat([
        external([models["image"]], "mx_fundus_oct", mx, "dr_any", "mx-image", runs),
        external([models["ssl-gan"], models["convnet"]], "mx_fundus_oct", mx, "dr_any", "mx-patch", runs)])}
    rfmid_note = ""
    try:
        tables["RFMiD subset (DR)"] = pd.concat([
            external([models["image"]], "rfmid", [f"root={SHARED_DATA / 'rfmid_subset'}"], "disease_DR", "rfmid-image", runs),
            external([models["ssl-gan"], models["convnet"]], "rfmid", [f"root={SHARED_DATA / 'rfmid_subset'}"],
                     "disease_DR", "rfmid-patch", runs)])
    except subprocess.CalledProcessError as exc:
        rfmid_note = f"RFMiD: not evaluable ({exc})"
    rows, data = [], {}
    for key, model in (("image", "ResNet-18 whole image, any DR (all 413 labelled training images)"),
                       ("ssl-gan", "SSL-GAN, 20 labelled images (patch lesion labels)"),
                       ("convnet", "ConvNet, 20 labelled images (patch lesion labels)")):
        run = trained[key]
        record = {"in_domain": in_domain(run), "run": str(run.relative_to(ROOT)) if run.is_relative_to(ROOT) else str(run)}
        line = [model, cell(record["in_domain"])]
        for dataset, table in tables.items():
            block = table[(table["init"] == "classifier") & (table["protocol"] == "external")]
            block = block[block["experiment"].str.contains("image" if key == "image" else "patch")]
            mine = block if key == "image" else block[block["method"] == "patch-classifier"]
            if key != "image":  # two patch models in one run: told apart by their order
                inits = list(dict.fromkeys(table.loc[table["experiment"].str.contains("patch") &
                                                     (table["protocol"] == "external"), "init"]))
                wanted = inits[0] if key == "ssl-gan" else inits[-1]
                mine = table[table["experiment"].str.contains("patch") & (table["init"] == wanted) &
                             (table["protocol"] == "external")]
            values = dict(zip(mine["metric"], mine["value"]))
            record[dataset] = values
            line.append(cell(values) + (f"; sens {values['sensitivity']:.2f} / spec {values['specificity']:.2f}"
                                        if "sensitivity" in values else ""))
        data[key] = record
        rows.append("| " + " | ".join(line) + " |")
    comparisons = []
    for dataset, table in tables.items():
        test = table[(table["protocol"] == "comparison")]
        values = dict(zip(test["metric"], test["value"]))
        if values:
            comparisons.append(f"- {dataset}: SSL-GAN vs ConvNet AUC difference {values['auc_difference']:+.3f}, "
                               f"paired DeLong p = {values['delong_p']:.3g}")
            data[f"delong {dataset}"] = values
    header = "| model | IDRiD test AUC [95 % CI] | " + " | ".join(f"{d} AUC [95 % CI]" for d in tables) + " |"
    md = "\n".join([header, "|" + "---|" * (2 + len(tables)), *rows, "", *comparisons,
                    rfmid_note, "",
                    "Intervals: DeLong. Sensitivity/specificity at each model's own operating threshold "
                    "(Youden on its validation images). Runs: " + str(runs)])
    write_results("external_dr", data, md)
    print(md)


if __name__ == "__main__":
    main()
