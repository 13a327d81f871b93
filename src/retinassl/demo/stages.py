"""``retinassl demo``: the toolkit end to end on synthetic data, in minutes on a laptop CPU.

Stages run in order inside one run directory and share one synthetic dataset; each stage is a plain
function listed in :data:`STAGES`, appends to the run's results table and adds figures to its
report.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from retinassl.config import load_config
from retinassl.demo.oct_stage import stage_cross_modal
from retinassl.io.rundir import RunDir

log = logging.getLogger(__name__)


@dataclass
class DemoContext:
    """What the stages share."""

    run: RunDir
    quick: bool
    timings: dict[str, float] = field(default_factory=dict)


def stage_patch_classifier(ctx: DemoContext) -> None:
    """Synthetic data -> cache -> supervised patch ConvNet -> image-level AUC + heatmaps."""
    from retinassl.jobs.train import TrainConfig, run_train

    overrides = ["engine.max_epochs=2", "data.options.n_images=64"] if ctx.quick else []
    config = load_config(TrainConfig, "demo", overrides + [f"runs_dir={ctx.run.path.parent}"])
    metrics = run_train(config, ctx.run)
    log.info("patch classifier: image AUC %.3f, patch AUC %.3f", metrics.get("image_auc", float("nan")),
             metrics.get("patch_auc", float("nan")))


def stage_ssl_gan(ctx: DemoContext) -> None:
    """The patch SSL-GAN (Lecouat et al. 2018) with 10 labelled synthetic images: patch, image and
    localisation AUC, and heatmaps (preset ``demo-ssl-gan``)."""
    from retinassl.io.results import append_results, read_results
    from retinassl.jobs.patch_config import SemisupTrainConfig
    from retinassl.jobs.semisup import run_semisup_train

    overrides = (["learner.engine.max_steps=6", "data.options.n_images=64", "split.train=32",
                  "split.val=16", "heatmaps=2"] if ctx.quick else [])
    config = load_config(SemisupTrainConfig, "demo-ssl-gan", overrides)
    # Its own run directory (checkpoints, logs, classifier), then results, predictions and
    # heatmaps joined to the demo's report.
    sub = RunDir(ctx.run.path / "stages" / "ssl-gan")
    sub.update_status(status="running", name=config.name)
    metrics = run_semisup_train(config, sub)
    append_results(ctx.run.results_file, read_results(sub.results_file).to_dict("records"))
    for path in [*sub.predictions.glob("*.csv"), *(sub.report_dir / "figures").glob("*.png")]:
        folder = ctx.run.predictions if path.suffix == ".csv" else ctx.run.report_dir / "figures"
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, folder / path.name)
    log.info("SSL-GAN (10 labelled images): image AUC %.3f, patch AUC %.3f, localisation AUC %.3f",
             metrics["image_auc"], metrics["patch_auc"], metrics["localisation_auc"])


def stage_transfer(ctx: DemoContext) -> None:
    """Pretraining (rotation, SimCLR) on an unlabelled synthetic pool, then the transfer protocol
    against Scratch: linear probe and fine-tuning at several label fractions, DeLong p-values, t-SNE
    and Grad-CAM (preset ``transfer-demo``; results, figures and the comparison table join the
    demo's run directory)."""
    from retinassl.config import read_yaml
    from retinassl.sweeps.transfer import run_transfer
    from retinassl.sweeps.transfer_config import resolve_config

    import pandas as pd

    config = resolve_config(read_yaml("transfer-demo"), "smoke" if ctx.quick else "cpu")
    run_transfer(config, ctx.run)
    table = pd.read_csv(ctx.run.path / "comparison.csv")
    full = table[(table["metric"] == "auc") & (table["fraction"] == table["fraction"].max())]
    log.info("transfer, AUC with all labels (a check of the machinery: %d synthetic images and "
             "seconds of pretraining give noise-level AUCs; the real experiment is the idrid-transfer "
             "preset): %s (tables: %s)", config.data.options.get("n_images", 0), ", ".join(
        f"{r.init} {r.protocol} {r.mean:.3f}" for r in full.itertuples()), ctx.run.path / "comparison.md")


STAGES: list[tuple[str, Callable[[DemoContext], None]]] = [
    ("supervised patch classifier", stage_patch_classifier),
    ("patch SSL-GAN", stage_ssl_gan),
    ("cross-modal OCT pretraining", stage_cross_modal),
    ("pretraining + transfer evaluation", stage_transfer),
]


def run_demo(runs_dir: Path, quick: bool = False) -> RunDir:
    """Run every stage; returns the run directory (with ``report/index.html``)."""
    from retinassl.report.html import build_report

    run = RunDir.create(runs_dir, "demo")
    run.attach_log_file()
    ctx = DemoContext(run, quick)
    try:
        for title, stage in STAGES:
            start = time.perf_counter()
            log.info("demo stage: %s", title)
            stage(ctx)
            ctx.timings[title] = round(time.perf_counter() - start, 1)
            run.update_status(stages=ctx.timings)
    except BaseException as exc:
        run.update_status(status="failed", error=str(exc)[:500])
        raise
    run.update_status(status="finished")
    build_report(run, title="demo")
    return run
