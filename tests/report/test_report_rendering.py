"""The HTML reports in a real browser: headless Chromium renders a demo-like report (patch classifier
and transfer sweep in one run directory, as ``retinassl demo`` joins its stages), a transfer-sweep
report and a vessel-segmentation report, each from a small synthetic run made here; the page must
load every image (checked by the browser and by decoding each PNG file) and open with the summary.

Set ``RETINASSL_SCREENSHOT_DIR`` to keep compressed screenshots of these small runs; ``docs/screenshots/``
holds those of real runs (``benchmarks/report_screenshots.py``).
"""

from __future__ import annotations

import html.parser
import os
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from retinassl.config import load_config
from retinassl.data.synthetic import generate_dataset
from retinassl.io.results import read_results
from retinassl.io.rundir import RunDir
from retinassl.models import build_encoder
from retinassl.models.checkpoint import save_encoder
from retinassl.report.html import build_report

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not CHROMIUM.is_file(), reason="headless Chromium is not installed (/usr/bin/chromium, Debian package "
                                   "`chromium`; .ci/run installs it)")]
WIDTH, HEIGHT = 1280, 2400
PROBE = ("<script>addEventListener('load', () => { const all = [...document.images]; "
         "document.body.dataset.images = all.length; document.body.dataset.broken = all.filter("
         "i => !i.complete || i.naturalWidth === 0).map(i => i.getAttribute('src')).join('|'); });</script>")


def _transfer(run: RunDir, tmp: Path, name: str) -> None:
    from retinassl.sweeps.transfer import run_transfer
    from retinassl.sweeps.transfer_config import resolve_config

    config = {"kind": "transfer", "name": name, "seed": 0,
              "data": {"source": "manifest", "manifest": str(tmp / "data" / "manifest.csv"),
                       "cache_dir": str(tmp / "cache")},
              "preprocess": {"size": 32}, "model": {"arch": "convnet", "kwargs": {"width": 8}},
              "inits": [{"name": "scratch"}, {"name": "random-encoder", "init": str(tmp / "encoder")}],
              "tasks": [{"name": "referable", "label": "dr_grade", "positive_from": 2}],
              "fractions": [0.25, 0.5, 1.0], "seeds": [0, 1, 2], "finetune_seeds": [0], "finetune_fractions": [1.0],
              "probe": {"c_grid": [1.0]}, "finetune": {"epochs": 1, "min_steps": 1, "max_steps": 2, "patience": 0},
              "engine": {"batch_size": 16, "checkpoint_every_n_steps": -1, "precision": "32"},
              "explain": {"tsne": True, "gradcam": 3}}
    run_transfer(resolve_config(config, None), run)


