"""Adapt a synthetic-trained layer model to real B-scans (``retinassl oct adapt-layers``).

The layer model of ``retinassl oct train-seg`` learns from synthetic volumes with exact boundaries
and has never seen a real B-scan. Real exports rarely come with layer annotations, but the
annotation-free graph search (:mod:`retinassl.oct.graph_search`, Chiu et al. 2010) finds the inner
limiting membrane (ILM) and Bruch's membrane (BM) of most of them, with quality flags. This job
uses those boundaries as pseudo-labels -- only on B-scans whose flags are all clean -- to fine-tune
the model on the real B-scans:

1. read the B-scan images of a data source (``image`` column; the MX B-scans by default), run the
   graph search on each (cached in ``<run>/pseudo-labels.npz``, so a resumed run does not redo it);
2. split the B-scans by patient group (``group_column``, seeded) into training and held-out ones;
3. fine-tune on the clean training B-scans: above the ILM is the first region, below the BM the
   last, between them "some inner region" (:data:`~retinassl.methods.oct_layers.UNRESOLVED_LABEL`):
   a model of more boundaries than ILM/BM is trained on its first and last boundary only (the inner
   regions merged, :func:`~retinassl.methods.oct_layers.partial_layer_losses`), columns where the
   graph search left a boundary undefined carry no loss. Through the engine: resumable, seeded;
4. report, before and after: agreement with the graph search on the held-out clean B-scans (mean
   absolute difference of ILM and BM, pixels of the B-scan's own grid) and the error against the
   exact truth of synthetic test volumes (did adapting break the synthetic accuracy?).

The adapted model is a saved ``layer-model`` in ``<run>/layer-model``; ``adapt.json`` holds the
numbers; the report shows ``figure_bscans`` random held-out B-scans with the graph search's and both
models' ILM/BM (:mod:`retinassl.jobs.oct_bscan_figure`, panels named by row index). The B-scans' file
names and ids (often the patient's) never reach the log or an output: they are registered as private
(:mod:`retinassl.oct.identity`) and only counts are written.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from pydantic import Field
from torch.utils.data import ConcatDataset, Dataset

from retinassl.atomic import write_text, write_with
from retinassl.config import DataConfig, EngineConfig, Section, to_yaml
from retinassl.data.manifest import Manifest, is_missing
from retinassl.engine.fit import fit
from retinassl.errors import ConfigError, DataError
from retinassl.io.results import append_results, result_row
from retinassl.io.rundir import RunDir
from retinassl.io.saved_model import load_state_strict, module_state
from retinassl.jobs.oct_layers import SyntheticOCTData, evaluate_layers
from retinassl.methods.base import build_method
from retinassl.methods.oct_layers import UNRESOLVED_LABEL, BScanDataset, LayerModel, load_layer_model
from retinassl.models import build_encoder
from retinassl.oct.layers import boundaries_to_labels

log = logging.getLogger(__name__)


class AdaptLayersConfig(Section):
    """A layer-model adaptation run.

    Attributes:
        name, seed, runs_dir: the run.
        model: the saved layer model to adapt (kind ``layer-model``; its first boundary must be
            ``ILM`` and its last ``BM``).
        data: the real B-scans (a source whose ``image_column`` holds one B-scan image per row).
        image_column, group_column: the manifest's B-scan and patient-group columns (without the
            group column every B-scan is its own group, with a warning).
        axial_um, lateral_um: pixel spacing of the B-scans (both or neither; None = unknown: the
            graph search scales its constraints with its nominal spacing).
        val_fraction: fraction of the patient groups held out.
        max_bscans: use at most this many B-scans (drawn at random, seeded; a quick run).
        lr: fine-tuning learning rate.
        synthetic_test: the synthetic volumes with exact truth the error is measured on.
        figure_bscans: held-out B-scans drawn at random (seeded) into the report figure
            ``bscans-held-out.png`` with the graph search's and both models' ILM/BM (0 = none).
        replay_bscans: labelled synthetic B-scans (all the model's boundaries, from
            ``replay_volumes``) mixed into the fine-tuning, to keep what the model learnt there
            (0 = real pseudo-labels only).
        engine: training settings (a few hundred steps).
    """

    name: str = "oct-adapt-layers"
    seed: int = 0
    runs_dir: Path = Path("runs")
    model: Path
    data: DataConfig = DataConfig(source="mx_fundus_oct", options={"modality": "oct"})
    image_column: str = "image"
    group_column: str = "patient"
    axial_um: float | None = Field(None, gt=0)
    lateral_um: float | None = Field(None, gt=0)
    val_fraction: float = Field(0.25, gt=0, lt=1)
    max_bscans: int | None = Field(None, ge=2)
    lr: float = Field(3e-4, gt=0)
    synthetic_test: SyntheticOCTData = SyntheticOCTData(n_volumes=2, seed=202)
    replay_bscans: int = Field(0, ge=0)
    replay_volumes: SyntheticOCTData = SyntheticOCTData(n_volumes=4, seed=101)
    figure_bscans: int = Field(16, ge=0)
    engine: EngineConfig = EngineConfig(max_epochs=50, max_steps=200, batch_size=8,
                                        checkpoint_every_n_steps=50)


# -- pseudo-labels --------------------------------------------------------------------------------
def graph_search_labels(bscans: Sequence[np.ndarray], axial_um: float | None = None,
                        lateral_um: float | None = None) -> tuple[list[np.ndarray], np.ndarray, list[str]]:
    """Graph-search ILM and BM of each B-scan.

    Returns:
        ``(rows, clean, reasons)``: per B-scan ``(2, W)`` float32 rows (ILM, BM; NaN = undefined),
        ``(N,)`` bool whether its quality flags are all clean, and its raised flags (``;``-joined).
    """
    from retinassl.oct.graph_search import detect_boundaries

    rows, clean, reasons = [], [], []
    for bscan in bscans:
        found = detect_boundaries(bscan, axial_um, lateral_um)
        rows.append(np.stack([found.ilm, found.bm]).astype(np.float32))
        clean.append(found.quality.clean)
        reasons.append(";".join(found.quality.reasons))
    return rows, np.asarray(clean, dtype=bool), reasons


def pseudo_label_indices(clean: np.ndarray, rows: Sequence[np.ndarray], indices: np.ndarray,
                         min_defined: float = 0.5) -> np.ndarray:
    """The B-scans of ``indices`` usable as pseudo-labels: flagged clean and with both boundaries
    defined in at least ``min_defined`` of the columns."""
    keep = [i for i in indices if clean[i] and np.isfinite(rows[i]).all(axis=0).mean() >= min_defined]
    return np.asarray(keep, dtype=np.int64)


def pseudo_region_labels(ilm_bm: np.ndarray, depth: int, num_boundaries: int) -> np.ndarray:
    """Region labels ``(depth, W)`` of a model of ``num_boundaries`` (``K``) boundaries from the
    ILM/BM rows ``(2, W)``: 0 above the ILM, ``K`` below the BM, between them ``1`` when ``K == 2``
    else :data:`UNRESOLVED_LABEL`; columns with an undefined boundary -1 (ignored)."""
    labels = boundaries_to_labels(ilm_bm, depth)                          # 0 / 1 / 2 / -1
    k = int(num_boundaries)
    if k < 2:
        raise ValueError(f"ILM/BM pseudo-labels need a model of at least 2 boundaries, got {k}")
    out = labels.copy()
    out[labels == 2] = k
    if k > 2:
        out[labels == 1] = UNRESOLVED_LABEL
    return out


class PseudoLabelDataset(BScanDataset):
    """Real B-scans with their ILM/BM pseudo-labels ``(2, W)`` at the model's input size. Items as
    :class:`~retinassl.methods.oct_layers.BScanDataset`'s: ``image`` ``(1, H, W)``, ``label``
    ``(H, W)`` (see :func:`pseudo_region_labels`), ``index``."""

    def __init__(self, bscans: Sequence[np.ndarray], ilm_bm: Sequence[np.ndarray],
                 size: tuple[int, int], num_boundaries: int) -> None:
        super().__init__(bscans, ilm_bm, size)
        self.k = int(num_boundaries)

    def __getitem__(self, index: int) -> dict:
        labels = pseudo_region_labels(self.rows[index], self.size[0], self.k)
        return {"image": torch.from_numpy(self.images[index].astype(np.float32))[None],
                "label": torch.from_numpy(labels), "index": index}


# -- data -----------------------------------------------------------------------------------------
def split_groups(groups: Sequence[str], val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of training and held-out B-scans, whole groups on one side (seeded; at least one
    group each when there are two or more)."""
    groups = np.asarray([str(g) for g in groups])
    unique = np.unique(groups)
    if len(unique) < 2:
        raise DataError(f"need at least 2 patient groups to hold some out, got {len(unique)}")
    order = np.random.default_rng([seed, 29]).permutation(len(unique))
    n_val = min(len(unique) - 1, max(1, int(round(val_fraction * len(unique)))))
    held = set(unique[order[:n_val]].tolist())
    is_val = np.array([g in held for g in groups])
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def patient_groups(manifest: Manifest, column: str) -> list[str]:
    """Each row's patient group from ``column``; a row without one is its own group ``row-<i>``."""
    frame = manifest.frame
    given = frame[column].tolist() if column in frame.columns else [""] * len(frame)
    return [f"row-{i}" if is_missing(g) or str(g) == "" else str(g) for i, g in enumerate(given)]


