"""The embedded synthetic retina dataset: the default data of the demo and of every test.

:func:`generate_dataset` writes a complete, seeded dataset of synthetic eyes to disk and returns its
:class:`~retinassl.data.manifest.Manifest`. The images come from
:func:`~retinassl.data.synthetic_fundus.render_eye` (colour fundus photographs with exact lesion,
disc, vessel and FOV masks and consistent DR/DME labels) and, with ``with_oct``, from
:func:`~retinassl.data.synthetic_oct.render_oct` (macular OCT volume with exact layer boundaries,
the matching retinal-thickness map and an infrared image). Those modules document the geometry.

On-disk layout (``<id>`` is ``syn<patient:05d>_<eye>``, e.g. ``syn00007_L``)::

    out_dir/
      manifest.csv, manifest.csv.root   the manifest (Manifest.save; paths relative to out_dir)
      dataset.json                      generation parameters
      images/<id>.png                   RGB fundus image, size x size
      masks/<id>_<KEY>.png              1-bit PNG masks, KEY in MA HE EX SE OD vessels fov
                                        (lesion masks of healthy eyes are written, all zero)
      thickness/<id>.npy                (with_oct) float32 (128, 128) ILM-BM thickness in
                                        micrometres on the infrared field, 0 = undefined
      ir/<id>.png                       (with_oct) 8-bit grayscale infrared-like image
      oct/<id>.npy                      (with_oct) uint8 volume (n_bscans, depth, width)
      oct/<id>.json                     (with_oct) sidecar: spacing, B-scan positions on the fundus
                                        image, map/IR affines, oedema, boundary file name
      oct/<id>_boundaries.npy           (with_oct) float32 (10, n_bscans, width) boundary rows

Manifest columns: ``id, image, patient, eye, split, abnormal, dr_grade, dme, mask_MA, mask_HE,
mask_EX, mask_SE, mask_OD, mask_vessels, mask_fov`` (+ ``oct_volume, thickness_map, ir_image`` with
OCT) and metadata ``dataset, od_x, od_y, fovea_x, fovea_y, pixel_mm``.

Patients have two eyes (R then L; an odd count leaves the last patient with one). Both eyes share
patient traits (pigmentation, camera gain, retinal thickness) and disease status (a diseased patient
has DR in both eyes, grades within one step), so the ``split`` column is assigned per patient
(stratified by disease status). Image ``k`` depends only on ``(seed, patient, eye)``, never on
``n_images`` or ``workers``, and the same seed gives byte-identical files.
"""

from __future__ import annotations

import io
import json
import logging
import multiprocessing
import os
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from retinassl.atomic import write_bytes, write_text
from retinassl.data.manifest import Manifest
from retinassl.data.synthetic_eye import MASK_KEYS, SyntheticEye, sample_traits
from retinassl.data.synthetic_fundus import render_eye
from retinassl.data.synthetic_lesions import GRADE_PROBS
from retinassl.data.synthetic_oct import DEFAULT_SHAPE, BOUNDARY_NAMES, SyntheticOCT, render_oct

__all__ = ["generate_dataset", "render_eye", "render_oct", "SyntheticEye", "SyntheticOCT"]

log = logging.getLogger(__name__)
SPLIT_NAMES: tuple[str, ...] = ("train", "val", "test")
# Bumped whenever the same seed and options would produce different pixels or labels; recorded in
# dataset.json, so that a cache of generated datasets can include it in its key.
GENERATOR_VERSION = 2   # 2: OCT leakage thickening around red lesions