def _finished(run: RunDir, title: str) -> Path:
    run.update_status(status="finished")  # as the command wrapper does before its report
    return build_report(run, title=title)


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``name -> report/index.html`` of the three small runs."""
    from retinassl.jobs.segment import run_segment_train
    from retinassl.jobs.segment_config import SegmentConfig
    from retinassl.jobs.train import TrainConfig, run_train

    tmp = tmp_path_factory.mktemp("reports")
    generate_dataset(tmp / "data", n_images=40, size=64, seed=3)
    torch.manual_seed(5)
    save_encoder(tmp / "encoder", build_encoder("convnet", width=8), arch="convnet", kwargs={"width": 8})
    out = {}
    transfer = RunDir.create(tmp / "runs", "transfer")
    _transfer(transfer, tmp, "transfer-smoke")
    out["transfer"] = _finished(transfer, "transfer sweep (synthetic smoke)")

    demo = RunDir.create(tmp / "runs", "demo")
    config = load_config(TrainConfig, "demo", [
        "data.options.n_images=48", "data.options.size=64", "preprocess.size=64", "task.grid=2",
        "task.patch_size=32", "task.heatmaps=3", "model.kwargs.channels=[4,8,8]", "engine.max_epochs=15",
        "engine.batch_size=32", f"data.cache_dir={tmp / 'cache'}", f"data.options.out_dir={tmp / 'patches'}",
        f"runs_dir={tmp / 'runs'}"])
    run_train(config, demo)
    _transfer(demo, tmp, "demo-transfer")
    out["demo"] = _finished(demo, "demo (synthetic, small)")

    vessels = RunDir.create(tmp / "runs", "vessels")
    config = load_config(SegmentConfig, None, [
        "data.source=synthetic", f"data.options={{n_images: 10, size: 64, seed: 3, out_dir: {tmp / 'vessel-data'}}}",
        f"data.cache_dir={tmp / 'cache'}", "preprocess.size=64", "model.kwargs={channels: [8, 16]}",
        "method={name: segmentation, patch_size: 32, patches_per_image: 4}", "engine.max_epochs=50",
        "engine.batch_size=4", "train.samples_per_epoch=16", "inference.roi_size=32", "figures=2",
        "bootstrap=50", f"runs_dir={tmp / 'runs'}"])
    run_segment_train(config, vessels)
    out["vessels"] = _finished(vessels, "vessel segmentation (synthetic, small)")
    return out


def _chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--no-first-run", f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=120)


class _Images(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []
        self.body: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.sources.append(dict(attrs).get("src") or "")
        if tag == "body":
            self.body = {k: v or "" for k, v in attrs}


@pytest.mark.parametrize("name", ["demo", "transfer", "vessels"])
def test_report_renders_with_summary_and_no_broken_image(reports: dict[str, Path], name: str,
                                                         tmp_path: Path) -> None:
    page = reports[name]
    # the browser's own verdict: a copy of the page (beside it, so relative paths hold) that records
    # on load which images failed to decode
    probe = page.with_name("render-check.html")
    probe.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    dumped = _chromium("--virtual-time-budget=10000", "--dump-dom", probe.as_uri(), profile=tmp_path / "profile")
    probe.unlink()
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    parser = _Images()
    parser.feed(dumped.stdout)
    assert parser.sources, "no image in the page"
    assert parser.body.get("data-images") == str(len(parser.sources)), "the load probe did not run"
    assert parser.body.get("data-broken") == "", f"images the browser could not show: {parser.body['data-broken']}"
    for src in parser.sources:  # every figure is a PNG file in the run directory
        path = page.parent / src
        assert src.startswith("figures/") and path.suffix == ".png" and path.is_file(), src
        with Image.open(path) as image:
            assert image.format == "PNG" and min(image.size) > 16, src
            image.load()
    # the summary opens the page, the raw table closes it (collapsed, its CSV a link into the run)
    dom = dumped.stdout
    assert dom.index('id="summary"') < dom.index("<img") and "Headline numbers" in dom
    assert dom.index("<details") > dom.rindex("<img") and 'href="../results.csv"' in dom
    assert (page.parent / "../results.csv").resolve().is_file()
    shot = tmp_path / f"{name}.png"
    taken = _chromium(f"--screenshot={shot}", f"--window-size={WIDTH},{HEIGHT}", page.as_uri(),
                      profile=tmp_path / "profile")
    assert taken.returncode == 0 and shot.is_file(), taken.stderr[-2000:]
    with Image.open(shot) as image:
        assert image.size == (WIDTH, HEIGHT)
        pixels = np.asarray(image.convert("L"), dtype=float)
    assert pixels[:400].std() > 10, "the top of the page rendered blank"
    keep = os.environ.get("RETINASSL_SCREENSHOT_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        with Image.open(shot) as image:
            image.convert("RGB").quantize(colors=256).save(Path(keep) / f"report-{name}.png", optimize=True)


def test_summary_numbers_come_from_the_runs_tables(reports: dict[str, Path]) -> None:
    """The headline numbers and sentences against values computed here from the run's files."""
    from sklearn.metrics import roc_auc_score

    demo = reports["demo"].read_text()
    predictions = pd.read_csv(next((reports["demo"].parents[1] / "predictions").glob("*.csv")))
    auc = roc_auc_score(predictions["label"], predictions["score"])
    summary = demo.split('id="summary"')[1].split("</section>")[0]
    assert f"<td class=\"t\">{auc:.3f} [" in summary
    comparison = pd.read_csv(reports["transfer"].parents[1] / "comparison.csv")
    tested = comparison[comparison["p"].notna()]
    summary = reports["transfer"].read_text().split('id="summary"')[1].split("</section>")[0]
    assert summary.count("DeLong p") == len(tested) > 0
    for r in tested.itertuples():
        assert f"{r.delta:+.3f} AUC ({r.mean:.3f} [{r.lo:.3f}, {r.hi:.3f}] vs {r.reference_mean:.3f})" in summary
    results = read_results(reports["vessels"].parents[1] / "results.csv")
    dice = results.set_index("metric")["value"]
    summary = reports["vessels"].read_text().split('id="summary"')[1].split("</section>")[0]
    assert f"{dice['dice']:.3f} [{dice['dice_ci_low']:.3f}, {dice['dice_ci_high']:.3f}]" in summary
