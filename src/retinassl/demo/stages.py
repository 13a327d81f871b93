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
    """The patch SSL-GAN (Lecouat et al. 2018) beside the supervised patch ConvNet of the same
    architecture, both from the same 10 labelled synthetic images (three samplings): image-level
    AUC with its 95 % interval, one paired DeLong test per sampling, heatmaps (preset
    ``demo-ssl-gan-sweep``, the ``ssl-gan`` experiment of ``retinassl sweep``)."""
    from retinassl.config import read_yaml
    from retinassl.io.results import append_results, read_results
    from retinassl.metrics.anatomy import TEST_PATCH_LABELS
    from retinassl.sweeps.ssl_gan import GALLERY_PREFIX, PREDICTIONS, run_ssl_gan_experiment

    # Its own run directory (config, cells, logs), then results, predictions and heatmaps joined to
    # the demo's report (whose sections and summary read them like the sweep's own).
    sub = RunDir(ctx.run.path / "stages" / "ssl-gan")
    sub.update_status(status="running", name="demo-ssl-gan")
    run_ssl_gan_experiment(read_yaml("demo-ssl-gan-sweep"), sub, "quick" if ctx.quick else "demo", resume=False)
    sub.update_status(status="finished")
    append_results(ctx.run.results_file, read_results(sub.results_file).to_dict("records"))
    predictions = ctx.run.predictions / PREDICTIONS
    predictions.mkdir(parents=True, exist_ok=True)
    for path in (sub.predictions / PREDICTIONS).glob("*.csv"):
        shutil.copyfile(path, predictions / path.name)
    if (sub.path / TEST_PATCH_LABELS).is_file():
        shutil.copyfile(sub.path / TEST_PATCH_LABELS, ctx.run.path / TEST_PATCH_LABELS)
    figures = ctx.run.report_dir / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    for path in (sub.report_dir / "figures").glob(f"{GALLERY_PREFIX}*.png"):
        shutil.copyfile(path, figures / path.name)
    results = read_results(sub.results_file)
    auc = results[results["metric"] == "image_auc"].groupby("method", sort=False)["value"].mean()
    p = results[results["metric"] == "delong_p"]["value"]
    log.info("SSL-GAN vs supervised ConvNet, 10 labelled images, mean image AUC over %d samplings: %s; "
             "DeLong p < 0.05 in %d of %d samplings", len(p), ", ".join(f"{m} {v:.3f}" for m, v in auc.items()),
             int((p < 0.05).sum()), len(p))


def stage_transfer(ctx: DemoContext) -> None:
    """Does a pretrained encoder beat scratch when labels are scarce?  The encoder of the first
    stage's supervised patch classifier (lesion-mask patch labels of other synthetic eyes) against
    the same network from scratch, on 200 new synthetic eyes (referable DR): linear probe with 5, 10
    and 100 % of the training labels (5 label samplings), fine-tuning with 10 % (one), 95 %
    intervals, DeLong p-values, t-SNE and Grad-CAM (preset ``transfer-demo``, budget ``demo``;
    results, figures and the comparison table join the demo's run directory)."""
    from retinassl.config import read_yaml
    from retinassl.errors import ConfigError
    from retinassl.io.saved_model import is_saved_model
    from retinassl.sweeps.grid import merge_budget
    from retinassl.sweeps.transfer import run_transfer
    from retinassl.sweeps.transfer_config import resolve_config

    import pandas as pd

    if not is_saved_model(ctx.run.encoder_dir):
        raise ConfigError(f"the transfer stage compares the encoder of the demo's patch classifier "
                          f"(stage 1) with scratch, but {ctx.run.encoder_dir} holds no saved model")
    data = read_yaml("transfer-demo")
    demo = dict(data["budgets"]["demo"])
    demo["inits"] = [*demo["inits"], {"name": PRETRAINED, "init": str(ctx.run.encoder_dir)}]
    if ctx.quick:
        demo = merge_budget(demo, QUICK_TRANSFER)
    data["budgets"]["demo"] = demo
    config = resolve_config(data, "demo")
    run_transfer(config, ctx.run)
    table = pd.read_csv(ctx.run.path / "comparison.csv")
    low = table[(table["metric"] == "auc") & (table["protocol"] == "probe")
                & (table["fraction"] == table["fraction"].min())]
    log.info("transfer, linear probe with %s of the training labels: %s (tables: %s)",
             f"{low['fraction'].min():.0%}", "; ".join(
                 f"{r.init} AUC {r.mean:.3f} [{r.lo:.3f}, {r.hi:.3f}]" + ("" if pd.isna(r.p) else f", DeLong p {r.p:.2g}")
                 for r in low.itertuples()), ctx.run.path / "comparison.md")


PRETRAINED = "lesion-pretrained"
# --quick: a few images and steps (the wiring, not a result)
QUICK_TRANSFER = {"data": {"options": {"n_images": 48}}, "seeds": [0, 1], "fractions": [0.25, 1.0],
                  "finetune_fractions": [1.0], "finetune": {"epochs": 1, "min_steps": 2, "max_steps": 2}}


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
