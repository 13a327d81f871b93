"""The camera gap that acquisition-robust preprocessing should close, measured by colour statistics.

Two datasets from different cameras and populations, IDRiD part B (Kowa VX-10 alpha, India; 516
images) and the MX fundus photographs (Mexico; 921 images), are told apart by a classifier that sees
nothing but each image's global colour statistics inside the field of view. The lower its AUC, the
more alike the two datasets look to a network. The same statistics also separate DR from grade-0
images inside IDRiD (and inside MX): a shortcut a DR classifier can learn without looking at any
lesion, which does not transfer to another camera.

For every preprocessing option (none, Graham's background subtraction, colour standardisation,
luminance CLAHE, LAB statistics matching and histogram matching to the IDRiD training images, and
the resolution/blur normalisation) each image's pixels are exactly what the cache would store inside
the FOV: the geometry comes from a cache prepared without the options (``mask_outside_fov`` off), and
:func:`retinassl.data.preprocess.process_pixels` applies the option (as ``Cache`` does).

Features: "global" = per-channel mean and standard deviation inside the FOV (6 numbers); "extended"
= those plus per-channel 5th/50th/95th percentiles and a sharpness measure (mean absolute Laplacian
of the luma inside the eroded FOV), to show what colour standardisation leaves. Classifier: logistic
regression on standardised features, 5-fold cross-validation stratified and grouped by patient
(sklearn ``StratifiedGroupKFold``, seeded); AUC of the pooled out-of-fold probabilities.

Usage: ``flock /work/heavy.lock nice -n 5 .venv/bin/python benchmarks/acquisition_shift.py
[--size 224] [--limit N] [--cache DIR] [--name NAME]``; writes ``benchmarks/results/acquisition_shift.{json,md}``.
Skips (exit 0, no results written) when the datasets are absent.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SHARED_DATA, write_results  # noqa: E402

from retinassl.data.cache import Cache, PreparedData, default_cache_dir  # noqa: E402
from retinassl.data.manifest import Manifest  # noqa: E402
from retinassl.data.harmonize import reference_statistics  # noqa: E402
from retinassl.data.preprocess import PreprocessConfig, process_pixels  # noqa: E402
from retinassl.data.sources import load_csv, load_idrid  # noqa: E402


def options(size: int, reference) -> dict[str, dict]:
    """Preprocessing option name -> PreprocessConfig fields (beyond size and the base)."""
    return {
        "none": {},
        "graham": {"subtract_background": True},
        "color_standardize": {"color_standardize": True},
        "clahe_lab": {"clahe": True},
        "clahe_ycrcb": {"clahe": True, "clahe_space": "ycrcb"},
        "match_lab": {"color_match": "lab", "color_reference": reference},
        "match_histogram": {"color_match": "histogram", "color_reference": reference},
        "resolution_blur": {"fov_resolution": size * 2 // 3, "sharpness_sigma": 0.004},
        "standardize+clahe": {"color_standardize": True, "clahe": True},
    }


def features(image: np.ndarray, fov: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(global (6,), extended (16,), sharpness (1,)) statistics inside the FOV of a ``(S, S, 3)``
    uint8 image."""
    inside = image[fov].astype(np.float64)
    mean, std = inside.mean(0), inside.std(0)
    pct = np.percentile(inside, [5, 50, 95], axis=0).T.ravel()
    luma = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY).astype(np.float32)
    eroded = cv2.erode(fov.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)
    lap = np.abs(cv2.Laplacian(luma, cv2.CV_32F))[eroded if eroded.any() else fov]
    glob = np.concatenate([mean, std])
    return glob, np.concatenate([glob, pct, [lap.mean()]]), np.asarray([lap.mean()])


KEYS = ("site_global", "site_extended", "idrid_dr_global", "idrid_dr_extended", "mx_dr_global",
        "mx_dr_extended")


def _short(result: dict | None) -> str:
    return "n/a" if result is None else f"{result['auc']:.3f}"


def _cell(result: dict | None) -> str:
    if result is None:
        return "n/a"
    return f"{result['auc']:.3f} [{result['fold_min']:.2f}-{result['fold_max']:.2f}]"


