"""Issues 18 and 20 on the MX diabetic eyes: DR from the fundus photograph with scarce labels, and
cross-modal pretraining on the real fundus + OCT pairs (preset ``mx-dr-transfer-real``).

Stages, each keeping what it finished:

0. ``shortcut``: why the downstream task is DR and not DME: per photograph, the field-of-view
   fraction (pixels brighter than 8 of 255) and the mean grey level, their AUC for DME and for DR,
   and the cross-table of field of view by label (the two acquisitions of the release).

1. ``targets``: annotation-free ILM/BM boundaries (graph search, :mod:`retinassl.oct.graph_search`)
   and the maximum retinal thickness near the fovea (pixels: the B-scans carry no spacing) of every
   MX OCT B-scan, with its quality flags -> ``<work>/oct_thickness.csv`` (toolkit ids only).
2. ``pairs``: every MX fundus photograph whose eye has a B-scan with clean boundaries gets the eye's
   thickness (the largest maximum over its clean B-scans) and its tercile, ``thickness_class``
   (0 thin / 1 / 2 thick; edges from the eyes' values; no DME or DR label is read), and the value
   itself, ``thickness_px`` (the regression target) -> ``<work>/pairs.csv``.
3. ``sweep``: the transfer sweep: scratch, cross-modal (fundus -> thickness tercile) and Fundus
   (normal vs glaucoma) initialisations, linear probe for any DR at 5-100 % of the training labels,
   5 seeds, DeLong against scratch; the pool is cleaned of every test image, copy and test patient
   by the sweep, so the cross-modal encoder never sees a test eye.

Writes ``benchmarks/results/mx_dr_transfer_real.{json,md}``. Usage (heavy: under the lock)::

    nohup flock /work/heavy.lock nice -n 5 .venv/bin/python benchmarks/crossmodal_real.py \\
        > runs/crossmodal_real.log 2>&1 &
    # resume the sweep of a killed run:
    ... benchmarks/crossmodal_real.py --resume runs/mx-dme-transfer-real-<time>
    # an encoder pretrained elsewhere (e.g. the IDRiD study's lesion segmentation) beside scratch:
    ... benchmarks/crossmodal_real.py --inits scratch,lesions --init-from lesions=runs/<idrid run>/pretrain/lesions/encoder \
        --results-name mx_dr_transfer_lesions
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (ROOT, SHARED_DATA, add_study_arguments, pretrained_label, pretraining_costs, results_name, run_study,  # noqa: E402
                     study_config, with_shared_data_root, write_results)

from retinassl.atomic import write_text  # noqa: E402
from retinassl.config import read_yaml  # noqa: E402
from retinassl.data.sources.mx_fundus_oct import load_mx_fundus_oct  # noqa: E402
from retinassl.io.results import read_results  # noqa: E402
from retinassl.io.rundir import RunDir  # noqa: E402
from retinassl.oct.bscan_images import read_bscan_images  # noqa: E402
from retinassl.oct.bscan_thickness import bscan_thickness  # noqa: E402
from retinassl.oct.graph_search import detect_boundaries  # noqa: E402

PRESET = "mx-dr-transfer-real"
MX = SHARED_DATA / "mx_fundus_oct"
THICKNESS_COLUMNS = ["id", "clean", "central_px", "maximum_px"]
log = logging.getLogger("retinassl.bench")


def acquisition_shortcut() -> dict:
    """Stage 0: how much of DME / DR the field of view and brightness alone predict."""
    from PIL import Image
    from retinassl.metrics.stats import delong_ci, delong_covariance

    fundus = load_mx_fundus_oct(MX, modality="fundus").frame
    fov, grey = [], []
    for path in fundus["image"]:
        g = np.asarray(Image.open(MX / path).convert("L"), dtype=np.float32)
        fov.append(float((g > 8).mean()))
        grey.append(float(g.mean()))
    out: dict = {"photographs": len(fundus)}
    fov_bins = pd.cut(pd.Series(fov), [0, 0.7, 0.75, 0.8, 0.85, 1.0])
    for label in ("dme", "dr_any"):
        y = pd.to_numeric(fundus[label], errors="coerce")
        ok = y.notna().to_numpy()
        yy = y[ok].astype(int).to_numpy()
        block = {"graded": int(ok.sum()), "positives": int(yy.sum())}
        for name, values in (("fov_fraction", np.array(fov)), ("mean_grey", np.array(grey))):
            point = float(delong_covariance(yy, values[ok])[0][0])
            sign = 1.0 if point >= 0.5 else -1.0   # the AUC of the better direction, and which it is
            block[f"auc_{name}"] = {"auc": max(point, 1 - point), "direction": "higher" if sign > 0 else "lower",
                                    "delong_ci": [float(v) for v in delong_ci(yy, sign * values[ok])]}
        block["by_fov"] = {str(k): {str(int(c)): int(n) for c, n in g.value_counts().sort_index().items()}
                           for k, g in y[ok].groupby(fov_bins[ok].astype(str))}
        out[label] = block
    out["graded_for_dr"] = int(pd.to_numeric(fundus["dr_any"], errors="coerce").notna().sum())
    out["dme_positive_among_dr_graded"] = int(((pd.to_numeric(fundus["dr_any"], errors="coerce").notna())
                                               & (pd.to_numeric(fundus["dme"], errors="coerce") == 1)).sum())
    out["dme_positive_not_dr_graded"] = int(((pd.to_numeric(fundus["dr_any"], errors="coerce").isna())
                                             & (pd.to_numeric(fundus["dme"], errors="coerce") == 1)).sum())
    out["not_dr_graded"] = int(pd.to_numeric(fundus["dr_any"], errors="coerce").isna().sum())
    log.info("acquisition shortcut: %s", out)
    return out


def oct_thickness(work: Path) -> pd.DataFrame:
    """Stage 1: boundaries and thickness of every MX B-scan (resumes from the rows already written)."""
    out = work / "oct_thickness.csv"
    done = pd.read_csv(out) if out.is_file() else pd.DataFrame(columns=THICKNESS_COLUMNS)
    octs = load_mx_fundus_oct(MX, modality="oct").frame
    todo = octs[~octs["id"].isin(set(done["id"]))]
    rows = done.to_dict("records")
    if len(todo):  # the B-scans carry no spacing: said once here, not once per B-scan
        log.info("OCT thickness of %d B-scans in pixels (the MX exports state no pixel spacing)", len(todo))
        logging.getLogger("retinassl.oct.bscan_images").setLevel(logging.ERROR)
    t0 = time.perf_counter()
    for i, row in enumerate(todo.itertuples(), 1):
        bscan = read_bscan_images(MX / row.image).bscans[0]
        found = detect_boundaries(bscan, None, None)
        th = bscan_thickness(found.ilm, found.bm, None, quality=found.quality)
        rows.append({"id": row.id, "clean": bool(found.quality.clean),
                     "central_px": th.central, "maximum_px": th.maximum})
        if i % 50 == 0 or i == len(todo):
            write_text(out, pd.DataFrame(rows, columns=THICKNESS_COLUMNS).to_csv(index=False))
            log.info("OCT thickness: %d / %d B-scans (%.1f s)", len(rows), len(octs), time.perf_counter() - t0)
    return pd.DataFrame(rows, columns=THICKNESS_COLUMNS)


def thickness_pairs(work: Path, thickness: pd.DataFrame) -> tuple[Path, dict]:
    """Stage 2: the fundus photographs with the thickness tercile of their eye's clean B-scans."""
    fundus = load_mx_fundus_oct(MX, modality="fundus").frame
    clean = thickness[thickness["clean"].astype(bool) & np.isfinite(thickness["maximum_px"].astype(float))]
    maximum = dict(zip(clean["id"], clean["maximum_px"].astype(float)))
    values = []
    for ids in fundus["oct_ids"].fillna("").astype(str):
        found = [maximum[i] for i in ids.split(";") if i in maximum]
        values.append(max(found) if found else math.nan)
    fundus = fundus.assign(thickness_px=values)
    paired = fundus[np.isfinite(fundus["thickness_px"])].copy()
    # terciles over eyes (one value per patient group and eye), not photographs
    eyes = paired.drop_duplicates(["patient", "eye"])["thickness_px"].to_numpy()
    edges = np.quantile(eyes, [1 / 3, 2 / 3])
    paired["thickness_class"] = np.searchsorted(edges, paired["thickness_px"].to_numpy(), side="right")
    table = paired[["id", "image", "patient", "eye", "thickness_class", "thickness_px"]]
    path = work / "pairs.csv"
    write_text(path, table.to_csv(index=False))
    info = {"bscans": len(thickness), "bscans_clean": int(thickness["clean"].astype(bool).sum()),
            "fundus_photographs": len(fundus), "photographs_with_clean_pair": len(paired),
            "eyes_with_clean_pair": len(eyes), "tercile_edges_px": [float(e) for e in edges],
            "photographs_per_class": {int(k): int(v) for k, v in paired["thickness_class"].value_counts().sort_index().items()}}
    log.info("pairs: %s", info)
    return path, info


