"""``read_volume(path)``: any supported OCT export -> :class:`~retinassl.oct.volume.OCTVolume`.

Dispatch: a DICOM file (by its preamble, whatever the extension) -> :mod:`.dicom`; a folder ->
its Ophthalmic Tomography DICOM (the infrared image is found beside it); ``.vol`` / ``.xml`` ->
:mod:`.heyex`; ``.npy`` / ``.tif`` / ``.tiff`` with a JSON sidecar -> :mod:`.stack`; a single
B-scan image (``.jpg`` / ``.jpeg`` / ``.png`` / ``.bmp``, or a ``.tif`` without a sidecar) ->
:mod:`.bscan_images` (pixel spacing as stated by ``axial_um`` / ``lateral_um``, else unknown).
"""

from __future__ import annotations

import struct
from pathlib import Path

from retinassl.errors import DataError
from retinassl.oct.volume import OCTVolume

FORMATS = ("DICOM (.dcm or a folder), HEYEX .vol, HEYEX .xml, .npy/.tif stack with a .json sidecar, "
           "single B-scan image (.jpg/.png/.bmp/.tif)")


def _oct_in_folder(folder: Path) -> Path:
    from retinassl.oct.dicom import read_dataset, is_photograph, is_dicom

    found = []
    for p in sorted(folder.iterdir()):
        if p.is_file() and is_dicom(p):
            head = read_dataset(p, header_only=True)
            if not is_photograph(head) or int(getattr(head, "NumberOfFrames", 1) or 1) > 1:
                found.append(p)
    if len(found) != 1:
        raise DataError(f"expected one OCT DICOM file in the folder, found {len(found)}", path=folder)
    return found[0]


def read_volume(path: str | Path, infrared: str | Path | None = None, *,
                axial_um: float | None = None, lateral_um: float | None = None) -> OCTVolume:
    """Read an OCT volume in any supported format (see the module docstring).

    Args:
        path: the export.
        infrared: for DICOM, the infrared image file (default: found beside the OCT file).
        axial_um, lateral_um: for a single B-scan image, its stated pixel spacing (micrometres per
            pixel; both or neither). Ignored for formats that carry their own spacing.

    Raises:
        DataError: missing file, unknown format, or bad content (naming the file).
    """
    path = Path(path)
    if path.is_dir():
        path = _oct_in_folder(path)
    if not path.is_file():
        raise DataError("file does not exist", path=path)
    from retinassl.oct.dicom import is_dicom, read_dicom_volume

    suffix = path.suffix.lower()
    if is_dicom(path) or suffix == ".dcm":            # the latter raises "not a DICOM file"
        try:
            return read_dicom_volume(path, infrared)
        except (ValueError, TypeError, AttributeError, KeyError, IndexError, struct.error) as exc:
            # pydicom decodes elements lazily: a malformed value surfaces wherever it is first read
            raise DataError(f"malformed DICOM ({type(exc).__name__}: {exc})", path=path) from None
    if suffix == ".vol":
        from retinassl.oct.heyex import read_heyex_vol

        return read_heyex_vol(path)
    if suffix == ".xml":
        from retinassl.oct.heyex import read_heyex_xml

        return read_heyex_xml(path)
    if suffix in (".jpg", ".jpeg", ".png", ".bmp") or (
            suffix in (".tif", ".tiff") and not path.with_suffix(".json").is_file()):
        from retinassl.oct.bscan_images import read_bscan_images

        return read_bscan_images(path, axial_um, lateral_um)
    if suffix in (".npy", ".tif", ".tiff"):
        from retinassl.oct.stack import read_stack_volume

        return read_stack_volume(path)
    raise DataError(f"unknown OCT format {suffix!r}; supported: {FORMATS}", path=path)
