"""DRIVE, Digital Retinal Images for Vessel Extraction (Staal et al., IEEE TMI 23(4):501-509, 2004).

40 colour fundus photographs (565x584 TIFF) from a Dutch DR screening programme, with manual vessel
segmentations and field-of-view masks. Official layout (file names as distributed)::

    training/images/21_training.tif ... 40_training.tif
    training/1st_manual/21_manual1.gif               vessels, first observer
    training/mask/21_training_mask.gif               field of view
    test/images/01_test.tif ... 20_test.tif
    test/1st_manual/01_manual1.gif                   vessels, first observer (the reference)
    test/2nd_manual/01_manual2.gif                   vessels, second observer (palette GIF)
    test/mask/01_test_mask.gif                       field of view

Manifest: ids ``drive-train-21`` / ``drive-test-01``, the official 20/20 split, ``mask_vessels``,
``mask_vessels_2`` (test only), ``mask_fov``; no labels, no patient information (each image is its
own patient) and no eye.

Cite: Staal J., Abramoff M.D., Niemeijer M., Viergever M.A., van Ginneken B., "Ridge-based vessel
segmentation in color images of the retina", IEEE Transactions on Medical Imaging 23(4), 2004.
"""

from __future__ import annotations

import re
from pathlib import Path

from retinassl.errors import DataError
from retinassl.data.manifest import Manifest
from retinassl.data.sources.files import list_images, relative

DATASET = "drive"
SPLIT_FOLDERS: dict[str, str] = {"train": "training", "test": "test"}


def _mask(folder: Path, name: str, root: Path, image: Path, required: bool) -> str:
    path = folder / name
    if path.is_file():
        return relative(path, root)
    if required:
        raise DataError(f"DRIVE image has no mask {path.relative_to(root)}", path=image)
    return ""


def load_drive(root: str | Path) -> Manifest:
    """DRIVE: 20 training + 20 test images with vessel masks (2nd observer on test) and FOV masks.

    Args:
        root: the DRIVE folder holding ``training/`` and ``test/``.

    Raises:
        DataError: a missing folder, an image name that is not ``NN_training`` / ``NN_test``, or a
            missing first-observer or FOV mask.
    """
    root = Path(root)
    records = []
    for split, folder_name in SPLIT_FOLDERS.items():
        folder = root / folder_name
        if not (folder / "images").is_dir():
            raise DataError(f"DRIVE {folder_name}/images folder is missing", path=folder / "images")
        for image in list_images(folder / "images"):
            match = re.fullmatch(rf"(\d+)_{folder_name}\.tiff?", image.name)
            if match is None:
                raise DataError(f"not a DRIVE image name (expected NN_{folder_name}.tif)", path=image)
            number = match.group(1)
            records.append({
                "id": f"{DATASET}-{split}-{number}", "image": relative(image, root),
                "patient": f"{DATASET}-{split}-{number}", "eye": "", "split": split,
                "dataset": DATASET,
                "mask_vessels": _mask(folder / "1st_manual", f"{number}_manual1.gif", root, image,
                                      True),
                "mask_vessels_2": _mask(folder / "2nd_manual", f"{number}_manual2.gif", root, image,
                                        False),
                "mask_fov": _mask(folder / "mask", f"{number}_{folder_name}_mask.gif", root, image,
                                  True)})
    return Manifest.from_records(records, root, name=DATASET)