def summary(run: RunDir, config, seconds: float, pairs: dict) -> tuple[dict, str]:
    results = read_results(run.results_file)
    pretrain = pretraining_costs(run, config, results)
    downstream = pd.read_csv(run.path / "data" / "downstream.csv")
    removed = run.path / "data" / "pool-removed.csv"
    removed = pd.read_csv(removed) if removed.is_file() else pd.DataFrame(columns=["reason"])
    comparison_csv = run.path / "comparison.csv"
    comparison = pd.read_csv(comparison_csv) if comparison_csv.is_file() else None
    data = {"run": str(run.path.relative_to(ROOT) if run.path.is_relative_to(ROOT) else run.path),
            "wall_seconds": seconds, "pairs": pairs,
            "downstream": {"train": int((downstream["split"] != "test").sum()),
                           "test": int((downstream["split"] == "test").sum())},
            "pool_removed_by_reason": removed["reason"].value_counts().to_dict(),
            "pretrain": pretrain, "comparison": comparison.to_dict("records") if comparison is not None else []}
    lines = [f"Run directory: `{data['run']}` (git-ignored); wall time {seconds / 3600:.2f} h.", "",
             f"Downstream: the DR-graded MX fundus photographs, any DR vs none, split 70/30 by linked-patient "
             f"group (seed 0, stratified by DR): {data['downstream']['train']} training, "
             f"{data['downstream']['test']} test photographs.", "",
             f"OCT targets: {pairs['bscans']} B-scans, {pairs['bscans_clean']} with clean graph-search "
             f"boundaries; {pairs['photographs_with_clean_pair']} of {pairs['fundus_photographs']} "
             f"photographs ({pairs['eyes_with_clean_pair']} eyes) have a clean paired B-scan; thickness "
             f"tercile edges {pairs['tercile_edges_px'][0]:.1f} / {pairs['tercile_edges_px'][1]:.1f} px "
             f"(photographs per class {pairs['photographs_per_class']}). The sweep removed from the pool "
             f"{sum(data['pool_removed_by_reason'].values())} rows: {data['pool_removed_by_reason']}.", "",
             "| init | images trained on | steps | batch | 2-core min | images/s | final loss |",
             "|---|---|---|---|---|---|---|"]
    for init, p in pretrain.items():
        loss = next((v for k, v in p.items() if k.startswith("final_") and k.endswith("loss")), math.nan)
        lines.append(f"| {pretrained_label(init, p)} | {p['images_used']:.0f} | {p.get('pretrain_batches', 0):.0f} | "
                     f"{p['batch_size']} | "
                     f"{p['two_core_minutes']:.1f} | {p['images_per_s']:.1f} | {loss:.3f} |")
    for init, p in pretrain.items():  # a regression init with a held-out share of the eyes
        if "val_mae" in p:
            lines += ["", f"Held-out check of `{init}` (fundus -> the eye's maximum retinal thickness, "
                      f"{p.get('val_epoch', math.nan) + 1:.0f} epochs at its best): mean absolute error "
                      f"{p['val_mae']:.1f} px against {p['val_mae_of_mean']:.1f} px for always predicting the "
                      f"training mean (skill {p['val_skill']:+.3f}; > 0: better than the mean)."]
    if comparison is not None:
        auc = comparison[(comparison["metric"] == "auc") & (comparison["protocol"] == "probe")]
        lines += ["", "Issue 18/20 targets, on MX any DR instead of MX DME (see above): at 5 % and 10 % of the "
                  "labels, +0.05 AUC and DeLong p < 0.05 in 4 of 5 seeds:", ""]
        for r in auc[auc["fraction"].isin([0.05, 0.1]) & (auc["init"] != config.reference)].itertuples():
            ok = r.delta >= 0.05 and r.sig_better >= 4
            lines.append(f"- {r.task} at {r.fraction:g}: {r.init} - {config.reference} = {r.delta:+.3f} AUC, "
                         f"significantly higher in {r.sig_better:.0f} of {r.n_seeds:.0f} seeds "
                         f"({'meets' if ok else 'misses'} the target).")
        lines += ["", (run.path / "comparison.md").read_text()]
    return data, "\n".join(lines)


