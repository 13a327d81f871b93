"""Single B-scan image files (JPEG/PNG/TIFF/BMP exports, one B-scan per file) as an
:class:`~retinassl.oct.volume.OCTVolume`.

Many sources publish OCT as screenshots or exports of single B-scans (e.g. one JPEG per eye and
visit) without DICOM metadata: no pixel spacing, no B-scan positions on a fundus image. This
reader stacks one or more such images of one eye into a volume:

- each file must hold one greyscale B-scan, row 0 on the vitreous side (colour files are converted
  to luminance; a multi-page TIFF is a stack: use :mod:`retinassl.oct.stack` with a sidecar);
- all images of one call must have the same size (they are B-scans of one eye, not resampled);
- the pixel spacing is what the user states (``axial_um`` and ``lateral_um``, micrometres per
  pixel, both or neither); it is recorded in the volume (``spacing_mm``, ``spacing_stated``) and
  in :meth:`~retinassl.oct.volume.OCTVolume.describe`. Without it, ``spacing_mm`` is NaN,
  ``spacing_stated`` False, thickness is measured in pixels, and a warning says so;
- the images are separate B-scans, not a raster: there are no positions (``bscan_start`` None)
  and the between-B-scan spacing is a placeholder equal to the lateral spacing (unused);
- a patient identifier, if given, is only hashed (:mod:`retinassl.oct.identity`); the file names
  are kept in ``source`` for error messages only.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from retinassl.errors import ConfigError, DataError
from retinassl.oct.identity import patient_key
from retinassl.oct.volume import OCTVolume, laterality_code

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
UNKNOWN_SPACING_WARNING = ("pixel spacing unknown: thickness is in pixels, not micrometres (state "
                           "the axial and lateral micrometres per pixel to measure it in micrometres)")


def _check_spacing(axial_um: float | None, lateral_um: float | None) -> bool:
    if (axial_um is None) != (lateral_um is None):
        raise ConfigError("state both the axial and the lateral pixel spacing (micrometres per "
                          f"pixel) or neither; got axial_um={axial_um}, lateral_um={lateral_um}")
    if axial_um is None:
        return False
    for name, value in (("axial_um", axial_um), ("lateral_um", lateral_um)):
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ConfigError(f"{name} must be a positive number of micrometres per pixel, got {value!r}")
    return True


def _read_one(path: Path) -> np.ndarray:
    from PIL import Image

    from retinassl.data.imageio import read_image

    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise DataError(f"not a B-scan image file (expected one of {', '.join(IMAGE_SUFFIXES)})",
                        path=path)
    if path.suffix.lower() in (".tif", ".tiff") and path.is_file():
        try:
            with Image.open(path) as im:
                pages = int(getattr(im, "n_frames", 1))
        except (OSError, ValueError):
            pages = 1                                  # read_image names the problem
        if pages > 1:
            raise DataError(f"a multi-page TIFF ({pages} pages) is a B-scan stack with no spacing "
                            f"sidecar: expected {path.with_suffix('.json').name} beside it (JSON with "
                            f"spacing_mm, see retinassl.oct.stack)", path=path)
    return read_image(path, grayscale=True).array


def read_bscan_images(paths: str | Path | Sequence[str | Path], axial_um: float | None = None,
                      lateral_um: float | None = None, *, eye: str = "",
                      patient_id: str | None = None) -> OCTVolume:
    """Read one or more single-B-scan image files of one eye.

    Args:
        paths: one image file or a list of them (JPEG, PNG, TIFF, BMP), in B-scan order.
        axial_um, lateral_um: micrometres per pixel along the A-scan (rows) and across A-scans
            (columns), as stated by the user; both or neither.
        eye: laterality (R, L, OD, OS, ...), optional.
        patient_id: read only to be hashed into ``patient_key``, optional.

    Returns:
        :class:`OCTVolume` with ``bscans`` ``(n_images, depth, width)`` uint8, ``format``
        ``"bscan-images"``; ``spacing_mm = (lateral, axial, lateral)`` mm when stated, else NaN with
        ``spacing_stated`` False and :data:`UNKNOWN_SPACING_WARNING` in ``warnings``.

    Raises:
        DataError: a missing, unreadable or multi-page file, or images of different sizes (naming
            the file).
        ConfigError: only one of the two spacings, or a non-positive one.
    """
    items = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
    if not items:
        raise ConfigError("no B-scan image files given")
    stated = _check_spacing(axial_um, lateral_um)
    arrays = []
    for path in items:
        arr = _read_one(path)
        if arrays and arr.shape != arrays[0].shape:
            raise DataError(f"B-scan image of size {arr.shape[1]}x{arr.shape[0]} differs from the "
                            f"first image's {arrays[0].shape[1]}x{arrays[0].shape[0]} (images of one "
                            f"eye must share a size)", path=path)
        arrays.append(arr)
    warnings: list[str] = []
    if stated:
        spacing = (lateral_um / 1000.0, axial_um / 1000.0, lateral_um / 1000.0)  # type: ignore[operator]
    else:
        spacing = (math.nan, math.nan, math.nan)
        warnings.append(UNKNOWN_SPACING_WARNING)
        logger.warning("%s (%d B-scan image(s))", UNKNOWN_SPACING_WARNING, len(items))
    volume = OCTVolume(bscans=np.stack(arrays), spacing_mm=spacing, laterality=laterality_code(eye),
                       patient_key=patient_key(patient_id) if patient_id else "",
                       format="bscan-images", warnings=warnings, source=str(items[0]),
                       spacing_stated=stated)
    return volume.validate()
