"""Issue 18, item 6: the resolution study of the linear probe on IDRiD (preset ``idrid-transfer-real``).

Jang et al. 2024 find that input resolution matters most for fundus-pretrained models (256 / 512 /
1024 px). Here the study's initialisations are probed at several input sizes: scratch (random
ResNet-18 features, seed 0) and the encoders pretrained by the issue-18 run (``--encoder
NAME=DIR``; they were pretrained at that run's size, 224 px, and are applied unchanged at the
others: a ResNet's global pooling takes any size, so this measures what more pixels give a frozen
encoder, not a pretraining at each size). Everything else is the preset's ``cpu`` budget: the
cleaned official split, referable DR / any DR / DR grade, 1-100 % of the labels, 5 seeds, C chosen
on validation carved from each training subset, DeLong against scratch at the same size.

A new study folder ``runs/resolution-study-<time>`` holds one run directory per size (``size-<px>``);
``--resume FOLDER`` continues a killed study (finished sizes are kept, a killed size continues where it
stopped). The tables go to ``benchmarks/results/resolution_study.{json,md}``.

Usage (under the team's heavy-job lock)::

    flock /work/heavy.lock nice -n 5 .venv/bin/python benchmarks/resolution_study.py --sizes 224,384,512 \\
        --encoder fundus_abnormal=runs/idrid-transfer-real-20261204-225850/pretrain/fundus_abnormal/encoder
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, run_transfer_timed, write_results  # noqa: E402
from idrid_transfer_real import PRESET, study_config  # noqa: E402

from retinassl.io.rundir import RunDir  # noqa: E402

HEADLINE_FRACTIONS = (0.01, 0.05, 0.1, 1.0)


def size_config(size: int, encoders: dict[str, str], budget: str):
    """The preset's ``budget`` at input size ``size`` with scratch and ``encoders`` as the inits, probe only
    (:func:`idrid_transfer_real.study_config`, as its ``--init-from`` and ``--set``)."""
    return study_config(budget, ",".join(["scratch", *encoders]), init_from=[f"{n}={p}" for n, p in encoders.items()],
                        sets=[f"preprocess.size={size}", "protocols=[probe]", "explain={tsne: false, gradcam: 0}"])


def run_size(size: int, encoders: dict[str, str], budget: str, study: Path) -> tuple[RunDir, float]:
    folder = study / f"size-{size}"
    config = size_config(size, encoders, budget)
    if (folder / "run.json").is_file():
        run = RunDir(folder)
        if run.status().get("status") == "finished":
            return run, float(run.status().get("elapsed_seconds", 0.0))
        run = RunDir.resume(folder)
    else:
        folder.mkdir()
        run = RunDir(folder)
        run.update_status(status="running", name=f"{PRESET}-{size}px")
    run.attach_log_file()
    logging.getLogger("retinassl").info("resolution %d px: run directory %s", size, run.path)
    return run, run_transfer_timed(config, run)


def tables(rows: pd.DataFrame) -> str:
    """One table per task: init x size at the headline fractions, mean AUC (kappa for the grade)
    [95 % interval] and, beside scratch, the DeLong verdict per seed."""
    out = []
    for task, metric in (("referable", "auc"), ("any_dr", "auc"), ("dr_grade", "kappa")):
        sub = rows[(rows["task"] == task) & (rows["metric"] == metric)]
        if sub.empty:
            continue
        fractions = [f for f in HEADLINE_FRACTIONS if f in set(sub["fraction"])]
        out += [f"**{task}** ({metric}; mean over {int(sub['n_seeds'].max())} seeds [95 % interval: bootstrap over seeds and test images]"
                + ("; vs scratch at the same size: DeLong p on the seed ensembles, seeds with p < 0.05 higher/lower"
                   if metric == "auc" else "") + ")", "",
                "| init | size | " + " | ".join(f"{f:g}" for f in fractions) + " |",
                "|---|---|" + "---|" * len(fractions)]
        for (init, size), g in sorted(sub.groupby(["init", "size"]), key=lambda kv: (kv[0][0] != "scratch", kv[0])):
            cells = []
            for f in fractions:
                r = g[g["fraction"] == f]
                if r.empty:
                    cells.append("")
                    continue
                r = r.iloc[0]
                cell = f"{r['mean']:.3f} [{r['lo']:.3f}, {r['hi']:.3f}]"
                if init != "scratch" and metric == "auc" and not math.isnan(r.get("p", math.nan)):
                    cell += f" p={r['p']:.3g} (+{r['sig_better']:.0f}/-{r['sig_worse']:.0f})"
                cells.append(cell)
            out.append(f"| {init} | {size} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="224,384,512", help="comma-separated input sizes (px)")
    parser.add_argument("--encoder", action="append", default=[], metavar="NAME=DIR",
                        help="a pretrained encoder directory probed beside scratch")
    parser.add_argument("--budget", choices=["smoke", "cpu"], default="cpu")
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "runs")
    parser.add_argument("--resume", type=Path, default=None, help="continue this study folder")
    args = parser.parse_args()
    from retinassl.logs import setup_logging

    setup_logging(logging.INFO)
    encoders = {}
    for item in args.encoder:
        name, _, path = item.partition("=")
        if not path or not Path(path).exists():
            raise SystemExit(f"--encoder {item!r}: expected NAME=DIR with an existing encoder directory")
        encoders[name] = str(Path(path).resolve())
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if args.resume:
        study = args.resume
    else:
        import datetime

        study = args.runs_dir / f"resolution-study-{datetime.datetime.now():%Y%m%d-%H%M%S}"
        study.mkdir(parents=True)
    frames, runs = [], {}
    for size in sizes:
        run, seconds = run_size(size, encoders, args.budget, study)
        comparison = pd.read_csv(run.path / "comparison.csv")
        frames.append(comparison.assign(size=size))
        runs[size] = {"run": str(run.path.relative_to(ROOT) if run.path.is_relative_to(ROOT) else run.path),
                      "wall_seconds": seconds}
    rows = pd.concat(frames, ignore_index=True)
    rows = rows[rows["protocol"] == "probe"]
    text = "\n".join([
        "Linear probe on frozen features at each input size (the preset's cpu budget otherwise). "
        "Pretrained encoders were pretrained at 224 px and applied unchanged at every size.", "",
        "| size | run directory (git-ignored) | wall minutes |", "|---|---|---|",
        *[f"| {s} | `{r['run']}` | {r['wall_seconds'] / 60:.1f} |" for s, r in runs.items()], "",
        tables(rows)])
    write_results("resolution_study", {"sizes": sizes, "encoders": encoders, "runs": runs,
                                       "comparison": rows.to_dict("records")}, text)
    print(text)


if __name__ == "__main__":
    main()
