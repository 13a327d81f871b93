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

from retinassl.errors import ConfigError

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


class ExternalSpec(Section):
    """An external dataset every cell's model of a sweep (``transfer``, ``ssl-gan``) is also
    evaluated on (``evaluate_on``), so that one command gives in-domain and external columns
    (:mod:`retinassl.sweeps.external`; Jang et al. 2024 validate on JSIEC and RFMiD).

    Attributes:
        name: its name: results rows and prediction folders of task ``<task>@<name>``.
        data: where the images come from (any source with options).
        label: the binary label in the dataset's own terms (a label mapping: ``dr_any``,
            ``dr_stage>=1``, ``level>=2``...; :func:`retinassl.jobs.predict.mapped_labels`).
        task: the sweep task whose models are evaluated (transfer: default the first task with a
            binary score: ``binary``, or ``multiclass`` with ``positive_from``, scored as
            ``P(y >= t)``; ssl-gan: its one task, ``patch:abnormal``).
        split: only the rows of this split (default: every labelled image).
    """

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
    data: DataConfig
    label: str
    task: str | None = None
    split: str | None = None


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
        weights: the published model ``init`` holds (``retfound-mae``, ``retfound-green``,
            ``dinov2-vitl14``...: :data:`retinassl.models.vit_weights.KNOWN_WEIGHTS`): its
            architecture is built (with ``arch`` set to the same, ``kwargs`` given here override
            single arguments; another ``arch`` is replaced with its ``kwargs``) and its input
            size and normalisation replace ``preprocess``'s, and are recorded in saved models
            (:mod:`retinassl.models.published`). None: ``arch``/``kwargs``/``preprocess`` as given.
    """

    arch: str = "convnet"
    kwargs: dict[str, Any] = Field(default_factory=dict)
    init: str = "scratch"
    allow_pickle: bool = False
    init_prefix: str | None = None
    weights: str | None = None


class EngineConfig(Section):
    """How training runs (see :mod:`retinassl.engine.fit`).

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
        num_threads: torch intra-op threads (0: as many as there are free cores -- the cores
            minus the load of other processes -- at least one; the log warns when the machine is
            oversubscribed, see :mod:`retinassl.engine.threads`).
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

    def result_settings(self) -> dict[str, Any]:
        """The settings that shape a training's result (JSON), without where and how it runs
        (accelerator, strategy, threads, checkpoint and log cadence; devices and nodes stay: they set
        the global batch): what a resumed sweep must keep (:meth:`retinassl.sweeps.grid.Grid.settings`)."""
        return self.model_dump(mode="json", exclude={"accelerator", "strategy", "num_threads",
                                                     "checkpoint_every_n_steps", "log_every_n_steps"})


def preset_names() -> list[str]:
    """Names of the experiment presets packaged in ``retinassl/configs``."""
    folder = resources.files("retinassl") / "configs"
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


#: The most values (mapping keys and values, list items) a YAML document may expand to once its
#: anchors and aliases are followed: a real config has a few hundred; a "billion laughs" alias
#: nest of 1 KB expands to billions.
MAX_YAML_VALUES = 100_000


def _expanded_size(root: yaml.Node) -> int | None:
    """How many nodes the document ``root`` becomes once every alias is copied out (capped at
    ``MAX_YAML_VALUES + 1``), or None when an alias refers to a node containing it. Linear in the
    size of the node graph (each shared node is counted once, then multiplied)."""
    def children(node: yaml.Node) -> list[yaml.Node]:
        if isinstance(node, yaml.MappingNode):
            return [part for pair in node.value for part in pair]
        if isinstance(node, yaml.SequenceNode):
            return list(node.value)
        return []

    size: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, closing = stack.pop()
        if closing:
            open_nodes.discard(id(node))
            size[id(node)] = min(MAX_YAML_VALUES + 1, 1 + sum(size[id(c)] for c in children(node)))
            continue
        if id(node) in size:
            continue
        open_nodes.add(id(node))
        stack.append((node, True))
        for child in children(node):
            if id(child) in open_nodes:
                return None
            if id(child) not in size:
                stack.append((child, False))
    return size[id(root)]


def safe_load_bounded(text: str, origin: str) -> Any:
    """``yaml.safe_load`` that refuses alias bombs: the document is composed first (aliases are
    shared nodes, so this is cheap) and refused when it would expand to more than
    :data:`MAX_YAML_VALUES` values or refers to itself, before any Python object is built.

    Raises:
        ConfigError: naming ``origin`` (an alias bomb, a recursive alias, nesting too deep).
        yaml.YAMLError: the text is not valid YAML (the caller names it).
    """
    loader = yaml.SafeLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:
            raise ConfigError(f"{origin}: the YAML is nested too deeply") from None
        if node is None:
            return None
        size = _expanded_size(node)
        if size is None:
            raise ConfigError(f"{origin}: the YAML has an alias that refers to a value containing "
                              f"it (a recursive alias); refused")
        if size > MAX_YAML_VALUES:
            raise ConfigError(f"{origin}: the YAML expands to more than {MAX_YAML_VALUES} values "
                              f"through its anchors and aliases (an alias bomb?); refused")
        return loader.construct_document(node)
    finally:
        loader.dispose()


