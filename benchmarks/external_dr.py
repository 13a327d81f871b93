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
    # the same recipe made robust to the camera, chosen before looking at any external image:
    # colour standardisation inside the FOV (intensities in [0, 1]) and acquisition augmentation
    "image-robust": ["train", "idrid-dr-image", f"data.options.root={SHARED_DATA / 'idrid'}",
                     "name=idrid-dr-image-robust", "preprocess.normalize=max", "preprocess.color_standardize=true",
                     "method.acquisition={gamma_probability: 0.5, blur_probability: 0.3, downscale_probability: 0.3, "
                     "saturation_hue_probability: 0.5, jpeg_probability: 0.3, vignetting_probability: 0.3}"],
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


def run_once(folder: Path, args: list[str], resume: list[str]) -> Path:
    """The finished run in ``folder``, made by ``retinassl *args`` (or continued with ``retinassl
    *resume --resume RUN`` after a kill) unless one has finished already."""
    done = finished(folder)
    if done is not None:
        print(f"{folder.name}: reusing {done}", flush=True)
        return done
    stale = sorted(p for p in folder.glob("*") if (p / "run.json").is_file())
    subprocess.run([str(BIN), *resume, "--resume", str(stale[-1])] if stale else
                   [str(BIN), *args, "--runs-dir", str(folder)], check=True)
    done = finished(folder)
    assert done is not None, f"{folder} did not finish"
    return done


def step(name: str, runs: Path) -> Path:
    return run_once(runs / name, STEPS[name], STEPS[name][:3 if name != "image" else 2])


def in_domain(run: Path) -> dict[str, float]:
    """Test AUC on IDRiD with its DeLong interval, from the run's own test predictions."""
    from retinassl.metrics.classification import roc_auc
    from retinassl.metrics.stats import delong_ci

    table = pd.read_csv(next(p for p in (run / "predictions").glob("*.csv")))
    labels, scores = table["label"].to_numpy(int), table["score"].to_numpy(float)
    lo, hi = delong_ci(labels, scores)
    return {"auc": roc_auc(labels, scores), "auc_lo": lo, "auc_hi": hi, "n": float(len(table)),
            "n_positive": float(labels.sum())}


def external(models: list[Path], source: str, options: list[str], label: str, name: str, runs: Path,
             extra: list[str] = ()) -> pd.DataFrame:
    """``retinassl evaluate external`` of ``models`` on a labelled dataset (``extra``: more of its
    options, e.g. ``--split test``), once for these models (the folder names them by a digest: a
    finished evaluation of other models is not reused); its results table."""
    import hashlib

    digest = hashlib.sha256("\n".join(map(str, [*models, *options, *extra])).encode()).hexdigest()[:8]
    folder = runs / f"external-{name}-{digest}"
    if finished(folder) is None:
        args = [str(BIN), "evaluate", "external", *map(str, models), "--source", source, "--label", label,
                "--name", name, "--runs-dir", str(folder), *extra]
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
    models = {key: trained[key] / "classifier" for key in STEPS}
    groups = {"whole-image": ["image", "image-robust"], "patches": ["ssl-gan", "convnet"]}
    datasets = {"MX fundus (dr_any)": ("mx_fundus_oct", [f"root={SHARED_DATA / 'mx_fundus_oct'}", "require=dr_any"],
                                       "dr_any", "mx"),
                "RFMiD subset (DR)": ("rfmid", [f"root={SHARED_DATA / 'rfmid_subset'}"], "disease_DR", "rfmid")}
    results: dict[str, dict[str, dict[str, float]]] = {key: {} for key in STEPS}
    comparisons, notes = [], []
    for dataset, (source, options, label, tag) in datasets.items():
        for group, keys in groups.items():
            try:
                table = external([models[k] for k in keys], source, options, label, f"{tag}-{group}", runs)
            except subprocess.CalledProcessError as exc:
                notes.append(f"{dataset}, {group} models: not evaluable (exit {exc.returncode}; see the log)")
                continue
            inits = list(dict.fromkeys(table.loc[table["protocol"] == "external", "init"]))
            for key, init in zip(keys, inits):
                block = table[(table["init"] == init) & (table["protocol"] == "external")]
                results[key][dataset] = dict(zip(block["metric"], block["value"]))
            test = table[table["protocol"] == "comparison"]
            values = dict(zip(test["metric"], test["value"]))
            if values:
                comparisons.append(f"- {dataset}: {keys[0]} vs {keys[1]}: AUC difference "
                                   f"{values['auc_difference']:+.3f}, paired DeLong p = {values['delong_p']:.3g}")
    names = {"image": "ResNet-18 whole image, any DR (404 training images after the leakage check)",
             "image-robust": "the same + colour standardisation and acquisition augmentation",
             "ssl-gan": "SSL-GAN, 20 labelled images (patch lesion labels)",
             "convnet": "ConvNet, 20 labelled images (patch lesion labels)"}
    rows, data = [], {"comparisons": comparisons, "notes": notes}
    for key in STEPS:
        record = {"in_domain": in_domain(trained[key]), "run": str(trained[key]), **results[key]}
        data[key] = record
        line = [names[key], cell(record["in_domain"])]
        for dataset in datasets:
            values = results[key].get(dataset, {})
            line.append(cell(values) + (f"; sens {values['sensitivity']:.2f} / spec {values['specificity']:.2f}"
                                        if "sensitivity" in values else ""))
        rows.append("| " + " | ".join(line) + " |")
    tables = datasets
    rfmid_note = "\n".join(notes)
    header = "| model | IDRiD test AUC [95 % CI] | " + " | ".join(f"{d} AUC [95 % CI]" for d in tables) + " |"
    md = "\n".join([header, "|" + "---|" * (2 + len(tables)), *rows, "", *comparisons,
                    rfmid_note, "",
                    "Intervals: DeLong. Sensitivity/specificity at each model's own operating threshold "
                    "(Youden on its validation images). Runs: " + str(runs)])
    write_results("external_dr", data, md)
    print(md)


if __name__ == "__main__":
    main()
