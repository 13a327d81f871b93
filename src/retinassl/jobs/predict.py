"""Apply a saved model to images it has never seen: ``retinassl predict`` (scores, classes,
heatmaps, vessel maps) and ``retinassl evaluate external`` (metrics on another labelled dataset).

Every saved model (:mod:`retinassl.io.saved_model`) carries the preprocessing its inputs need, so
the images are prepared exactly as in training (FOV crop, size, normalisation...) with no flag to
repeat; a different choice (``preprocess`` overrides) is allowed and logged. A classifier saved with
an operating point (a threshold chosen on its own validation images) predicts the class at that
threshold.

Kinds and what they give per image:

- ``classifier`` (fine-tuned or ``retinassl train`` whole-image models): the probability (binary:
  ``score``; multiclass: ``prob_<k>`` and the arg-max ``predicted``; multi-label: ``score[<name>]``).
- ``patch-classifier`` (the SSL-GAN and the supervised patch baselines): the image score by the
  classifier's saved rule (``sum_j sigmoid(l_j)`` of Lecouat et al. 2018, or the ``tissue`` mean:
  :mod:`retinassl.metrics.image_score`), the 8x8 patch probabilities ``patch_00..``, and
  optionally a heatmap PNG per image.
- with ``overlays`` (``retinassl predict --explain``: :func:`retinassl.explain.overlays.image_overlays`,
  passed in by the command line since jobs sit below ``explain/``), either image kind also writes
  ``overlays/<id>.png`` per image: Grad-CAM for a classifier, the patch heatmap for a patch
  classifier, computed on the image as the model saw it and mapped back onto the original image
  (its size, the same anatomy).
- ``segmenter`` (vessels): a probability PNG and a binary mask PNG per image at its original size.
- ``cross-modal`` (DeepRT's fundus-to-OCT-thickness regressor): the predicted thickness map of the
  photograph, ``.npy`` in micrometres and a PNG with a colour bar, and its mean and maximum.
"""

from __future__ import annotations

import glob
import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from retinassl.atomic import atomic_path, write_text
from retinassl.data.cache import Cache, PreparedData
from retinassl.data.fov_scale import FOV_KEY, prepare_at_model_scale
from retinassl.data.manifest import Manifest, is_missing
from retinassl.data.preprocess import PreprocessConfig
from retinassl.data.sources.files import is_image, safe_id, stem
from retinassl.errors import ConfigError, DataError
from retinassl.io.saved_model import read_model_meta
from retinassl.progress import track

log = logging.getLogger(__name__)

IMAGE_KINDS = ("classifier", "patch-classifier")
OVERLAY_BATCH = 16
# draws the overlays of rows of prepared data, given the rows' scored table (what ImageScorer.score
# returned for them: a patch classifier's overlay reuses its patch probabilities, never re-scoring)
Overlays = Callable[[Any, PreparedData, np.ndarray, pd.DataFrame], list[np.ndarray]]


# -- inputs ----------------------------------------------------------------------------------------
def input_manifest(inputs: Sequence[str], source: str | None = None,
                   options: dict[str, Any] | None = None) -> Manifest:
    """The images to predict: a data source with options, one manifest CSV, or any mix of image
    files, folders (searched recursively) and glob patterns.

    Raises:
        ConfigError: nothing given, nothing found, or a manifest mixed with other inputs.
        DataError: a named file or folder does not exist.
    """
    if source:
        from retinassl.data.sources import load_source

        return load_source(source, **(options or {}))
    if not inputs:
        raise ConfigError("give image files, folders, glob patterns or a manifest CSV (or --source)")
    csvs = [i for i in inputs if str(i).lower().endswith(".csv")]
    if csvs:
        if len(inputs) > 1:
            raise ConfigError(f"a manifest CSV ({csvs[0]}) is given alone, not with other inputs")
        return Manifest.load(csvs[0])
    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if is_image(p))
            if not found:
                raise ConfigError(f"{path}: no image files in this folder")
            paths += found
        elif path.is_file():
            paths.append(path)
        elif any(ch in str(item) for ch in "*?["):
            found = sorted(Path(p) for p in glob.glob(str(item), recursive=True) if is_image(Path(p)))
            if not found:
                raise ConfigError(f"the pattern {item!r} matches no image file")
            paths += found
        else:
            raise DataError("no such file or folder", path=path)
    paths = list(dict.fromkeys(p.resolve() for p in paths))
    root = Path(os.path.commonpath([str(p.parent) for p in paths]))
    records, seen = [], set()
    for p in paths:
        relative = p.relative_to(root)
        ident = safe_id(*relative.parent.parts, stem(p.name))
        if ident in seen:
            ident = safe_id(*relative.parts)
        seen.add(ident)
        records.append({"id": ident, "image": relative.as_posix()})
    return Manifest.from_records(records, root, name="inputs")