def read_real_bscans(manifest: Manifest, column: str, axial_um: float | None,
                     lateral_um: float | None) -> list[np.ndarray]:
    """One ``(D, W)`` uint8 B-scan per manifest row (errors name the row by salted label)."""
    from retinassl.oct.bscan_images import UNKNOWN_SPACING_WARNING, read_bscan_images
    from retinassl.oct.identity import redact

    if column not in manifest.frame.columns:
        raise ConfigError(f"the data has no {column!r} column (image_column); it has "
                          f"{list(manifest.frame.columns)}")
    reader_log = logging.getLogger("retinassl.oct.bscan_images")
    once = _DropRepeats()
    reader_log.addFilter(once)
    try:
        out = []
        for r in range(len(manifest)):
            path = manifest.path(r, column)
            if path is None:
                raise DataError(f"row {r} has no B-scan image ({column!r} is empty)")
            try:
                out.append(read_bscan_images(path, axial_um, lateral_um).bscans[0])
            except DataError as exc:
                raise DataError(redact(str(exc))) from None
    finally:
        reader_log.removeFilter(once)
    if axial_um is None:
        log.warning("%s (%d B-scans)", UNKNOWN_SPACING_WARNING, len(out))
    return out


class _DropRepeats(logging.Filter):
    """Drops every record of a logger while attached (the reader's per-image spacing warning is
    logged once for all by :func:`read_real_bscans`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return False


# -- measures -------------------------------------------------------------------------------------
def agreement(model: LayerModel, bscans: Sequence[np.ndarray], ilm_bm: Sequence[np.ndarray]) -> dict[str, float]:
    """Mean absolute difference (pixels, each B-scan's own grid) between the model's first/last
    boundary and the graph search's ILM/BM, over columns where both are defined.

    Returns:
        ``mad_ilm_px``, ``mad_bm_px``, their mean ``mad_px``, ``model_undefined_fraction`` (columns
        where the model left the ILM or BM undefined) and ``bscans``.
    """
    from retinassl.jobs.oct_bscan_figure import model_ilm_bm

    err = np.zeros(2)
    n = np.zeros(2)
    undefined = columns = 0
    for pred, ref in zip(model_ilm_bm(model, bscans), ilm_bm):                  # (2, W) each
        ref = np.asarray(ref)
        both = np.isfinite(pred) & np.isfinite(ref)
        err += np.where(both, np.abs(pred - ref), 0).sum(axis=1)
        n += both.sum(axis=1)
        undefined += int((~np.isfinite(pred)).any(axis=0).sum())
        columns += pred.shape[1]
    mad = np.where(n > 0, err / np.maximum(n, 1), np.nan)
    return {"mad_ilm_px": float(mad[0]), "mad_bm_px": float(mad[1]), "mad_px": float(mad.mean()),
            "model_undefined_fraction": undefined / max(columns, 1), "bscans": float(len(bscans))}


def synthetic_error(model: LayerModel, volumes: Sequence) -> dict[str, float]:
    """Error against the synthetic volumes' exact boundaries (micrometres): ILM, BM and the mean
    over all the model's boundaries, with the mean layer Dice."""
    m = evaluate_layers(model, volumes)
    first, last = model.boundaries[0], model.boundaries[-1]
    return {"error_um_ilm": m[f"boundary_error_um_{first}"], "error_um_bm": m[f"boundary_error_um_{last}"],
            "error_um_all": m["boundary_error_um"], "dice_layers": m["dice_layers"],
            "undefined_fraction": m["undefined_fraction"]}


# -- the job --------------------------------------------------------------------------------------
PSEUDO_LABELS = "pseudo-labels.npz"


def cached_graph_search(run: RunDir, fingerprint: str, bscans: Sequence[np.ndarray],
                        axial_um: float | None, lateral_um: float | None
                        ) -> tuple[list[np.ndarray], np.ndarray, list[str]]:
    """:func:`graph_search_labels`, kept in ``<run>/pseudo-labels.npz`` (no file names: rows in
    manifest order, the manifest's fingerprint) and read back when it is for the same B-scans."""
    path = run.path / PSEUDO_LABELS
    widths = np.array([np.asarray(b).shape[1] for b in bscans], dtype=np.int64)
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            if str(z["fingerprint"]) == fingerprint and np.array_equal(z["widths"], widths):
                cuts = np.cumsum(widths)[:-1]
                log.info("graph-search pseudo-labels of %d B-scans read from the run", len(widths))
                return (list(np.split(z["rows"], cuts, axis=1)), z["clean"].astype(bool),
                        [str(r) for r in z["reasons"]])
        log.warning("the run's pseudo-labels are for other B-scans: searching again")
    log.info("graph search on %d B-scans", len(bscans))
    rows, clean, reasons = graph_search_labels(bscans, axial_um, lateral_um)
    arrays = {"rows": np.concatenate(rows, axis=1), "widths": widths, "clean": clean,
              "reasons": np.array(reasons, dtype=str), "fingerprint": np.array(fingerprint)}
    write_with(path, lambda fh: np.savez(fh, **arrays))
    return rows, clean, reasons


def adaptation_method(base: LayerModel, lr: float, seed: int):
    """An ``oct-layers`` method holding ``base``'s weights (strictly loaded), trained at ``lr``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = build_encoder(base.arch, **base.encoder_kwargs)
        method = build_method("oct-layers", {"boundaries": list(base.boundaries), "lr": lr,
                                             "decoder_channels": base.decoder_channels}, encoder)
    load_state_strict(method.network(), module_state(base.net), "the layer model to adapt")
    return method


def with_replay(dataset: PseudoLabelDataset, config: AdaptLayersConfig, base: LayerModel) -> Dataset:
    """``dataset`` plus ``config.replay_bscans`` labelled synthetic B-scans (drawn seeded from
    ``config.replay_volumes``), every boundary of the model labelled."""
    from retinassl.methods.oct_layers import training_bscans
    from retinassl.oct.synthetic import synthetic_volumes

    s = config.replay_volumes
    volumes = synthetic_volumes(s.n_volumes, s.seed, tuple(s.shape))
    images, rows = training_bscans(volumes, base.boundaries, config.replay_bscans, config.seed)
    log.info("replay: %d labelled synthetic B-scans mixed with %d pseudo-labelled real ones",
             len(images), len(dataset))
    return ConcatDataset([dataset, BScanDataset(images, rows, base.input_size)])


def run_adapt_layers(config: AdaptLayersConfig, run: RunDir, manifest: Manifest | None = None,
                     synthetic: Sequence | None = None, resume: bool = False) -> tuple[LayerModel, dict]:
    """Adapt the layer model (see the module docstring). ``manifest`` / ``synthetic`` (test volumes)
    replace the config's data. Returns the adapted model and the summary written to
    ``<run>/adapt.json``: ``before`` / ``after``, each ``real`` (:func:`agreement`) and
    ``synthetic`` (:func:`synthetic_error`), and the counts."""
    import json

    from retinassl.data.loading import load_manifest
    from retinassl.jobs.cross_modal import register_private_rows
    from retinassl.oct.identity import redact_log_handlers

    run.write_config(to_yaml(config))
    base = load_layer_model(config.model)
    if base.boundaries[0] != "ILM" or base.boundaries[-1] != "BM" or len(base.boundaries) < 2:
        raise ConfigError(f"the layer model's boundaries are {list(base.boundaries)}: adapting to "
                          f"ILM/BM pseudo-labels needs ILM first and BM last")
    manifest = manifest if manifest is not None else load_manifest(config.data)
    register_private_rows(manifest)
    redact_log_handlers()
    if config.max_bscans is not None and len(manifest) > config.max_bscans:
        pick = np.random.default_rng([config.seed, 31]).choice(len(manifest), config.max_bscans, replace=False)
        manifest = manifest.subset(np.sort(pick))
    bscans = read_real_bscans(manifest, config.image_column, config.axial_um, config.lateral_um)
    rows, clean, reasons = cached_graph_search(run, manifest.fingerprint(), bscans,
                                               config.axial_um, config.lateral_um)
    groups = patient_groups(manifest, config.group_column)
    if any(g.startswith("row-") for g in groups):
        log.warning("%d B-scans have no %r group: each is its own group (B-scans of one eye may then "
                    "sit on both sides of the split)", sum(g.startswith("row-") for g in groups),
                    config.group_column)
    train_idx, val_idx = split_groups(groups, config.val_fraction, config.seed)
    train_use = pseudo_label_indices(clean, rows, train_idx)
    val_use = pseudo_label_indices(clean, rows, val_idx)
    if len(train_use) == 0 or len(val_use) == 0:
        raise DataError(f"no clean graph-search B-scan to {'train on' if len(train_use) == 0 else 'hold out'} "
                        f"({int(clean.sum())} of {len(clean)} clean)")
    log.info("pseudo-labels: %d of %d B-scans clean; %d training, %d held out (of %d / %d B-scans, "
             "%d patient groups)", int(clean.sum()), len(clean), len(train_use), len(val_use),
             len(train_idx), len(val_idx), len(set(groups)))
    if synthetic is None:
        from retinassl.oct.synthetic import synthetic_volumes

        s = config.synthetic_test
        synthetic = synthetic_volumes(s.n_volumes, s.seed, tuple(s.shape))
    val_b, val_r = [bscans[i] for i in val_use], [rows[i] for i in val_use]
    before = {"real": agreement(base, val_b, val_r), "synthetic": synthetic_error(base, synthetic)}
    log.info("before adaptation: %s", before)

    method = adaptation_method(base, config.lr, config.seed)
    dataset = PseudoLabelDataset([bscans[i] for i in train_use], [rows[i] for i in train_use],
                                 base.input_size, len(base.boundaries))
    if config.replay_bscans:
        dataset = with_replay(dataset, config, base)
    result = fit(method, dataset, config=config.engine, run=run, seed=config.seed, resume=resume,
                 drop_last=len(dataset) > config.engine.batch_size)
    method.eval()
    adapted = LayerModel(method.network(), base.boundaries, base.input_size, base.arch,
                         dict(base.encoder_kwargs), base.decoder_channels)
    counts = {"replay_bscans": len(dataset) - len(train_use), "bscans": len(bscans), "clean": int(clean.sum()), "train_pseudo_labels": len(train_use),
              "held_out_clean": len(val_use), "train_bscans": len(train_idx), "held_out_bscans": len(val_idx),
              "groups": len(set(groups)), "flag_counts": {f: sum(f in r.split(";") for r in reasons)
                                                          for f in sorted({x for r in reasons for x in r.split(";") if x})}}
    adapted.save(run.path / "layer-model", extra={"adapted_from": str(config.model),
                                                  "adapted_on_bscans": len(train_use), "precision": result.precision})
    after = {"real": agreement(adapted, val_b, val_r), "synthetic": synthetic_error(adapted, synthetic)}
    log.info("after adaptation: %s", after)
    if config.figure_bscans:
        from retinassl.jobs.oct_bscan_figure import FIGURE_PREFIX, draw_sample

        draw_sample(run.report_dir / "figures" / f"{FIGURE_PREFIX}held-out.png", bscans, rows, reasons,
                    {"adapted": adapted, "synthetic-trained": base}, val_idx, config.figure_bscans,
                    config.seed, title=f"held-out real B-scans (seed {config.seed})")
    summary = {"before": before, "after": after, "counts": counts, "train_seconds": result.seconds,
               "train_batches": result.batches}
    write_text(run.path / "adapt.json", json.dumps(summary, indent=1, default=float))
    append_results(run.results_file, [
        result_row(experiment=config.name, task="oct-layers", method="oct-layers", init=init,
                   protocol=protocol, n_labelled=len(train_use), seed=config.seed, metric=k, value=v)
        for init, block in (("synthetic-trained", before), ("adapted-real", after))
        for protocol, values in (("real-agreement", block["real"]), ("synthetic-truth", block["synthetic"]))
        for k, v in values.items()])
    return adapted, summary