def _shortcut_md(s: dict) -> str:
    dme, dr = s["dme"], s["dr_any"]
    lines = ["**Why DR and not DME (acquisition shortcut).** Of the "
             f"{s['photographs']} MX fundus photographs, {s['not_dr_graded']} are graded for DME but not for DR; "
             f"{s['dme_positive_not_dr_graded']} of them have DME. The {s['graded_for_dr']} DR-graded ones have "
             f"{s['dme_positive_among_dr_graded']} with DME. Field-of-view fraction alone (no learning): DME AUC "
             f"{dme['auc_fov_fraction']['auc']:.3f} ({dme['auc_fov_fraction']['direction']} for DME), "
             f"any-DR AUC {dr['auc_fov_fraction']['auc']:.3f}; mean grey level: DME {dme['auc_mean_grey']['auc']:.3f}, "
             f"any DR {dr['auc_mean_grey']['auc']:.3f}.", "",
             "| field-of-view fraction | DME 0 | DME 1 | no DR | any DR |", "|---|---|---|---|---|"]
    for k in dme["by_fov"]:
        a, b = dme["by_fov"].get(k, {}), dr["by_fov"].get(k, {})
        lines.append(f"| {k} | {a.get('0', 0)} | {a.get('1', 0)} | {b.get('0', 0)} | {b.get('1', 0)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", choices=["smoke", "cpu", "full"], default="cpu")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "crossmodal-real",
                        help="where the OCT targets and the pairs table are kept (resumable)")
    parser.add_argument("--resume", type=Path, default=None, help="continue this sweep run directory")
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "runs")
    parser.add_argument("--stage", choices=["shortcut", "targets", "pairs", "sweep"], default="sweep",
                        help="stop after this stage (each stage runs the ones before it as needed)")
    add_study_arguments(parser)
    args = parser.parse_args()
    from retinassl.logs import setup_logging

    setup_logging(logging.INFO)
    args.work.mkdir(parents=True, exist_ok=True)
    shortcut = acquisition_shortcut()
    if args.stage == "shortcut":
        write_results("mx_acquisition_shortcut", shortcut, _shortcut_md(shortcut))
        return
    thickness = oct_thickness(args.work)
    if args.stage == "targets":
        return
    pairs_csv, pairs = thickness_pairs(args.work, thickness)
    if args.stage == "pairs":
        return
    data = with_shared_data_root(read_yaml(PRESET))
    data["pool"]["data"][0]["options"]["csv"] = str(pairs_csv)
    config = study_config(data, args.budget, args.inits, args.steps, args.init_from, args.set, args.pretrain_seeds)
    name = PRESET if args.budget == "cpu" else f"{PRESET}-{args.budget}"
    out = results_name(args, name.replace("-", "_"))  # checked before the run, not after it
    run, seconds = run_study(config, args, name)
    result, text = summary(run, config, seconds, pairs)
    result["acquisition_shortcut"] = shortcut
    text = _shortcut_md(shortcut) + "\n\n" + text
    write_results(out, result, text)
    print(text)


if __name__ == "__main__":
    main()