def model_preprocess(meta: dict[str, Any], overrides: dict[str, Any] | None = None) -> PreprocessConfig:
    """The preprocessing recorded with a model, with ``overrides`` applied (and logged)."""
    recorded = dict(meta.get("preprocess") or {})
    if not recorded:
        log.warning("the model records no preprocessing: using the defaults")
    if overrides:
        log.warning("preprocessing differs from the model's: %s (recorded: %s)",
                    ", ".join(f"{k}={v}" for k, v in overrides.items()),
                    ", ".join(f"{k}={recorded.get(k)}" for k in overrides))
        recorded.update(overrides)
    try:
        return PreprocessConfig.model_validate(recorded)
    except Exception as exc:
        raise ConfigError(f"the model's preprocessing cannot be used: {exc}") from None


# -- scoring ---------------------------------------------------------------------------------------
@dataclass
class ImageScorer:
    """A saved image-level model and how it scores prepared images."""

    kind: str
    meta: dict[str, Any]
    model: Any
    task: Any = None
    threshold: float | None = None
    columns: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, path: str | Path) -> ImageScorer:
        meta = read_model_meta(path)
        kind = meta["kind"]
        if kind == "classifier":
            from retinassl.jobs.finetune import load_classifier

            method, task, meta = load_classifier(path)
            threshold = (meta.get("operating_point") or {}).get("threshold")
            return cls(kind, meta, method, task, threshold)
        if kind == "patch-classifier":
            from retinassl.models.patch_classifier import PatchClassifier

            classifier, meta = PatchClassifier.load(path)
            threshold = (meta.get("operating_point") or {}).get("threshold")
            return cls(kind, meta, classifier, None, threshold)
        raise ConfigError(f"{path}: a saved {kind} model gives no image-level score (image-level "
                          f"kinds: {', '.join(IMAGE_KINDS)}; vessel segmenters: `retinassl predict` "
                          f"writes their maps; OCT layer models: `retinassl predict` of OCT exports)")

    def score(self, prepared: PreparedData, rows: np.ndarray, batch_size: int = 32) -> tuple[np.ndarray, pd.DataFrame]:
        """``(scores, table)``: the image scores used for AUC (``(N,)``; multiclass: ``(N, K)``)
        and the per-image columns written to the predictions CSV."""
        rows = np.asarray(rows, dtype=int)
        if self.kind == "classifier":
            from retinassl.jobs.finetune import predict as predict_images

            chunks = [predict_images(self.model, prepared, rows[s:s + batch_size], batch_size)
                      for s in track(range(0, len(rows), batch_size), total=-(-len(rows) // batch_size),
                                     description="predicting")]
            scores = np.concatenate(chunks) if chunks else np.zeros(0)
            if scores.ndim == 1:
                return scores, pd.DataFrame({"score": scores})
            names = self.task.label_columns(prepared.manifest) if self.task.kind == "multilabel" else None
            if names:
                return scores, pd.DataFrame(scores, columns=[f"score[{n}]" for n in names])
            table = pd.DataFrame(scores, columns=[f"prob_{k}" for k in range(scores.shape[1])])
            table.insert(0, "predicted", scores.argmax(axis=1))
            return scores, table
        from retinassl.jobs.patch_evaluation import score_images

        scores, logits = score_images(self.model, prepared, rows, batch_size)
        probs = 1 / (1 + np.exp(-logits))
        table = pd.DataFrame(probs, columns=[f"patch_{j:02d}" for j in range(probs.shape[1])])
        table.insert(0, "score", scores)
        return scores, table

    def predicted(self, scores: np.ndarray) -> np.ndarray | None:
        """The class at the model's operating threshold (binary scores only), else None."""
        if self.threshold is None or scores.ndim != 1:
            return None
        return (scores >= self.threshold).astype(int)


def prepare_for(manifest: Manifest, preprocess: PreprocessConfig, cache_dir: str | Path | None,
                skip_bad: bool, mask_columns: list[str] | None = None) -> PreparedData:
    workers = max(1, min(4, os.cpu_count() or 1))
    return Cache(cache_dir).prepare(manifest, preprocess, workers=workers, skip_bad=skip_bad,
                                    mask_columns=mask_columns if mask_columns is not None else [])


def prepare_matched(manifest: Manifest, config: PreprocessConfig, meta: dict[str, Any],
                    cache_dir: str | Path | None, skip_bad: bool, match_scale: bool = True,
                    mask_columns: list[str] | None = None) -> PreparedData:
    """``manifest`` prepared with the model's preprocessing ``config`` at the model's scale: rescaled
    so that the images' field of view spans as many input pixels as the model's training images did
    (:func:`~retinassl.data.fov_scale.prepare_at_model_scale`; ``match_scale`` False keeps the size).

    Not for a patch classifier: its grid is cut relative to the prepared square and every cell resized
    to its patch size, so a rescaled square gives the same cells (and a size that is not a multiple of
    the grid could not be cut at all); its images keep the model's size."""
    if match_scale and meta.get("kind") == "patch-classifier" and meta.get(FOV_KEY) is not None:
        log.info("scale: a patch classifier's grid is relative to the image, so scale matching changes "
                 "nothing it sees: images prepared at its size %d", config.size)
        match_scale = False
    return prepare_at_model_scale(lambda c: prepare_for(manifest, c, cache_dir, skip_bad, mask_columns),
                                  config, meta.get(FOV_KEY), enabled=match_scale)


def fresh_output(out: Path) -> Path:
    """``out`` as a new (or empty) folder: predictions never overwrite earlier ones or input data."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out}: --out must be a new or empty folder (predictions never overwrite "
                          f"files)")
    out.mkdir(parents=True, exist_ok=True)
    return out


def predict(model: str | Path, manifest: Manifest, out: str | Path, *, cache_dir: str | Path | None = None,
            skip_bad: bool = False, heatmaps: int = 0, preprocess: dict[str, Any] | None = None,
            overlays: Overlays | None = None,
            match_scale: bool = True) -> Path:
    """Apply a saved model to every image of ``manifest``; returns ``<out>/predictions.csv``.

    The CSV has one row per input row (``id``, ``image``, the scores, ``predicted`` at the model's
    operating threshold when it has one, and ``problem`` for an image that could not be read with
    ``skip_bad``), written atomically once all images are done. ``overlays``: what the model looked
    at, one PNG per image (``overlay_png``; image kinds only). ``match_scale``: rescale the images so
    that their field of view spans as many input pixels as the model's training images did (off
    when ``preprocess`` sets ``size``; :func:`prepare_matched`).
    """
    out = fresh_output(Path(out))
    meta = read_model_meta(model)
    config = model_preprocess(meta, preprocess)
    match_scale = match_scale and "size" not in (preprocess or {})  # an explicit size wins
    frame = manifest.frame
    if overlays is not None and meta["kind"] not in IMAGE_KINDS:
        log.warning("overlays explain image-level scores; a saved %s model writes its own maps instead",
                    meta["kind"])
    if meta["kind"] == "segmenter":
        from retinassl.jobs.segment import load_segmenter, predict_images

        segmenter = load_segmenter(model)
        prepared = prepare_matched(manifest, config, meta, cache_dir, skip_bad, match_scale, mask_columns=[
            c for c in ("mask_fov",) if c in frame.columns])
        predict_images(segmenter, prepared, out)
        table = pd.DataFrame({"id": prepared.manifest.frame["id"].astype(str),
                              "image": prepared.manifest.frame["image"].astype(str)})
        table["probability_png"] = [f"{i}-prob.png" for i in table["id"]]
        table["mask_png"] = [f"{i}-vessels.png" for i in table["id"]]
    elif meta["kind"] == "cross-modal":
        prepared = prepare_matched(manifest, config, meta, cache_dir, skip_bad, match_scale)
        table = thickness_maps(model, prepared, out)
    else:
        scorer = ImageScorer.load(model)
        prepared = prepare_matched(manifest, config, meta, cache_dir, skip_bad, match_scale)
        rows = np.arange(len(prepared))
        scores, columns = scorer.score(prepared, rows)
        table = pd.concat([pd.DataFrame({"id": prepared.manifest.frame["id"].astype(str).to_numpy(),
                                         "image": prepared.manifest.frame["image"].astype(str).to_numpy()}),
                           columns.reset_index(drop=True)], axis=1)
        predicted = scorer.predicted(scores)
        if predicted is not None:
            table["predicted"] = predicted
            table["threshold"] = scorer.threshold
        elif scores.ndim == 1:
            log.warning("the model has no operating threshold (saved before thresholds were recorded, "
                        "or without validation images): no predicted class, scores only")
        if scorer.kind == "patch-classifier" and heatmaps:
            _heatmaps(prepared, table, out / "heatmaps", heatmaps)
        if overlays is not None:
            table["overlay_png"] = _overlays(overlays, scorer, prepared, columns, out / "overlays")
    if prepared.skipped:
        skipped = pd.DataFrame({"id": [i for i, _ in prepared.skipped], "problem": [p for _, p in prepared.skipped]})
        images = frame.set_index(frame["id"].astype(str))["image"]
        skipped.insert(1, "image", [str(images.get(i, "")) for i in skipped["id"]])
        table = pd.concat([table, skipped], ignore_index=True)
        log.warning("%d image(s) could not be read and have no scores (see the problem column)",
                    len(prepared.skipped))
    order = {ident: k for k, ident in enumerate(frame["id"].astype(str))}
    table = table.sort_values("id", key=lambda s: s.map(order)).reset_index(drop=True)
    path = out / "predictions.csv"
    write_text(path, table.to_csv(index=False))
    log.info("predictions of %d image(s) -> %s", len(table), path)
    return path


def thickness_maps(model: str | Path, prepared: PreparedData, out: Path, batch_size: int = 16) -> pd.DataFrame:
    """A fundus-to-thickness regressor's predicted map of every image: ``<id>-thickness.npy``
    (float32 micrometres, the model's input grid) and ``<id>-thickness.png`` (with a colour bar)."""
    import torch

    from retinassl.data.datasets import ImageDataset
    from retinassl.figures.oct import thickness_png
    from retinassl.methods.cross_modal import load_regressor

    regressor = load_regressor(model)
    data = ImageDataset(prepared)
    ids = prepared.manifest.frame["id"].astype(str).to_numpy()
    rows = []
    for s in track(range(0, len(data), batch_size), total=-(-len(data) // batch_size), description="predicting"):
        batch = torch.stack([data[i]["image"] for i in range(s, min(s + batch_size, len(data)))])
        with torch.no_grad():
            maps = regressor(batch)[:, 0].float().numpy()
        for k, tmap in enumerate(maps):
            ident = ids[s + k]
            with atomic_path(out / f"{ident}-thickness.npy") as tmp, open(tmp, "wb") as fh:
                np.save(fh, tmap.astype(np.float32))
            thickness_png(tmap, out / f"{ident}-thickness.png", title=f"predicted thickness: {ident}")
            rows.append({"id": ident, "image": str(prepared.manifest.frame.at[s + k, "image"]),
                         "mean_um": float(tmap.mean()), "max_um": float(tmap.max()),
                         "thickness_npy": f"{ident}-thickness.npy", "thickness_png": f"{ident}-thickness.png"})
    return pd.DataFrame(rows)


def _overlays(draw: Overlays, scorer: ImageScorer, prepared: PreparedData, scored: pd.DataFrame,
              folder: Path) -> list[str]:
    """``draw``'s overlay of every image as ``<folder>/<id>.png`` (``scored``: the per-image table of
    :meth:`ImageScorer.score`, row for row); returns the names relative to the output folder."""
    from retinassl.figures.heatmap import save_png

    ids = prepared.manifest.frame["id"].astype(str).to_numpy()
    names = []
    for s in track(range(0, len(ids), OVERLAY_BATCH), total=-(-len(ids) // OVERLAY_BATCH), description="explaining"):
        rows = np.arange(s, min(s + OVERLAY_BATCH, len(ids)))
        for row, art in zip(rows, draw(scorer, prepared, rows, scored.iloc[rows].reset_index(drop=True))):
            save_png(folder / f"{ids[row]}.png", art)
            names.append(f"{folder.name}/{ids[row]}.png")
    return names


def _heatmaps(prepared: PreparedData, table: pd.DataFrame, folder: Path, count: int) -> None:
    from retinassl.figures.heatmap import overlay, save_png

    patches = table[[c for c in table.columns if c.startswith("patch_")]].to_numpy(float)
    grid = int(round(np.sqrt(patches.shape[1])))
    for row in range(min(count, len(table))):
        art = overlay(np.asarray(prepared.entries[row].image()), patches[row].reshape(grid, grid))
        save_png(folder / f"{table.at[row, 'id']}.png", art)


# -- labels of another dataset ---------------------------------------------------------------------
_MAPPING = re.compile(r"^\s*([A-Za-z_][\w\[\]]*)\s*(>=|<=|==|!=|>|<)\s*([^\s]+)\s*$")


def label_column(expression: str) -> str:
    """The dataset column a label mapping reads (``dr_stage`` of ``dr_stage>=1``)."""
    match = _MAPPING.match(expression)
    return match.group(1) if match else expression.strip()


def mapped_labels(manifest: Manifest, expression: str) -> tuple[np.ndarray, np.ndarray]:
    """``(labels, has_label)``: a binary label from a column of another dataset, e.g.
    ``dr_grade>=1``, ``dr_stage>=1``, ``level>=2``, ``abnormal==1`` or a bare 0/1 column name; rows
    whose column is empty have no label."""
    frame = manifest.frame
    match = _MAPPING.match(expression)
    column = label_column(expression)
    if column not in frame.columns:
        raise ConfigError(f"label mapping {expression!r}: the dataset has no column {column!r} "
                          f"(columns: {', '.join(map(str, frame.columns))})")
    values = frame[column]
    has = ~values.map(is_missing).to_numpy(bool)
    numeric = pd.to_numeric(values.where(has), errors="coerce")
    if match is None:
        labels = numeric.fillna(0).to_numpy(float)
        if not set(np.unique(labels[has])) <= {0.0, 1.0}:
            raise ConfigError(f"label column {column!r} is not 0/1: give a mapping such as {column}>=1")
        return labels.astype(int), has
    op, raw = match.group(2), match.group(3)
    try:
        bound = float(raw)
    except ValueError:
        raise ConfigError(f"label mapping {expression!r}: {raw!r} is not a number") from None
    x = numeric.to_numpy(float)
    result = {">=": x >= bound, "<=": x <= bound, ">": x > bound, "<": x < bound,
              "==": x == bound, "!=": x != bound}[op]
    has = has & np.isfinite(x)
    return result.astype(int), has
