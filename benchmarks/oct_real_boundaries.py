"""Annotation-free ILM/BM graph search (Chiu et al. 2010) on the 675 real MX B-scans and on synthetic
volumes with exact truth.

- **Synthetic** (``--synthetic-volumes``, default 6): the held-out volumes of ``oct_layers.py``
  (``synthetic_volumes(6, 202, DEFAULT_SHAPE)``, 49 x 496 x 512, 3.87 um rows): mean absolute
  ILM and BM error in micrometres, the signed bias, the share of A-scans left undefined, the share
  of B-scans flagged clean.
- **Real** (``../shared/data/mx_fundus_oct/oct``, 675 greyscale 704 x 287 JPEGs, no scale bar, no
  layer annotations): the detector is run twice, (a) as a user without metadata would (spacing
  unknown: the nominal spacing scales the constraints, thickness in pixels) and (b) with an
  *assumed* spacing, axial 7.74 um/px (the Spectralis 3.87 um/px of the original rows, doubled by
  the halving to 287 rows) and lateral 12.5 um/px (a 30-degree, ~8.8 mm scan over 704 columns:
  the optic disc sits inside many scans, so they are wider than a 20-degree scan). Reported: the
  share flagged clean and the firing rate of each flag; central and maximum thickness (pixels, and
  micrometres under the assumption) by DME label; the AUC of central and of maximum thickness for
  the B-scan's DME label (no training; DeLong and stratified-bootstrap 95 % intervals), on unique
  images (byte-identical copies, ``sha1_original``, counted once).

No file name or patient number is written: only counts and statistics. Six overlays (ILM red, BM
green) go to ``--overlays`` (default ``/tmp/oct_real_boundaries``) for inspection, never into the
repository. Run it through the heavy-job lock (about 15 minutes on one core)::

    nohup flock /work/heavy.lock nice -n 5 .venv/bin/python benchmarks/oct_real_boundaries.py \
        > /tmp/oct_real_boundaries.log 2>&1 &
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SHARED_DATA, write_results  # noqa: E402
from oct_real_bscans import FIGURE_LINK  # noqa: E402

from retinassl.oct.bscan_images import read_bscan_images  # noqa: E402
from retinassl.oct.bscan_thickness import bscan_thickness  # noqa: E402
from retinassl.oct.boundary_quality import FLAG_NAMES  # noqa: E402
from retinassl.oct.graph_search import detect_boundaries, detect_volume  # noqa: E402

ASSUMED_AXIAL_UM = 7.74
ASSUMED_LATERAL_UM = 12.5


def _stats_module():
    """DeLong / bootstrap helpers (imported lazily: the package layout is being reorganised)."""
    try:
        from retinassl.metrics import stats
    except ImportError:                                   # the layout before the reorganisation
        from retinassl.evaluate import stats  # type: ignore[no-redef]
    return stats


def synthetic_part(n_volumes: int) -> dict:
    from retinassl.data.synthetic_oct import DEFAULT_SHAPE
    from retinassl.oct.synthetic import synthetic_volumes

    vols = synthetic_volumes(n_volumes, 202, DEFAULT_SHAPE, with_truth=True)
    signed = {"ILM": [], "BM": []}
    undefined, clean, n = 0, 0, 0
    t0 = time.perf_counter()
    for volume, truth in vols:
        found = detect_volume(volume)
        ax = found.axial_um
        for name, rows, k in (("ILM", found.ilm, 0), ("BM", found.bm, 9)):
            d = (rows - truth.boundaries[k]) * ax
            signed[name].append(d[np.isfinite(d)])
        undefined += int((~(np.isfinite(found.ilm) & np.isfinite(found.bm))).sum())
        n += found.ilm.size
        clean += int(found.clean.sum())
    secs = time.perf_counter() - t0
    out = {"volumes": n_volumes, "bscans": sum(v.shape[0] for v, _ in vols),
           "shape": list(DEFAULT_SHAPE), "axial_um": float(vols[0][0].spacing_mm[1] * 1000),
           "undefined_ascan_fraction": undefined / n,
           "clean_bscan_fraction": clean / sum(v.shape[0] for v, _ in vols),
           "seconds_per_bscan": secs / sum(v.shape[0] for v, _ in vols)}
    for name, parts in signed.items():
        d = np.concatenate(parts)
        out[f"{name}_mae_um"] = float(np.abs(d).mean())
        out[f"{name}_bias_um"] = float(d.mean())
        out[f"{name}_p95_abs_um"] = float(np.percentile(np.abs(d), 95))
    return out


def _percentiles(values: list[float]) -> dict | None:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return None
    p = np.percentile(v, [5, 25, 50, 75, 95])
    return {"n": int(v.size), "p5": p[0], "p25": p[1], "median": p[2], "p75": p[3], "p95": p[4],
            "mean": float(v.mean())}


def _auc_block(labels: np.ndarray, scores: np.ndarray, seed: int = 0) -> dict:
    stats = _stats_module()
    ok = np.isfinite(scores)
    y, s = labels[ok].astype(int), scores[ok]
    if len(np.unique(y)) < 2:
        return {"n": int(ok.sum()), "auc": None}
    aucs, _ = stats.delong_covariance(y, s)
    return {"n": int(ok.sum()), "positives": int(y.sum()), "auc": float(aucs[0]),
            "delong_ci": list(stats.delong_ci(y, s)),
            "bootstrap_ci": list(stats.bootstrap_ci(y, s, n_boot=2000, seed=seed))}


def real_part(folder: Path, overlays: Path, n_overlays: int, seed: int, limit: int | None) -> dict:
    with open(folder / "oct.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))[:limit]
    runs = {"unknown_spacing": (None, None),
            "assumed_spacing": (ASSUMED_AXIAL_UM, ASSUMED_LATERAL_UM)}
    per: dict[str, list[dict]] = {k: [] for k in runs}
    keep_for_overlay = set(np.random.default_rng(seed).choice(len(rows), n_overlays, replace=False).tolist())
    overlay_items = []
    t0 = time.perf_counter()
    for i, row in enumerate(rows):
        bscan = read_bscan_images(folder / row["image"]).bscans[0]
        for run, (ax, lat) in runs.items():
            found = detect_boundaries(bscan, ax, lat)
            th = bscan_thickness(found.ilm, found.bm, None, quality=found.quality)   # pixels
            per[run].append({"dme": int(row["dme"]), "sha1": row["sha1_original"],
                             "eye": (row["patient"], row["eye"]),
                             "clean": found.quality.clean, "flags": found.quality.reasons,
                             "undefined": found.quality.undefined_fraction,
                             "central_px": th.central, "maximum_px": th.maximum})
            if run == "assumed_spacing" and i in keep_for_overlay:
                overlay_items.append((bscan, found, th))
        if (i + 1) % 100 == 0:
            logging.info("%d / %d B-scans, %.1f s", i + 1, len(rows), time.perf_counter() - t0)
    secs = time.perf_counter() - t0
    _save_overlays(overlay_items, overlays)
    out: dict = {"bscans": len(rows), "seconds_per_bscan_both_runs": secs / len(rows),
                 "assumed_axial_um": ASSUMED_AXIAL_UM, "assumed_lateral_um": ASSUMED_LATERAL_UM}
    for run, items in per.items():
        n = len(items)
        flags = Counter(f for it in items for f in it["flags"])
        block: dict = {"clean_fraction": sum(it["clean"] for it in items) / n,
                       **{f"clean_fraction_dme{label}": float(np.mean([it["clean"] for it in items
                                                                       if it["dme"] == label]))
                          for label in (0, 1)},
                       "flag_fraction": {f: flags[f] / n for f in FLAG_NAMES},
                       "mean_undefined_fraction_central_half": float(np.mean([it["undefined"] for it in items]))}
        for label in (0, 1):
            sel = [it for it in items if it["clean"] and it["dme"] == label]
            block[f"central_px_clean_dme{label}"] = _percentiles([it["central_px"] for it in sel])
            block[f"maximum_px_clean_dme{label}"] = _percentiles([it["maximum_px"] for it in sel])
        # AUC on unique images (one per sha1), all and clean only
        seen, unique = set(), []
        for it in items:
            if it["sha1"] not in seen:
                seen.add(it["sha1"])
                unique.append(it)
        block["unique_images"] = len(unique)
        for subset, sel in (("all", unique), ("clean", [it for it in unique if it["clean"]])):
            y = np.array([it["dme"] for it in sel])
            for measure in ("central_px", "maximum_px"):
                s = np.array([np.nan if it[measure] is None else it[measure] for it in sel], dtype=float)
                block[f"auc_{measure}_{subset}"] = _auc_block(y, s)
        # per eye (patient + eye): median central and largest maximum over its clean B-scans
        eyes: dict = {}
        for it in unique:
            eyes.setdefault(it["eye"], []).append(it)
        ey, ec, em = [], [], []
        for its in eyes.values():
            use = [it for it in its if it["clean"]] or its
            ey.append(int(max(it["dme"] for it in its)))
            ec.append(float(np.nanmedian([it["central_px"] for it in use])))
            em.append(float(np.nanmax([it["maximum_px"] for it in use])))
        block["eyes"] = len(eyes)
        block["eyes_with_several_bscans"] = sum(len(v) > 1 for v in eyes.values())
        block["auc_eye_central_px"] = _auc_block(np.array(ey), np.array(ec))
        block["auc_eye_maximum_px"] = _auc_block(np.array(ey), np.array(em))
        out[run] = block
    a = out["assumed_spacing"]
    for label in (0, 1):
        for m in ("central", "maximum"):
            p = a[f"{m}_px_clean_dme{label}"]
            a[f"{m}_um_clean_dme{label}"] = None if p is None else \
                {k: (v * ASSUMED_AXIAL_UM if k != "n" else v) for k, v in p.items()}
    return out


def _save_overlays(items: list, folder: Path) -> None:
    """ILM (red) and BM (green) drawn on the B-scans, the fovea as a blue tick (for inspection only)."""
    from PIL import Image, ImageDraw

    from retinassl.atomic import atomic_path

    folder.mkdir(parents=True, exist_ok=True)
    for k, (bscan, found, th) in enumerate(items):
        rgb = Image.fromarray(bscan).convert("RGB")
        draw = ImageDraw.Draw(rgb)
        for rows, colour in ((found.ilm, (255, 0, 0)), (found.bm, (0, 255, 0))):
            for x, y in enumerate(rows):
                if np.isfinite(y):
                    draw.point((x, float(y) + 0.5), fill=colour)
        if th.fovea_column is not None:
            draw.line([(th.fovea_column, 0), (th.fovea_column, 10)], fill=(80, 80, 255))
        tag = "clean" if found.quality.clean else "-".join(found.quality.reasons)
        with atomic_path(folder / f"overlay_{k}_{tag}.png") as tmp:
            rgb.save(tmp, format="PNG")


def _fmt(p: dict | None, scale: float = 1.0) -> str:
    if p is None:
        return "-"
    return (f"{p['median'] * scale:.1f} [{p['p25'] * scale:.1f}, {p['p75'] * scale:.1f}] "
            f"(5-95 %: {p['p5'] * scale:.1f}-{p['p95'] * scale:.1f}; n={p['n']})")


def _auc(b: dict) -> str:
    if b.get("auc") is None:
        return "-"
    d, bs = b["delong_ci"], b["bootstrap_ci"]
    return (f"{b['auc']:.3f} (DeLong {d[0]:.3f}-{d[1]:.3f}; bootstrap {bs[0]:.3f}-{bs[1]:.3f}; "
            f"n={b['n']}, DME {b['positives']})")


def table(syn: dict | None, real: dict | None) -> str:
    lines = []
    if syn is not None:
        lines += ["## Synthetic volumes (exact truth)", "",
                  f"{syn['volumes']} held-out volumes of `oct_layers.py` (seed 202), {syn['bscans']} "
                  f"B-scans of {syn['shape'][1]} x {syn['shape'][2]}, {syn['axial_um']:.2f} um rows; "
                  f"{syn['seconds_per_bscan']:.2f} s per B-scan.", "",
                  "| boundary | MAE (um) | bias (um, + = below truth) | 95th pct abs (um) |",
                  "|---|---|---|---|"]
        for b in ("ILM", "BM"):
            lines.append(f"| {b} | {syn[f'{b}_mae_um']:.2f} | {syn[f'{b}_bias_um']:+.2f} | "
                         f"{syn[f'{b}_p95_abs_um']:.2f} |")
        lines += ["", f"A-scans left undefined: {syn['undefined_ascan_fraction']:.2%}; B-scans flagged "
                  f"clean: {syn['clean_bscan_fraction']:.1%}.", ""]
    if real is not None:
        lines += ["## Real MX B-scans (no annotations)", "",
                  f"{real['bscans']} B-scans (704 x 287), {real['seconds_per_bscan_both_runs']:.2f} s "
                  f"per B-scan for both runs. Assumed spacing for run (b) and for micrometres: axial "
                  f"{ASSUMED_AXIAL_UM} um/px (Spectralis 3.87 um/px doubled by the halving), lateral "
                  f"{ASSUMED_LATERAL_UM} um/px (a 30-degree scan over 704 columns). Neither is stated "
                  f"by the source; if the original rows were resampled (573 rows for a 1.9 mm depth "
                  f"would be 3.35 um/px, 6.7 after halving), micrometres are 13 % lower.", "",
                  "| | (a) spacing unknown (pixels) | (b) assumed spacing |", "|---|---|---|"]
        a, b = real["unknown_spacing"], real["assumed_spacing"]
        lines.append(f"| flagged clean | {a['clean_fraction']:.1%} | {b['clean_fraction']:.1%} |")
        for label, name in ((0, "no DME"), (1, "DME")):
            lines.append(f"| flagged clean, {name} B-scans | {a[f'clean_fraction_dme{label}']:.1%} | "
                         f"{b[f'clean_fraction_dme{label}']:.1%} |")
        for f in FLAG_NAMES:
            lines.append(f"| flag `{f}` | {a['flag_fraction'][f]:.1%} | {b['flag_fraction'][f]:.1%} |")
        lines.append(f"| undefined A-scans (central half, mean) | "
                     f"{a['mean_undefined_fraction_central_half']:.1%} | "
                     f"{b['mean_undefined_fraction_central_half']:.1%} |")
        for m in ("central", "maximum"):
            for label, name in ((0, "no DME"), (1, "DME")):
                lines.append(f"| {m} thickness, clean, {name}: px median [IQR] | "
                             f"{_fmt(a[f'{m}_px_clean_dme{label}'])} | "
                             f"{_fmt(b[f'{m}_px_clean_dme{label}'])} |")
        for m in ("central", "maximum"):
            for label, name in ((0, "no DME"), (1, "DME")):
                lines.append(f"| {m} thickness, clean, {name}: um (assumed {ASSUMED_AXIAL_UM} um/px) "
                             f"| - | {_fmt(b[f'{m}_px_clean_dme{label}'], ASSUMED_AXIAL_UM)} |")
        for measure in ("central_px", "maximum_px"):
            for subset in ("all", "clean"):
                lines.append(f"| AUC of {measure.split('_')[0]} thickness for DME, {subset} unique "
                             f"images | {_auc(a[f'auc_{measure}_{subset}'])} | "
                             f"{_auc(b[f'auc_{measure}_{subset}'])} |")
        lines.append(f"| AUC per eye ({a['eyes']} eyes, {a['eyes_with_several_bscans']} with several "
                     f"B-scans), central | {_auc(a['auc_eye_central_px'])} | "
                     f"{_auc(b['auc_eye_central_px'])} |")
        lines.append(f"| AUC per eye, maximum | {_auc(a['auc_eye_maximum_px'])} | "
                     f"{_auc(b['auc_eye_maximum_px'])} |")
        lines += ["", "Central thickness = the profile at the thinnest point of the central third "
                  "(smoothed); maximum = the largest 5-column running median within half the width "
                  "around the fovea; both ILM to Bruch's membrane. The DME label is the source's "
                  "per-B-scan label (an eye counts as DME when any of its B-scans is); no DME label "
                  "is used to fit anything. Clean = no quality flag in the central half.", "",
                  FIGURE_LINK]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--synthetic-volumes", type=int, default=6)
    parser.add_argument("--data", type=Path, default=SHARED_DATA / "mx_fundus_oct")
    parser.add_argument("--overlays", type=Path, default=Path("/tmp/oct_real_boundaries"))
    parser.add_argument("--n-overlays", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-synthetic", action="store_true")
    parser.add_argument("--limit", type=int, default=None, help="first N real B-scans (a quick check)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("retinassl.oct.bscan_images").setLevel(logging.ERROR)   # one warning per image
    syn = None if args.skip_synthetic else synthetic_part(args.synthetic_volumes)
    if syn is not None:
        logging.info("synthetic: %s", syn)
    real = real_part(args.data, args.overlays, args.n_overlays, args.seed, args.limit) \
        if (args.data / "oct.csv").is_file() else None
    write_results("oct_real_boundaries", {"synthetic": syn, "real": real}, table(syn, real))


if __name__ == "__main__":
    main()
