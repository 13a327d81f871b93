"""Scale travels with the model (issue 22): a DRIVE-trained vessel segmenter on STARE at default
settings (the images rescaled so that their field of view spans as many pixels as DRIVE's did in
training, recorded in the saved model) against hand-chosen ``--size`` values.

Trains the ``drive-vessels`` preset (``retinassl segment train drive-vessels``, its STARE evaluation
left out), then evaluates the saved segmenter on the 16 original-resolution STARE images as
``retinassl segment evaluate`` does: with FOV matching (the default) and at each hand-chosen size
without it, for each FOV estimate: the model's (the command's true default; the preset keeps the FOV
above the background read in the image corners, ``preprocess.fov_background``), ``plain`` (the same
threshold without that rule: the default before it existed) and a fixed threshold of 0.25 (chosen by
looking at STARE, shown for reference only). The FOV also sets where the metrics are computed and
where the output map is zeroed: a FOV that takes in STARE's grey background also scores the
vessels the model draws there. Dice pooled inside the FOV at the original resolution, [95 %
bootstrap interval over images].

Usage: ``python benchmarks/vessel_scale.py [--sizes 480,540,584,640,700] [--fov model,plain,0.25] [--limit N] [overrides...]``;
writes ``benchmarks/results/vessel_scale.{json,md}`` and a run directory.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import torch

from retinassl.config import DataConfig, load_config
from retinassl.data.fov_scale import FOV_KEY
from retinassl.jobs.segment import load_segmenter, run_segment_evaluate, run_segment_train
from retinassl.jobs.segment_config import EvalDatasetConfig, SegmentConfig
from retinassl.io.rundir import RunDir

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import SHARED_DATA, write_results  # noqa: E402
from vessel_drive import fmt, pick  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs-dir", default="runs")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sizes", default="480,540,584,640,700")
    parser.add_argument("--fov", default="model,plain,0.25",
                        help="FOV estimates: 'model' (the model's: the preset's threshold and corner-background "
                             "rule), 'plain' (the threshold without the rule: the default before it existed), or "
                             "a threshold without the rule")
    parser.add_argument("--limit", type=int, default=0, help="only the first N STARE images (smoke test)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = load_config(SegmentConfig, "drive-vessels", [f"runs_dir={args.runs_dir}", "evaluate_on=[]",
                                                       *args.overrides], data_root=SHARED_DATA)
    run = RunDir.create(cfg.runs_dir, f"{cfg.name}-scale")
    run.attach_log_file()
    start = time.perf_counter()
    metrics = run_segment_train(cfg, run)
    segmenter = load_segmenter(run.path)
    recorded = segmenter.meta.get(FOV_KEY)
    stare_options = {"root": str(SHARED_DATA / "stare")}
    rows = []
    for fov in args.fov.split(","):
        base = segmenter.preprocess if fov == "model" else segmenter.preprocess.model_copy(
            update={"fov_background": False, **({} if fov == "plain" else {"fov_threshold": float(fov)})})
        fov_label = f"{base.fov_threshold:g}" + (" + corner background" if base.fov_background else "")
        settings = [("default (FOV matched)", None)] + [(f"--size {s}", int(s)) for s in args.sizes.split(",")]
        for label, size in settings:
            preprocess = base if size is None else base.model_copy(update={"size": size})
            name = f"stare-t{base.fov_threshold:g}{'b' if base.fov_background else ''}-" \
                   f"{'matched' if size is None else size}"
            spec = EvalDatasetConfig(name=name, data=DataConfig(source="stare", options=stare_options,
                                                                cache_dir=cfg.data.cache_dir),
                                     preprocess=preprocess, exclude_flag="resized")
            result = run_segment_evaluate(segmenter, spec, run, n_figures=0, save_predictions=False,
                                          match_scale=size is None) if not args.limit else \
                limited(segmenter, spec, run, args.limit, size is None)
            rows.append({"fov": fov_label, "threshold": base.fov_threshold, "fov_background": base.fov_background,
                         "setting": label, **pick(result.summary)})
            print(f"FOV {fov_label}, {label}: dice {result.summary['dice']:.4f}", flush=True)
    lines = [f"DRIVE-trained U-Net (`drive-vessels` preset, {int(metrics['train_steps'])} steps, "
             f"{metrics['train_seconds'] / 60:.1f} min); recorded training FOV diameter {recorded} px at "
             f"size {segmenter.preprocess.size}. STARE: {int(rows[0]['n_images'])} images; Dice pooled "
             f"inside the FOV at the original resolution [95 % bootstrap interval over images]. The "
             f"matched size is in the run's log (`scale: ... rescaled to size N`).", "",
             "| FOV estimate | setting | Dice | sensitivity | specificity | AUC |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['fov']} | {r['setting']} | {fmt(r, 'dice')} | {fmt(r, 'sensitivity')} | "
                     f"{fmt(r, 'specificity')} | {r['auc']:.4f} |")
    verdicts = []
    groups = {label: [r for r in rows if r["fov"] == label] for label in dict.fromkeys(r["fov"] for r in rows)}
    default = rows[0]  # the model's FOV estimate, FOV matched: what `segment evaluate` does without flags
    for label, group in groups.items():
        best = max(group[1:], key=lambda r: r["dice"])
        verdicts.append(f"the command's default (FOV {rows[0]['fov']}, matched) Dice {default['dice']:.4f} vs "
                        f"the best hand-chosen {best['setting']} with FOV {label} {best['dice']:.4f}: "
                        + ("at least as good" if default["dice"] >= best["dice"] else
                           "lower by %.4f" % (best["dice"] - default["dice"])))
    lines += [""] + [f"- {v}" for v in verdicts] + ["", f"Run: `{run.path}`; load average at the end "
                                                        f"{os.getloadavg()[0]:.1f}."]
    run.update_status(status="finished")  # as the command wrapper does: the report is not "partial"
    write_results("vessel_scale", {"run": str(run.path), "recorded_fov_diameter": recorded,
                                   "train_seconds": metrics["train_seconds"], "rows": rows,
                                   "verdicts": verdicts, "wall_seconds": time.perf_counter() - start},
                  "\n".join(lines))
    print("\n".join(lines))


def limited(segmenter, spec: EvalDatasetConfig, run: RunDir, limit: int, match_scale: bool):
    """A smoke test on the first ``limit`` STARE images (the evaluation above, on fewer rows)."""
    from retinassl.data.fov_scale import prepare_at_model_scale
    from retinassl.data.loading import prepare
    from retinassl.jobs.segment_evaluation import evaluate_segmenter, labelled_rows

    def first(config):
        prepared = prepare(spec.data, config)
        return prepared.subset(labelled_rows(prepared, None, spec.exclude_flag)[:limit])

    prepared = prepare_at_model_scale(first, spec.preprocess, segmenter.meta.get(FOV_KEY), enabled=match_scale)
    return evaluate_segmenter(segmenter.model, prepared, labelled_rows(prepared, None), segmenter.input,
                              segmenter.inference, n_boot=50)


if __name__ == "__main__":
    main()
