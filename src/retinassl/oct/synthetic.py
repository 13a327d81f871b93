"""A synthetic OCT (:func:`retinassl.data.synthetic_oct.render_oct`) as an
:class:`~retinassl.oct.volume.OCTVolume`, with its exact ground truth kept alongside.

The generator places B-scans in fundus-image coordinates; an OCT export places them on its
infrared image. :func:`synthetic_volume` converts the positions (and the fovea) to infrared-image
pixels through the inverse of ``ir_affine``, so the volume looks exactly like a reader's output:
it can be written as DICOM, segmented, and turned into a thickness map on the infrared field, and
every number can be compared with the truth.
"""

from __future__ import annotations

import numpy as np

from retinassl.data.synthetic_eye import SyntheticEye
from retinassl.data.synthetic_fundus import render_eye
from retinassl.data.synthetic_oct import BOUNDARY_NAMES, DEFAULT_SHAPE, SyntheticOCT, render_oct
from retinassl.oct.volume import OCTVolume


def fundus_to_localizer(points: np.ndarray, ir_affine: np.ndarray) -> np.ndarray:
    """Fundus ``(x, y)`` points ``(..., 2)`` -> infrared-image pixel coordinates."""
    pts = np.asarray(points, dtype=np.float64)
    inv = np.linalg.inv(ir_affine[:, :2])
    return (pts - ir_affine[:, 2]) @ inv.T


def synthetic_volume(o: SyntheticOCT, eye: SyntheticEye, acquisition_date: str = "2020-01-01",
                     with_layers: bool = True) -> OCTVolume:
    """The OCTVolume of a rendered synthetic OCT (positions on its infrared image).

    Args:
        o: the rendered OCT.
        eye: the eye it was rendered from (pixel size and fovea).
        acquisition_date: date to record.
        with_layers: keep the exact boundaries as the volume's layer annotations.
    """
    ir_mm = float(o.ir_affine[0, 0]) * eye.anatomy.pixel_mm
    fovea = fundus_to_localizer(np.asarray(eye.anatomy.fovea), o.ir_affine)
    layers = {name: o.boundaries[k] for k, name in enumerate(BOUNDARY_NAMES)} if with_layers else {}
    volume = OCTVolume(
        bscans=o.volume, spacing_mm=o.spacing_mm,
        bscan_start=fundus_to_localizer(o.bscan_start, o.ir_affine),
        bscan_end=fundus_to_localizer(o.bscan_end, o.ir_affine), localizer=o.ir_image,
        localizer_spacing_mm=(ir_mm, ir_mm), laterality=o.eye, acquisition_date=acquisition_date,
        layers=layers, fovea=(float(fovea[0]), float(fovea[1])), format="synthetic")
    return volume.validate()


def synthetic_volumes(n: int, seed: int, shape: tuple[int, int, int] = DEFAULT_SHAPE,
                      fundus_size: int = 256, ir_size: int = 256, prevalence: float = 0.6,
                      with_truth: bool = False) -> list[OCTVolume] | list[tuple[OCTVolume, SyntheticOCT]]:
    """``n`` synthetic OCT volumes (alternating right/left eyes, DR with probability
    ``prevalence``, so some have macular oedema and fluid), each from its own seed stream.

    Returns:
        the volumes (with their exact boundaries as layers), or ``(volume, truth)`` pairs.
    """
    out: list = []
    for k in range(n):
        rng = np.random.default_rng(np.random.SeedSequence([seed, 5, k]))
        eye = render_eye(rng, fundus_size, eye="RL"[k % 2], prevalence=prevalence)
        o = render_oct(eye, rng, shape=shape, ir_size=ir_size)
        volume = synthetic_volume(o, eye)
        out.append((volume, o) if with_truth else volume)
    return out
