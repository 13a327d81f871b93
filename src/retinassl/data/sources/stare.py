"""STARE, STructured Analysis of the REtina: the 20 vessel-annotated images (Hoover et al., IEEE TMI
19(3):203-210, 2000).

Layout of the official archives (700x605 gzipped PPM images)::

    stare-images/im0002.ppm.gz ...        colour fundus images
    labels-ah/im0002.ah.ppm.gz ...        Adam Hoover's vessel labels (0/255)
    labels-vk/im0002.vk.ppm.gz ...        Valentina Kouznetsova's labels (second observer; optional)

Some copies of STARE also hold images that were *resized* by whoever redistributed them (e.g.
``resized_512_by_repo_author/{stare-images,labels-ah}/`` in ``../shared/data/stare``); they are
excluded by default and, when included, flagged by ``resized=1``. Their labels were resized with
interpolation: about 5 % of the pixels are grey (1-254), so :func:`~retinassl.data.imageio.read_mask`
refuses them as not binary; threshold them (e.g. at 128) before use.

Manifest: ids ``stare-im0002``, ``mask_vessels`` (ah), ``mask_vessels_2`` (vk, when present), no
split (STARE has no official one), no labels. STARE has **no FOV masks**: ``mask_fov`` is left
empty and the preprocessing computes a field of view by thresholding.

Cite: Hoover A., Kouznetsova V., Goldbaum M., "Locating blood vessels in retinal images by piecewise
threshold probing of a matched filter response", IEEE Transactions on Medical Imaging 19(3), 2000.
"""

from __future__ import annotations

from pathlib import Path

from retinassl.errors import DataError
from retinassl.data.manifest import Manifest
from retinassl.data.sources.files import list_images, relative, stem

DATASET = "stare"
RESIZED_FOLDER = "resized_512_by_repo_author"


def _rows(root: Path, base: Path, resized: int) -> list[dict]:
    images = base / "stare-images"
    if not images.is_dir():
        raise DataError("STARE stare-images folder is missing", path=images)
    rows = []
    for image in list_images(images):
        name = stem(image.name)
        labels = [base / f"labels-{who}" / f"{name}.{who}{image.name[len(name):]}"
                  for who in ("ah", "vk")]
        if not labels[0].is_file():
            raise DataError(f"STARE image has no vessel label {labels[0].relative_to(root)}",
                            path=image)
        rows.append({"id": f"{DATASET}-{name}", "image": relative(image, root),
                     "patient": f"{DATASET}-{name}", "eye": "", "split": "", "dataset": DATASET,
                     "mask_vessels": relative(labels[0], root),
                     "mask_vessels_2": relative(labels[1], root) if labels[1].is_file() else "",
                     "mask_fov": "", "resized": resized})
    return rows


def load_stare(root: str | Path, include_resized: bool = False) -> Manifest:
    """STARE: the vessel-annotated images with Hoover's labels (no split, no FOV masks).

    Args:
        root: the STARE folder holding ``stare-images/`` and ``labels-ah/``.
        include_resized: also load ``resized_512_by_repo_author/`` (flagged ``resized=1``; not the
            original resolution, so keep them out of benchmark numbers).

    Raises:
        DataError: a missing folder or an image without an ``ah`` label.
    """
    root = Path(root)
    rows = _rows(root, root, 0)
    if include_resized:
        if not (root / RESIZED_FOLDER).is_dir():
            raise DataError(f"include_resized is set but {RESIZED_FOLDER}/ does not exist",
                            path=root)
        rows += _rows(root, root / RESIZED_FOLDER, 1)
    return Manifest.from_records(rows, root, name=DATASET)