def _png(array: np.ndarray, bilevel: bool = False) -> bytes:
    """Encode a uint8 gray or RGB array (or, ``bilevel``, a 0/255 mask as 1-bit) as PNG bytes."""
    if array.ndim == 3:
        array = array[..., ::-1]                         # RGB -> BGR for OpenCV
    params = [cv2.IMWRITE_PNG_BILEVEL, 1] if bilevel else [cv2.IMWRITE_PNG_COMPRESSION, 1]
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(array), params)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _patient_plan(seed: int, patient: int, prevalence: float) -> tuple[object, list[int]]:
    """Traits and the DR grade of each of the two eyes of ``patient``."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, patient]))
    traits = sample_traits(rng)
    if rng.random() < prevalence:
        g = int(rng.choice([1, 2, 3, 4], p=GRADE_PROBS))
        g2 = int(np.clip(g + rng.choice([-1, 0, 0, 1]), 1, 4))
        return traits, [g, g2]
    return traits, [0, 0]


def _split_patients(sick: Sequence[bool], fractions: Sequence[float], seed: int) -> list[str]:
    """Split names per patient: stratified by ``sick``, shuffled with ``seed``."""
    fr = np.asarray(fractions, float)
    if fr.ndim != 1 or not 1 <= len(fr) <= 3 or (fr < 0).any() or fr.sum() <= 0:
        raise ValueError(f"splits must be 1-3 non-negative fractions (train, val, test), got "
                         f"{tuple(fractions)}")
    fr = np.cumsum(fr / fr.sum())
    rng = np.random.default_rng(np.random.SeedSequence([seed, 7919]))
    out = [""] * len(sick)
    for status in (False, True):
        idx = np.array([i for i, s in enumerate(sick) if bool(s) == status], int)
        idx = idx[rng.permutation(len(idx))]
        bounds = np.round(fr * len(idx)).astype(int)
        start = 0
        for name, stop in zip(SPLIT_NAMES, bounds):
            for i in idx[start:stop]:
                out[int(i)] = name
            start = stop
    return out


def _oct_sidecar(o: SyntheticOCT, eye: SyntheticEye, item: str, ir_field_mm: float) -> dict:
    return {
        "format": "retinassl-synthetic-oct/1",
        "volume": f"{item}.npy",
        "shape": list(o.volume.shape),
        "dtype": str(o.volume.dtype),
        "axes": ["bscan", "axial", "lateral"],
        "spacing_mm": [float(s) for s in o.spacing_mm],
        "eye": o.eye,
        "fundus_size": o.fundus_size,
        "fundus_pixel_mm": eye.anatomy.pixel_mm,
        "fovea": list(eye.anatomy.fovea),
        "bscan_start": o.bscan_start.tolist(),
        "bscan_end": o.bscan_end.tolist(),
        "coordinates": "fundus pixels (x=column, y=row), pixel centres at integers; B-scan i has "
                       "A-scans equally spaced from bscan_start[i] to bscan_end[i]",
        "boundaries": f"{item}_boundaries.npy",
        "boundary_names": list(BOUNDARY_NAMES),
        "boundary_rows": "continuous row coordinate; pixel row r spans [r-0.5, r+0.5)",
        "thickness_map": {"file": f"../thickness/{item}.npy", "units": "micrometres",
                          "undefined_value": 0.0, "affine": o.map_affine.tolist(),
                          "field_mm": ir_field_mm},
        "ir_image": {"file": f"../ir/{item}.png", "affine": o.ir_affine.tolist(),
                     "field_mm": ir_field_mm},
        "affine_meaning": "2x3 matrix mapping (col, row, 1) of the map/IR pixel to fundus (x, y)",
        "oedema": None if eye.oedema is None else {
            "centre": list(eye.oedema.centre), "sigma_mm": eye.oedema.sigma_mm,
            "amplitude_um": eye.oedema.amplitude_um},
    }


def _make_item(args: tuple) -> dict:
    """Render and write one eye; returns its manifest row (without ``split``)."""
    (out_dir, seed, patient, eye_idx, size, prevalence, with_oct, oct_shape, map_size, ir_size,
     ir_field_mm) = args
    out = Path(out_dir)
    traits, grades = _patient_plan(seed, patient, prevalence)
    side = ("R", "L")[eye_idx]
    item = f"syn{patient:05d}_{side}"
    rng = np.random.default_rng(np.random.SeedSequence([seed, patient, eye_idx + 1]))
    eye = render_eye(rng, size, eye=side, grade=grades[eye_idx], traits=traits)
    row: dict = {"id": item, "image": f"images/{item}.png", "patient": f"syn{patient:05d}",
                 "eye": side, "abnormal": eye.labels.abnormal, "dr_grade": eye.labels.dr_grade,
                 "dme": eye.labels.dme}
    write_bytes(out / row["image"], _png(eye.image))
    for key in MASK_KEYS:
        rel = f"masks/{item}_{key}.png"
        write_bytes(out / rel, _png(eye.masks[key].astype(np.uint8) * 255, bilevel=True))
        row[f"mask_{key}"] = rel
    if with_oct:
        o = render_oct(eye, rng, shape=oct_shape, map_size=map_size, ir_size=ir_size,
                       ir_field_mm=ir_field_mm)
        write_bytes(out / "oct" / f"{item}.npy", _npy(o.volume))
        write_bytes(out / "oct" / f"{item}_boundaries.npy", _npy(o.boundaries))
        write_bytes(out / "thickness" / f"{item}.npy", _npy(o.thickness_map))
        write_bytes(out / "ir" / f"{item}.png", _png(o.ir_image))
        write_text(out / "oct" / f"{item}.json",
                   json.dumps(_oct_sidecar(o, eye, item, ir_field_mm), indent=1))
        row.update(oct_volume=f"oct/{item}.npy", thickness_map=f"thickness/{item}.npy",
                   ir_image=f"ir/{item}.png")
    a = eye.anatomy
    row.update(dataset="synthetic", od_x=round(a.od_centre[0], 3), od_y=round(a.od_centre[1], 3),
               fovea_x=round(a.fovea[0], 3), fovea_y=round(a.fovea[1], 3),
               pixel_mm=round(a.pixel_mm, 6))
    return row


def _progress(total: int) -> object | None:
    """A rich progress bar when stderr is a terminal and RETINASSL_PROGRESS is not "0"."""
    if os.environ.get("RETINASSL_PROGRESS") == "0" or not sys.stderr.isatty():
        return None
    from rich.console import Console
    from rich.progress import Progress

    return Progress(console=Console(stderr=True), transient=True)


def _run(jobs: list[tuple], workers: int) -> Iterator[dict]:
    if workers <= 1:
        for job in jobs:
            yield _make_item(job)
        return
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        yield from pool.map(_make_item, jobs, chunksize=max(1, len(jobs) // (8 * workers)))


def generate_dataset(out_dir: str | Path, n_images: int, size: int = 512, prevalence: float = 0.5,
                     seed: int = 0, with_oct: bool = False,
                     splits: Sequence[float] = (0.6, 0.2, 0.2), workers: int = 1,
                     oct_shape: tuple[int, int, int] = DEFAULT_SHAPE, map_size: int = 128,
                     ir_size: int = 256, ir_field_mm: float = 8.8,
                     manifest_name: str = "manifest.csv") -> Manifest:
    """Write a synthetic dataset (layout in the module docstring) and return its manifest.

    Args:
        out_dir: dataset directory (created; files of the same names are replaced atomically).
        n_images: number of fundus images (two per patient).
        size: fundus image side in pixels.
        prevalence: probability that a patient (and so both eyes) has diabetic retinopathy.
        seed: the seed of everything.
        with_oct: also write OCT volumes, boundaries, thickness maps and infrared images.
        splits: train/val/test fractions, assigned per patient, stratified by disease status.
        workers: processes (1 = in this process); the output does not depend on it.
        oct_shape: ``(n_bscans, depth, width)`` of the OCT volumes.
        map_size: side of the thickness maps; ``ir_size``: side of the infrared images;
            ``ir_field_mm``: their common field width (mm, centred on the fovea).
        manifest_name: file name of the manifest CSV inside ``out_dir``.

    Returns:
        The validated :class:`Manifest` (also saved as ``out_dir/manifest_name``).
    """
    if n_images < 1:
        raise ValueError(f"n_images must be at least 1, got {n_images}")
    if not 0.0 <= prevalence <= 1.0:
        raise ValueError(f"prevalence must be in [0, 1], got {prevalence}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n_patients = (n_images + 1) // 2
    jobs = [(str(out), seed, k // 2, k % 2, size, prevalence, with_oct, tuple(oct_shape), map_size,
             ir_size, ir_field_mm) for k in range(n_images)]
    sick = [_patient_plan(seed, p, prevalence)[1][0] > 0 for p in range(n_patients)]
    split_of = _split_patients(sick, splits, seed)
    rows: list[dict] = []
    bar = _progress(n_images)
    if bar is not None:
        with bar:
            task = bar.add_task("synthetic eyes", total=n_images)
            for row in _run(jobs, workers):
                rows.append(row)
                bar.advance(task)
    else:
        rows = list(_run(jobs, workers))
    for row in rows:
        row["split"] = split_of[int(row["patient"][3:])]
    params = {"generator": "retinassl.data.synthetic", "generator_version": GENERATOR_VERSION,
              "layout_version": 1, "seed": seed,
              "n_images": n_images, "size": size, "prevalence": prevalence, "with_oct": with_oct,
              "splits": list(splits), "oct_shape": list(oct_shape), "map_size": map_size,
              "ir_size": ir_size, "ir_field_mm": ir_field_mm,
              "thickness_map_undefined_value": 0.0}
    write_text(out / "dataset.json", json.dumps(params, indent=1) + "\n")
    manifest = Manifest.from_records(rows, out, name=str(out / manifest_name))
    manifest.save(out / manifest_name)
    log.info("wrote %d synthetic eyes to %s", n_images, out)
    return manifest