def cv_auc(x: np.ndarray, y: np.ndarray, groups: np.ndarray, seed: int = 0) -> dict:
    """Out-of-fold AUC of a logistic regression on standardised ``x`` (None: too few of a class)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedGroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if min(int(y.sum()), int((1 - y).sum())) < 10:
        return None
    prob = np.zeros(len(y))
    folds = []
    for train, test in StratifiedGroupKFold(5, shuffle=True, random_state=seed).split(x, y, groups):
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        model.fit(x[train], y[train])
        prob[test] = model.predict_proba(x[test])[:, 1]
        folds.append(roc_auc_score(y[test], prob[test]))
    return {"auc": float(roc_auc_score(y, prob)), "fold_min": float(min(folds)),
            "fold_max": float(max(folds)), "n": int(len(y)), "positives": int(y.sum())}


def prepared(manifest: Manifest, size: int, cache: Cache) -> PreparedData:
    return cache.prepare(manifest, PreprocessConfig(size=size, mask_outside_fov=False),
                         skip_bad=True, mask_columns=[], description=manifest.name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--limit", type=int, default=None,
                        help="a seeded random subset of N images of each dataset")
    parser.add_argument("--cache", default=None, help="cache folder (default: the user's cache)")
    parser.add_argument("--name", default="acquisition_shift")
    args = parser.parse_args()
    idrid_root, mx_csv = SHARED_DATA / "idrid", SHARED_DATA / "mx_fundus_oct" / "fundus.csv"
    if not idrid_root.is_dir() or not mx_csv.is_file():
        print(f"skipped: IDRiD or MX fundus data not found under {SHARED_DATA}")
        return
    cache = Cache(args.cache if args.cache else default_cache_dir())
    start = time.perf_counter()
    idrid = load_idrid(idrid_root, parts=("B",))
    mx = load_csv(mx_csv, prefix="mx")
    if args.limit:  # a seeded random subset of each dataset
        rng = np.random.default_rng(0)
        idrid, mx = (m.subset(np.sort(rng.permutation(len(m))[:args.limit])) for m in (idrid, mx))
    data = {"idrid": prepared(idrid, args.size, cache), "mx": prepared(mx, args.size, cache)}
    pixels = {name: [(np.asarray(e.image()), np.asarray(e.fov()), e.geometry) for e in d.entries]
              for name, d in data.items()}
    decode_seconds = time.perf_counter() - start
    train_rows = np.flatnonzero(data["idrid"].manifest.frame["split"].to_numpy() == "train")
    reference = reference_statistics((pixels["idrid"][i][0], pixels["idrid"][i][1]) for i in train_rows)

    idrid_frame, mx_frame = data["idrid"].manifest.frame, data["mx"].manifest.frame
    idrid_grade = idrid_frame["dr_grade"].to_numpy(dtype=float)
    mx_dr = mx_frame["dr"].astype(str).str.strip().to_numpy()
    groups = np.concatenate([("idrid-" + idrid_frame["patient"].astype(str)).to_numpy(),
                             ("mx-" + mx_frame["patient"].astype(str)).to_numpy()])
    site = np.concatenate([np.zeros(len(idrid_frame)), np.ones(len(mx_frame))]).astype(int)
    idrid_dr = np.isin(idrid_grade, [0, 1, 2, 3, 4])
    mx_graded = np.isin(mx_dr, ["0", "NPDR", "PDR"])

    rows = []
    for name, fields in options(args.size, reference).items():
        config = PreprocessConfig(size=args.size, **fields)
        t0 = time.perf_counter()
        stats = {}
        for dataset, items in pixels.items():
            stats[dataset] = [features(process_pixels(img, fov, geom, config), fov)
                              for img, fov, geom in items]
        seconds = time.perf_counter() - t0
        row = {"option": name, "cache_key": config.cache_key(), "seconds": seconds,
               "fields": {k: v for k, v in config.model_dump(mode="json").items()
                          if k in fields and k != "color_reference"}}
        both = {d: np.stack([s[0] for s in stats[d]]) for d in stats}
        row["global_gap"] = float(np.abs(both["idrid"].mean(0) - both["mx"].mean(0)).max())
        sharp = np.concatenate([np.stack([s[2] for s in stats[d]]) for d in ("idrid", "mx")])
        row["site_sharpness"] = cv_auc(sharp, site, groups)
        row["sharpness"] = {d: float(np.mean([s[2][0] for s in stats[d]])) for d in stats}
        for kind, index in (("global", 0), ("extended", 1)):
            x = np.concatenate([np.stack([s[index] for s in stats[d]]) for d in ("idrid", "mx")])
            row[f"site_{kind}"] = cv_auc(x, site, groups)
            xi = x[:len(idrid_frame)][idrid_dr]
            row[f"idrid_dr_{kind}"] = cv_auc(xi, (idrid_grade[idrid_dr] > 0).astype(int),
                                             groups[:len(idrid_frame)][idrid_dr])
            xm = x[len(idrid_frame):][mx_graded]
            row[f"mx_dr_{kind}"] = cv_auc(xm, (mx_dr[mx_graded] != "0").astype(int),
                                          groups[len(idrid_frame):][mx_graded])
        means = {d: np.stack([s[0][:3] for s in stats[d]]).mean(0).round(1).tolist() for d in stats}
        stds = {d: np.stack([s[0][3:] for s in stats[d]]).mean(0).round(1).tolist() for d in stats}
        row["channel_means"], row["channel_stds"] = means, stds
        rows.append(row)
        print(f"{name:18s} " + "  ".join(f"{k} {_short(row[k])}" for k in KEYS) + f" ({seconds:.1f} s)",
              flush=True)

    counts = {"idrid": len(idrid_frame), "mx": len(mx_frame),
              "idrid_dr": int((idrid_grade[idrid_dr] > 0).sum()), "idrid_grade0": int((idrid_grade == 0).sum()),
              "mx_dr": int(np.isin(mx_dr, ["NPDR", "PDR"]).sum()), "mx_grade0": int((mx_dr == "0").sum()),
              "skipped": {d: p.skipped for d, p in data.items()}}
    table = ["Global colour statistics inside the FOV (per-channel mean and std: 6 numbers; "
             "extended: + 5/50/95th percentiles and mean |Laplacian|, 16 numbers) -> logistic "
             "regression, 5-fold CV grouped by patient, out-of-fold AUC. Lower = the two sets look "
             "more alike (0.5 = indistinguishable).",
             "",
             f"Images at {args.size} px: IDRiD part B {counts['idrid']} ({counts['idrid_dr']} DR / "
             f"{counts['idrid_grade0']} grade 0), MX fundus {counts['mx']} ({counts['mx_dr']} DR / "
             f"{counts['mx_grade0']} grade 0 among the graded). Reference for matching: the "
             f"{len(train_rows)} IDRiD training images. Decoding + geometry: {decode_seconds:.0f} s.",
             "",
             "| preprocessing | IDRiD vs MX, global | IDRiD vs MX, extended | IDRiD DR vs 0, global "
             "| IDRiD DR vs 0, extended | MX DR vs 0, global | MX DR vs 0, extended | largest gap of a "
             "global statistic (grey levels) | mean R,G,B IDRiD / MX | IDRiD vs MX, sharpness alone "
             "| mean abs Laplacian IDRiD / MX |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cells = [_cell(r[k]) for k in KEYS]
        colour = f"{r['channel_means']['idrid']} / {r['channel_means']['mx']}"
        sharp = f"{r['sharpness']['idrid']:.2f} / {r['sharpness']['mx']:.2f}"
        table.append(f"| {r['option']} | " + " | ".join(cells) + f" | {r['global_gap']:.1f} | {colour} | "
                     f"{_cell(r['site_sharpness'])} | {sharp} |")
    table += ["", "[a-b]: the lowest and highest AUC of the 5 folds. The AUC is scale-free: it finds "
              "a consistent difference however small, so read it beside the largest gap in grey levels. "
              "Settings: "
              + "; ".join(f"{r['option']}: {r['fields'] or 'defaults'}" for r in rows)]
    write_results(args.name, {"size": args.size, "limit": args.limit, "counts": counts,
                              "reference": reference.model_dump(mode="json"),
                              "decode_seconds": decode_seconds, "rows": rows}, "\n".join(table))


if __name__ == "__main__":
    main()
