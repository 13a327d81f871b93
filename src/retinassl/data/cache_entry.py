"""One entry of the preprocessed-image cache (:mod:`retinassl.data.cache`, which builds them): its
memory-mapped image, FOV and masks, its geometry and pixel statistics, each array verified against
the record ``entry.json`` keeps of it (shape, dtype, byte size), so a truncated or replaced ``.npy``
file is a :class:`~retinassl.errors.DataError` naming the entry and its image, never a raw numpy
error.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from retinassl.data.field_of_view import Geometry
from retinassl.errors import DataError


def npy_size(shape: Sequence[int], dtype: np.dtype | str) -> int:
    """Bytes of the ``.npy`` file :func:`numpy.save` writes for a C-ordered array of ``shape`` and
    ``dtype`` (header included)."""
    dtype = np.dtype(dtype)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                  "fortran_order": False, "shape": tuple(shape)})
    return header.tell() + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize


def array_record(array: np.ndarray) -> dict:
    """What ``entry.json`` records of an array file: shape, dtype and the file's byte size."""
    return {"shape": list(array.shape), "dtype": array.dtype.str,
            "bytes": npy_size(array.shape, array.dtype)}


def array_problem(path: Path, record: dict | None) -> str | None:
    """Why the ``.npy`` file ``path`` is not the array ``record`` describes (None when intact).

    With a record, only the file's size is compared (a ``stat``); without one (entries made before
    records), the file's own header is read and its size compared with what the header announces.
    """
    try:
        size = path.stat().st_size
    except OSError:
        return "is missing"
    if record is not None:
        return None if size == record["bytes"] else f"has {size} bytes, {record['bytes']} expected"
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, _, dtype = read_header(fh)
            header = fh.tell()
    except (OSError, ValueError, EOFError, SyntaxError) as exc:
        return f"has no readable .npy header ({exc})"
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    return None if size == expected else f"has {size} bytes, {expected} expected for {shape} {dtype}"


@dataclass(frozen=True)
class CacheEntry:
    """One preprocessed image (and its masks) in the cache.

    Attributes:
        directory: the entry's folder.
        masks: manifest column -> mask file name.
        source: the image file the entry was made from (named when the entry is found corrupt).
    """

    directory: Path
    masks: dict[str, str] = field(default_factory=dict)  # manifest column -> mask file name
    source: str = ""

    def _load(self, name: str, record: dict | None = None) -> np.ndarray:
        """Memory-map ``name``, verifying it against ``entry.json``'s record of it."""
        path = self.directory / name
        problem = array_problem(path, record if record is not None else self._records().get(name))
        array = None
        if problem is None:
            try:
                array = np.load(path, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError, EOFError) as exc:
                problem = f"cannot be read ({exc})"
        if problem is not None:
            of = f" (made from {self.source})" if self.source else ""
            raise DataError(f"cache entry{of} is corrupt: {name} {problem}; run `retinassl data "
                            f"prepare` (or the command again) to rebuild it", path=path)
        return array

    def _records(self) -> dict[str, dict]:
        try:
            return self._meta().get("arrays", {})
        except (OSError, ValueError) as exc:
            of = f" (made from {self.source})" if self.source else ""
            raise DataError(f"cache entry{of} has no readable entry.json ({exc}); run `retinassl "
                            f"data prepare` to rebuild it", path=self.directory) from None

    def image(self) -> np.ndarray:
        """``(S, S, C)`` uint8, memory-mapped."""
        return self._load("image.npy")

    def fov(self) -> np.ndarray:
        """``(S, S)`` bool, memory-mapped."""
        return self._load("fov.npy")

    def mask(self, column: str) -> np.ndarray | None:
        """``(S, S)`` bool for a mask column, or None when the row has no such mask."""
        name = self.masks.get(column)
        if name is None:
            return None
        return self._load(name, self._records().get("fov.npy"))  # a mask is shaped like the FOV

    def _meta(self) -> dict:
        return json.loads((self.directory / "entry.json").read_text())

    @property
    def geometry(self) -> Geometry:
        return Geometry.from_json(json.dumps(self._meta()["geometry"]))

    @property
    def stats(self) -> dict[str, list[float] | float]:
        """Pixel statistics inside the FOV: ``max`` (over channels), per-channel ``mean``, ``std``."""
        return self._meta()["stats"]
