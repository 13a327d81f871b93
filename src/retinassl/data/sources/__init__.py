"""Dataset sources: functions that turn a dataset as distributed into a validated Manifest.

Each source is a plain function ``loader(**options) -> Manifest`` whose paths are relative to the
dataset folder it was given; :data:`SOURCES` maps the names a config uses (``data.source``) to them,
and :func:`load_source` calls one by name with the config's ``data.options``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from ...errors import ConfigError
from ..manifest import Manifest
from .drive import load_drive
from .eyepacs import load_eyepacs, read_eyepacs_labels
from .generic import load_csv, load_folder, load_glob
from .idrid import idrid_dr_pool, idrid_ssl_gan_set, load_idrid
from .mx_fundus_oct import load_mx_fundus_oct
from .rfmid import load_rfmid, read_rfmid_labels
from .stare import load_stare
from .synthetic import load_synthetic

SOURCES: dict[str, Callable[..., Manifest]] = {
    "synthetic": load_synthetic,
    "idrid": load_idrid,
    "drive": load_drive,
    "stare": load_stare,
    "rfmid": load_rfmid,
    "eyepacs": load_eyepacs,
    "mx_fundus_oct": load_mx_fundus_oct,
    "folder": load_folder,
    "csv": load_csv,
    "glob": load_glob,
}


def load_source(name: str, **options: Any) -> Manifest:
    """Build the manifest of source ``name`` with ``options`` (the loader's keyword arguments).

    Raises:
        ConfigError: an unknown source name (the message lists the known ones) or an option the
            loader does not take.
    """
    loader = SOURCES.get(name)
    if loader is None:
        raise ConfigError(f"unknown data source {name!r}; known sources: {', '.join(sorted(SOURCES))}")
    try:
        inspect.signature(loader).bind(**options)
    except TypeError as exc:
        raise ConfigError(f"data source {name!r}: {exc}; its options are "
                          f"{list(inspect.signature(loader).parameters)}") from None
    return loader(**options)


__all__ = ["SOURCES", "load_source", "load_idrid", "idrid_ssl_gan_set", "idrid_dr_pool",
           "load_drive", "load_stare", "load_rfmid", "read_rfmid_labels", "load_eyepacs",
           "read_eyepacs_labels", "load_folder", "load_csv", "load_glob", "load_synthetic"]
