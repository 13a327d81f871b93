"""Typed configuration: YAML files (or packaged presets) validated by pydantic, unknown keys rejected,
and ``key=value`` overrides from the command line.

Every section is a frozen pydantic model with ``extra="forbid"``: a misspelt key is an error that
names it, never a silently ignored setting.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .data.preprocess import PreprocessConfig
from .errors import ConfigError

M = TypeVar("M", bound=BaseModel)


class Section(BaseModel):
    """Base of all config sections: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(Section):
    """Where the images come from.

    Attributes:
        source: a dataset source name (``synthetic``, ``idrid``, ``drive``, ``stare``, ``rfmid``,
            ``eyepacs``, ``folder``, ``csv``, ``glob``) or ``manifest`` to read ``manifest``.
        options: keyword arguments of the source (e.g. ``root``).
        manifest: a manifest CSV (with ``source: manifest``).
        cache_dir: preprocessed-image cache (default ``$RETINASSL_CACHE`` or ``~/.cache/retinassl``).
        workers: processes used to preprocess and to load batches.
        skip_bad: skip unreadable images (listed in the run report) instead of stopping.
    """

    source: str = "synthetic"
    options: dict[str, Any] = Field(default_factory=dict)
    manifest: Path | None = None
    cache_dir: Path | None = None
    workers: int = Field(0, ge=0)
    skip_bad: bool = False


class ModelConfig(Section):
    """The encoder: a registry name and its arguments, optionally initialised from a checkpoint.

    Attributes:
        arch: registered encoder name (``convnet``, ``resnet18``, ``resnet34``, ``resnet50``, ``unet``).
        kwargs: encoder keyword arguments.
        init: ``scratch``, an encoder checkpoint directory (``.../encoder``), or a weights file
            made elsewhere (a torchvision/timm ResNet state dict: ``.safetensors``, or
            ``.pth``/``.pt``/``.bin`` with ``allow_pickle``), mapped onto ``arch`` by
            :mod:`retinassl.models.external` (the "ImageNet + Fundus" two-step pretraining).
        allow_pickle: let ``init`` be a pickle-based torch file (read with ``weights_only=True``).
        init_prefix: with a weights file, use only the keys under this prefix (e.g.
            ``module.encoder_q.``); None strips ``module.``/``model.`` wrappers automatically.
    """

    arch: str = "convnet"
    kwargs: dict[str, Any] = Field(default_factory=dict)
    init: str = "scratch"
    allow_pickle: bool = False
    init_prefix: str | None = None


class EngineConfig(Section):
    """How training runs (see :mod:`retinassl.engine`).

    Attributes:
        max_epochs: epochs (an epoch is one pass over the training set).
        max_steps: stop after this many optimizer steps (-1: no limit).
        batch_size: per-process batch size.
        precision: ``auto`` (bf16 autocast on CPUs and GPUs that support it, else float32),
            ``bf16``, ``16``, or ``32``.
        channels_last: ``auto`` (on for convolutional encoders), ``true`` or ``false``.
        deterministic: force deterministic kernels (and float32), for bit-exact reruns.
        accelerator: Lightning accelerator (``cpu``, ``gpu``, ``auto``).
        devices: devices per node (an int, or ``auto``).
        num_nodes: nodes (multi-node DDP under torchrun or SLURM).
        strategy: Lightning strategy (``auto``, ``ddp``, ``ddp_spawn``...).
        checkpoint_every_n_steps: save a resumable checkpoint this often (0: only at epoch ends;
            -1: never, for short runs that are cheaper to redo than to checkpoint).
        log_every_n_steps: logging interval.
        val_every_n_epochs: validation interval (when there is validation data).
        num_threads: torch intra-op threads (0: leave torch's default).
        patience: early stopping: stop when the method's ``monitor`` metric has not improved for
            this many validations (0: never; needs validation data and a method with a monitor).
    """

    max_epochs: int = Field(10, ge=1)
    max_steps: int = -1
    batch_size: int = Field(32, ge=1)
    precision: Literal["auto", "bf16", "16", "32"] = "auto"
    channels_last: Literal["auto", True, False] = "auto"
    deterministic: bool = False
    accelerator: str = "cpu"
    devices: int | Literal["auto"] = 1
    num_nodes: int = Field(1, ge=1)
    strategy: str = "auto"
    checkpoint_every_n_steps: int = Field(50, ge=-1)
    log_every_n_steps: int = Field(10, ge=1)
    val_every_n_epochs: int = Field(1, ge=1)
    num_threads: int = Field(0, ge=0)
    patience: int = Field(0, ge=0)

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_as_text(cls, value: Any) -> Any:
        # ``engine.precision=32`` on the command line (or ``precision: 32`` in YAML) is a number
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def preset_names() -> list[str]:
    """Names of the experiment presets packaged in ``retinassl/configs``."""
    folder = resources.files("retinassl") / "configs"
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def read_yaml(source: str | Path) -> dict[str, Any]:
    """A YAML file, or the packaged preset of that name, as a dict."""
    path = Path(source)
    if path.is_file():
        text = path.read_text()
        origin = str(path)
    else:
        candidate = resources.files("retinassl") / "configs" / f"{source}.yaml"
        if not candidate.is_file():
            raise ConfigError(f"{source}: no such config file or preset (presets: "
                              f"{', '.join(preset_names())})")
        text = candidate.read_text()
        origin = f"preset {source}"
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{origin}: invalid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: the top level must be a mapping of keys to values")
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML scalars/lists) to a nested dict."""
    out = _deep_copy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
            node = nxt
        node[parts[-1]] = value
    return out


def _deep_copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data


def validate(model: type[M], data: dict[str, Any], origin: str = "config") -> M:
    """Validate ``data`` against ``model``; a ConfigError lists every problem with its key path."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "(top level)"
            if err["type"] == "extra_forbidden":
                lines.append(f"{where}: unknown key")
            else:
                lines.append(f"{where}: {err['msg']} (got {err.get('input')!r})")
        raise ConfigError(f"{origin}: invalid configuration\n  " + "\n  ".join(lines)) from None


def load_config(model: type[M], source: str | Path | None, overrides: list[str] | None = None) -> M:
    """Read a YAML file or preset (or start from defaults when None), apply overrides, validate."""
    data = read_yaml(source) if source is not None else {}
    data = apply_overrides(data, overrides or [])
    return validate(model, data, origin=str(source) if source is not None else "config")


def to_yaml(config: BaseModel) -> str:
    """The resolved config as YAML (what a run directory records)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


__all__ = ["Section", "DataConfig", "ModelConfig", "EngineConfig", "PreprocessConfig", "load_config",
           "apply_overrides", "validate", "read_yaml", "preset_names", "to_yaml"]
