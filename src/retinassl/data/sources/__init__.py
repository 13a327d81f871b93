"""Dataset sources: functions that turn a dataset as distributed into a validated Manifest.

Each source is a plain function ``loader(**options) -> Manifest`` whose paths are relative to the
dataset folder it was given; :data:`SOURCES` maps the names a config uses (``data.source``) to them,
and :func:`load_source` calls one by name with the config's ``data.options``.
"""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Callable
from typing import Any

from pydantic import TypeAdapter, ValidationError

from retinassl.errors import ConfigError
from retinassl.data.manifest import Manifest
from retinassl.data.sources.drive import load_drive
from retinassl.data.sources.eyepacs import load_eyepacs, read_eyepacs_labels
from retinassl.data.sources.generic import load_csv, load_folder
from retinassl.data.sources.glob_pattern import load_glob
from retinassl.data.sources.idrid import idrid_dr_pool, idrid_ssl_gan_set, load_idrid
from retinassl.data.sources.mx_fundus_oct import load_mx_fundus_oct
from retinassl.data.sources.rfmid import load_rfmid, read_rfmid_labels
from retinassl.data.sources.stare import load_stare
from retinassl.data.sources.synthetic import load_synthetic

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
    check_option_types(name, loader, options)
    return loader(**options)


def _type_name(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) if isinstance(annotation, type) else None
    text = text or str(annotation)
    return re.sub(r"\b(pathlib|typing|collections\.abc)\.", "", text)


def check_option_types(name: str, loader: Callable[..., Manifest], options: dict[str, Any]) -> None:
    """Check every option against the loader's type hints (lax: ``"5"`` is an int, a str is a
    path), so that ``data.options={csv: 42}`` is a ConfigError naming the option, not a
    ``TypeError`` deep inside ``pathlib``.

    Raises:
        ConfigError: naming the source, the option (``data.options.<key>``), the expected type and
            the value given.
    """
    try:
        hints = typing.get_type_hints(loader)
    except Exception:  # noqa: BLE001  (unresolvable hints: nothing to check against)
        return
    parameters = inspect.signature(loader).parameters
    for key, value in options.items():
        parameter = parameters.get(key)
        if parameter is None or parameter.kind is inspect.Parameter.VAR_KEYWORD or key not in hints:
            continue
        try:
            adapter = TypeAdapter(hints[key])
            try:
                adapter.validate_python(value)
            except ValidationError:
                if not isinstance(value, str):
                    raise
                adapter.validate_python([value])  # a lone name where a list is expected: as before
        except ValidationError:
            raise ConfigError(f"data source {name!r}: option {key!r} (data.options.{key}) must be "
                              f"{_type_name(hints[key])}, got {value!r}") from None
        except Exception:  # noqa: BLE001  (a hint pydantic cannot check: leave it to the loader)
            continue


__all__ = ["SOURCES", "load_source", "load_idrid", "idrid_ssl_gan_set", "idrid_dr_pool",
           "load_drive", "load_stare", "load_rfmid", "read_rfmid_labels", "load_eyepacs",
           "read_eyepacs_labels", "load_folder", "load_csv", "load_glob", "load_synthetic"]
