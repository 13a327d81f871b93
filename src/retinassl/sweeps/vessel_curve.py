"""The vessel-segmentation label-fraction curve (``retinassl segment curve``): one U-Net per
(initialisation, number of training images, seed), each tested on the test split, run by the one grid
runner (:func:`~retinassl.sweeps.grid.run_grid`).

Each training gets ``fits/<init>-n<size>-s<seed>/`` (a killed training resumes from its checkpoint);
every evaluation is appended to the run's results table (method ``segmentation``), and a rerun skips
the cells that already have rows there. The second observer's agreement (where the dataset has one)
is recorded once, with the first cell.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import pandas as pd

from retinassl.config import to_yaml
from retinassl.data.cache import PreparedData
from retinassl.data.loading import prepare
from retinassl.errors import DataError
from retinassl.io.results import append_results, read_results
from retinassl.io.rundir import RunDir
from retinassl.jobs.segment import train_segmenter
from retinassl.jobs.segment_config import SegmentConfig
from retinassl.jobs.segment_evaluation import evaluate_segmenter, labelled_rows, result_rows
from retinassl.sweeps.grid import Grid, run_grid

log = logging.getLogger(__name__)


class VesselCurveGrid(Grid):
    """Cells: (init, number of training images, seed)."""

    key = ("init", "n_labelled", "seed")

    def __init__(self, data: dict[str, Any], inits: dict[str, str], sizes: list[int], seeds: list[int],
                 run: RunDir) -> None:
        super().__init__(run)
        self.config = SegmentConfig.model_validate(data)
        self.inits, self.sizes, self.seeds = dict(inits), list(sizes), list(seeds)
        self._prepared: PreparedData | None = None

    @property
    def prepared(self) -> PreparedData:
        if self._prepared is None:
            self._prepared = prepare(self.config.data, self.config.preprocess)
        return self._prepared

    def test_rows(self):
        rows = labelled_rows(self.prepared, self.config.test_split)
        if len(rows) == 0:
            raise DataError(f"no {self.config.test_split!r} images with vessel masks to evaluate the curve on",
                            path=self.prepared.manifest.name)
        return rows

    def prepare(self) -> None:
        self.run.write_config(to_yaml(self.config))
        self.test_rows()

    def cells(self) -> list[dict[str, Any]]:
        available = len(labelled_rows(self.prepared, self.config.train.split))
        return [{"init": name, "path": init, "size": size, "n_labelled": min(size, available), "seed": seed}
                for name, init in self.inits.items() for size in self.sizes for seed in self.seeds]

    def cell_name(self, cell: Mapping[str, Any]) -> str:
        return f"{cell['init']}-n{cell['size']}-s{cell['seed']}"

    def done_rows(self, results: pd.DataFrame) -> pd.DataFrame:
        return results[results["method"] == "segmentation"]

    def run_cell(self, cell: Mapping[str, Any]) -> None:
        config, name, size, seed = self.config, cell["init"], cell["size"], cell["seed"]
        cfg = config.model_copy(update={
            "seed": seed, "model": config.model.model_copy(update={"init": cell["path"]}),
            "train": config.train.model_copy(update={"n_images": size, "subset_seed": seed})})
        fit_dir = self.run.path / "fits" / self.cell_name(cell)
        resume = fit_dir.is_dir()
        fit_dir.mkdir(parents=True, exist_ok=True)
        trained = train_segmenter(cfg, RunDir(fit_dir), self.prepared, resume=resume)
        result = evaluate_segmenter(trained.method.unet().eval(), self.prepared, self.test_rows(),
                                    cfg.input, cfg.inference, n_boot=config.bootstrap, seed=seed)
        if self.run.results_file.is_file() and \
                (read_results(self.run.results_file)["method"] == "second_observer").any():
            result.observer = {}
        protocol = "finetune" if cfg.train.freeze_encoder_epochs == 0 else \
            f"freeze{cfg.train.freeze_encoder_epochs}+finetune"
        append_results(self.run.results_file, result_rows(
            result, experiment=config.name, dataset=str(config.data.source), init=name, protocol=protocol,
            n_labelled=len(trained.rows), fraction=len(trained.rows) / trained.n_available,
            seed=seed, extra={"train_seconds": trained.fit.seconds}))
        log.info("curve %s n=%d seed=%d: dice %.4f", name, size, seed, result.summary["dice"])


def run_label_fraction_curve(config: SegmentConfig, run: RunDir, inits: dict[str, str],
                             sizes: list[int], seeds: list[int]) -> pd.DataFrame:
    """Train and test one U-Net per (initialisation, number of training images, seed).

    Args:
        config: the base run (data, budget, inference); ``model.init`` and ``train.n_images``
            are replaced per run.
        run: the curve's run directory.
        inits: name -> ``scratch`` or a saved model's folder.
        sizes: numbers of training images (1, 2, 5, 10, 20).
        seeds: seeds (each seed draws its own nested image subsets and its own training stream).

    Returns:
        The results table of the curve.
    """
    run_grid(VesselCurveGrid, (config.model_dump(mode="json"), inits, sizes, seeds), run, name="vessel curve")
    return read_results(run.results_file)
