"""``retinassl predict`` for OCT layer models (saved kind ``layer-model``, from ``retinassl oct
train-seg``): the layer boundaries and the retinal thickness of every B-scan of each volume.

INPUTS are OCT exports in any format :func:`retinassl.oct.read.read_volume` reads (DICOM files or
folders, HEYEX ``.vol``/``.xml``, ``.npy``/``.tif`` stacks with a sidecar, single B-scan images) or
glob patterns. Exports are often named after the patient, so each volume's outputs carry a salted
label of its path (``vol-`` + 12 hex digits, :func:`~retinassl.oct.identity.private_label`, the
label every ``oct`` command uses) and never its file or folder name; the log is redacted likewise.

Per volume ``<id>``:

- ``<id>-boundaries.npy``: ``(K, n_bscans, width)`` float32 boundary rows in the volume's own B-scan
  grid (NaN = undefined), in the order of the model's ``boundaries`` (as ``oct segment`` writes);
- ``<id>-thickness.npy``: ``(n_bscans, width)`` float32 thickness per A-scan between the first and
  the last boundary (ILM to BM by default): micrometres, or pixels when the export states no
  spacing (``thickness_unit``);
- ``<id>-bscan.png``: the central B-scan with its boundaries;
- one row per B-scan in ``predictions.csv``: ``id, bscan``, mean / min / max thickness, the
  undefined fraction of its A-scans (and ``problem`` for an unreadable export with ``skip_bad``).
"""

from __future__ import annotations

import glob
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from retinassl.atomic import write_text, write_with
from retinassl.errors import ConfigError, DataError
from retinassl.jobs.predict import fresh_output
from retinassl.progress import track

log = logging.getLogger(__name__)


def volume_inputs(inputs: Sequence[str]) -> list[Path]:
    """The exports named by ``inputs``: paths as given (a folder is one DICOM export) and glob
    patterns expanded.

    Raises:
        ConfigError: nothing given, or a pattern matches nothing.
    """
    if not inputs:
        raise ConfigError("give OCT exports (DICOM files or folders, .vol, .xml, .npy/.tif stacks) or "
                          "glob patterns")
    paths: list[Path] = []
    for item in inputs:
        if not Path(item).exists() and any(ch in str(item) for ch in "*?["):
            found = sorted(Path(p) for p in glob.glob(str(item), recursive=True)
                           if not p.lower().endswith(".json"))
            if not found:
                raise ConfigError(f"the pattern {item!r} matches no file")
            paths += found
        else:
            paths.append(Path(item))
    return list(dict.fromkeys(paths))


def predict_layers(model: str | Path, volumes: Sequence[str | Path], out: str | Path, *,
                   skip_bad: bool = False) -> Path:
    """Segment every volume with a saved layer model (see the module docstring); returns
    ``<out>/predictions.csv``, written atomically once every volume is done.

    Raises:
        DataError: an export cannot be read (without ``skip_bad``; the message names it by label).
    """
    from retinassl.figures.oct import bscan_png
    from retinassl.methods.oct_layers import load_layer_model
    from retinassl.oct.bscan_thickness import thickness_profile
    from retinassl.oct.identity import private_label, redact, redact_log_handlers, register_private
    from retinassl.oct.read import read_volume

    out = fresh_output(Path(out))
    # the exports, and the sidecars a stack's errors name (``scan.npy`` -> ``scan.json``)
    register_private([str(v) for v in volumes] + [str(Path(v).with_suffix(".json")) for v in volumes], "vol")
    redact_log_handlers()
    layer_model = load_layer_model(model)
    names = layer_model.boundaries
    rows: list[dict] = []
    for path in track(list(volumes), description="segmenting"):
        ident = private_label(str(Path(path).resolve()), "vol")
        try:
            volume = read_volume(path)
        except DataError as exc:
            if not skip_bad:
                raise DataError(redact(str(exc))) from None
            log.warning("%s: skipped (%s)", ident, redact(str(exc)))
            rows.append({"id": ident, "problem": redact(str(exc))})
            continue
        boundaries = layer_model.segment(volume)
        stack = np.stack([boundaries[n] for n in names]).astype(np.float32)
        axial_um = volume.spacing_mm[1] * 1000.0 if volume.spacing_stated else None
        thickness = thickness_profile(boundaries[names[0]], boundaries[names[-1]], axial_um)
        write_with(out / f"{ident}-boundaries.npy", lambda fh, a=stack: np.save(fh, a, allow_pickle=False))
        write_with(out / f"{ident}-thickness.npy", lambda fh, a=thickness: np.save(fh, a, allow_pickle=False))
        mid = volume.shape[0] // 2
        bscan_png(volume.bscans[mid], {n: boundaries[n][mid] for n in names}, out / f"{ident}-bscan.png",
                  title=f"{ident}, B-scan {mid}")
        undefined = np.isnan(stack).any(axis=0)                                  # (n_bscans, width)
        for i, profile in enumerate(thickness):
            known = profile[np.isfinite(profile)]
            rows.append({"id": ident, "bscan": i,
                         "mean_thickness": float(known.mean()) if known.size else np.nan,
                         "min_thickness": float(known.min()) if known.size else np.nan,
                         "max_thickness": float(known.max()) if known.size else np.nan,
                         "thickness_unit": "um" if axial_um is not None else "pixels",
                         "thickness_between": f"{names[0]}-{names[-1]}",
                         "undefined_fraction": float(undefined[i].mean()),
                         "boundaries_npy": f"{ident}-boundaries.npy", "thickness_npy": f"{ident}-thickness.npy"})
    table = pd.DataFrame(rows)
    path = out / "predictions.csv"
    write_text(path, table.to_csv(index=False))
    log.info("layer boundaries of %d volume(s), %d B-scan(s) -> %s", len(volumes),
             sum("bscan" in r for r in rows), path)
    return path