def read_yaml(source: str | Path) -> dict[str, Any]:
    """A YAML file, or the packaged preset of that name, as a dict.

    Raises:
        ConfigError: naming the file: no such file or preset, not UTF-8 text, invalid YAML, an
            alias bomb (:func:`safe_load_bounded`), an empty document, a top level that is not a
            mapping.
    """
    path = Path(source)
    if path.is_file():
        try:
            text = path.read_bytes().decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start} is {exc.object[exc.start]:#04x}); "
                              f"save the config as UTF-8") from None
        except OSError as exc:
            raise ConfigError(f"{path}: cannot be read ({exc.strerror or exc})") from None
        origin = str(path)
    else:
        candidate = resources.files("retinassl") / "configs" / f"{source}.yaml"
        if not candidate.is_file():
            raise ConfigError(f"{source}: no such config file or preset (presets: "
                              f"{', '.join(preset_names())})")
        text = candidate.read_text()
        origin = f"preset {source}"
    try:
        data = safe_load_bounded(text, origin)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{origin}: invalid YAML ({exc})") from None
    if data is None:
        raise ConfigError(f"{origin}: the config is empty (no settings); write the settings to use, "
                          f"or '{{}}' for every default")
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: the top level must be a mapping of keys to values")
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML scalars/lists) to a nested dict.

    List items are addressed by their index (``evaluate_on.0.data.options.root=...``,
    ``pool.data.1.options.root=...``). Setting a ``source`` to another value drops the old
    source's ``options`` beside it (they mean nothing to the new source): ``data.source=idrid
    data.options.root=PATH`` on a synthetic preset leaves only ``root``.
    """
    out = _deep_copy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        try:
            value = safe_load_bounded(raw, f"override {item!r}") if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node: Any = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            if isinstance(node, list):
                node = _list_item(node, part, item)
                continue
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, (dict, list)):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
            node = nxt
        last = parts[-1]
        if isinstance(node, list):
            index = _list_index(node, last, item)
            node[index] = value
            continue
        if last == "source" and node.get("source") not in (None, value):
            node.pop("options", None)
        node[last] = value
    return out


def _list_index(items: list[Any], part: str, item: str) -> int:
    if not part.isdigit() or int(part) >= len(items):
        raise ConfigError(f"override {item!r}: {part!r} is not an index of a list of {len(items)} item(s)")
    return int(part)


def _list_item(items: list[Any], part: str, item: str) -> Any:
    value = items[_list_index(items, part, item)]
    if not isinstance(value, (dict, list)):
        raise ConfigError(f"override {item!r}: item {part} is not a section")
    return value


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
            elif not err["loc"]:  # a check across keys: its message names them; the input is the whole config
                lines.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
            else:
                lines.append(f"{where}: {err['msg']} (got {err.get('input')!r})")
        raise ConfigError(f"{origin}: invalid configuration\n  " + "\n  ".join(lines)) from None


def config_data(source: str | Path, overrides: list[str] | None = None,
                data_root: str | Path | None = None) -> dict[str, Any]:
    """A YAML file or preset as a mapping, overrides applied, data roots resolved
    (:func:`retinassl.data_roots.resolve_data_roots`: ``$RETINASSL_DATA_ROOT/...`` paths, and in a
    packaged preset ``../shared/data/...``, under ``data_root`` or ``$RETINASSL_DATA_ROOT``)."""
    from retinassl.data_roots import resolve_data_roots

    data = apply_overrides(read_yaml(source), overrides or [])
    preset = not Path(source).is_file()
    return resolve_data_roots(data, data_root, legacy=preset,
                              origin=f"preset {source}" if preset else str(source))


def load_config(model: type[M], source: str | Path | None, overrides: list[str] | None = None,
                data_root: str | Path | None = None) -> M:
    """Read a YAML file or preset (or start from defaults when None), apply overrides, resolve
    data roots (:func:`config_data`), validate."""
    data = config_data(source, overrides, data_root) if source is not None else \
        apply_overrides({}, overrides or [])
    return validate(model, data, origin=str(source) if source is not None else "config")


def to_yaml(config: BaseModel) -> str:
    """The resolved config as YAML (what a run directory records)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


__all__ = ["Section", "DataConfig", "ModelConfig", "EngineConfig", "load_config", "config_data",
           "apply_overrides", "validate", "read_yaml", "safe_load_bounded", "preset_names",
           "to_yaml"]
