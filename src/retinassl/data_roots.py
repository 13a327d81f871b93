"""Where the datasets are: the data root of the packaged presets.

The presets name their datasets under a data root that is not known in advance:
``root: $RETINASSL_DATA_ROOT/idrid``. :func:`resolve_data_roots` replaces that prefix in every string
of a config (``data.options.root``, ``pool.data.0.options.root``, ``evaluate_on.0.data.options.root``,
a ``csv`` path...) by the folder given with ``--data-root DIR`` or the environment variable
``RETINASSL_DATA_ROOT`` (the folder that holds ``idrid/``, ``drive/``...). Nothing defaults to a path
relative to a checkout: a preset used without either is a :class:`~retinassl.errors.ConfigError`
naming the key, the option and the variable, and a resolved root that does not exist names the key,
the path and where the root came from.

The presets written before this existed spell the prefix ``../shared/data/``; in a packaged preset
(``legacy=True``) it is read as the same placeholder. In a user's own YAML file it is a path like
any other and left alone.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from retinassl.errors import ConfigError

#: The environment variable holding the data root.
DATA_ROOT_ENV = "RETINASSL_DATA_ROOT"
#: The placeholder presets start their data paths with.
PLACEHOLDER = f"${DATA_ROOT_ENV}"
#: How the presets written before the placeholder spelled it (read as the placeholder in presets).
LEGACY_PREFIX = "../shared/data/"


def data_root_from_env() -> Path | None:
    """The data root of ``RETINASSL_DATA_ROOT`` (None when unset or empty)."""
    value = os.environ.get(DATA_ROOT_ENV, "").strip()
    return Path(value).expanduser() if value else None


def _relative_part(value: str, legacy: bool) -> str | None:
    """The path below the data root that ``value`` names, or None when it names no such path."""
    if value == PLACEHOLDER:
        return ""
    for prefix in (PLACEHOLDER + "/",) + ((LEGACY_PREFIX,) if legacy else ()):
        if value.startswith(prefix):
            return value[len(prefix):]
    return None


def resolve_data_roots(data: dict[str, Any], data_root: str | Path | None = None, *,
                       legacy: bool = False, check: bool = True, missing_ok: bool = False,
                       origin: str = "config") -> dict[str, Any]:
    """``data`` (a config mapping, not changed) with every data-root path made real.

    Args:
        data: a config as read from YAML, overrides applied.
        data_root: the folder holding the datasets (``--data-root``); None: ``RETINASSL_DATA_ROOT``.
        legacy: also read the ``../shared/data/`` prefix as the placeholder (packaged presets).
        check: refuse a resolved path that does not exist.
        missing_ok: with no data root given, leave the placeholders as they are (a sweep's budgets
            that the chosen budget does not use) instead of refusing them.
        origin: the config's name, for the messages.

    Raises:
        ConfigError: a placeholder with no data root given (naming the key, ``--data-root`` and
            ``RETINASSL_DATA_ROOT``); with ``check``, a resolved path that does not exist.
    """
    given = "--data-root" if data_root is not None else f"${DATA_ROOT_ENV}"
    root = Path(data_root).expanduser() if data_root is not None else data_root_from_env()

    def fix(value: Any, key: str) -> Any:
        if isinstance(value, dict):
            return {k: fix(v, f"{key}.{k}" if key else str(k)) for k, v in value.items()}
        if isinstance(value, list):
            return [fix(v, f"{key}.{i}") for i, v in enumerate(value)]
        if not isinstance(value, str):
            return value
        rest = _relative_part(value, legacy)
        if rest is None:
            return value
        if root is None:
            if missing_ok:
                return value
            raise ConfigError(
                f"{origin}: {key} is {value!r}, under the data root, and no data root is given: pass "
                f"--data-root DIR or set the environment variable {DATA_ROOT_ENV}=DIR (DIR holds the "
                f"dataset folders: {rest.split('/')[0] or 'idrid'}/, ...), or override {key}=PATH")
        path = root / rest if rest else root
        if check and not path.exists():
            raise ConfigError(f"{origin}: {key} is {path} ({value!r} with the data root {root} of "
                              f"{given}), which does not exist; point {given} at the folder holding "
                              f"the datasets, or override {key}=PATH")
        return str(path)

    return fix(data, "")


__all__ = ["DATA_ROOT_ENV", "PLACEHOLDER", "LEGACY_PREFIX", "data_root_from_env", "resolve_data_roots"]
