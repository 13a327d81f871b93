"""The configuration of a transfer sweep (:mod:`retinassl.sweeps.transfer`): initialisations (scratch,
checkpoints, external weights, or pretraining runs on a pool), tasks, label fractions, seeds, folds,
protocols, and the budgets a preset merges in."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from retinassl.config import DataConfig, EngineConfig, ExternalSpec, ModelConfig, Section, validate
from retinassl.data.preprocess import PreprocessConfig
from retinassl.models.published import with_published
from retinassl.errors import ConfigError
from retinassl.jobs.finetune import FinetuneConfig
from retinassl.jobs.probe import ProbeConfig
from retinassl.metrics.tasks import TaskSpec
from retinassl.sweeps.grid import merge_budget

if TYPE_CHECKING:
    from retinassl.models.initialize import EncoderInput


FRACTIONS: tuple[float, ...] = (0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)
Protocol = Literal["probe", "finetune"]


class InitSpec(Section):
    """One initialisation compared by the sweep.

    Attributes:
        name: its name in results and figures (``scratch``, ``rotation``, ``fundus``...).
        init: ``scratch``, an encoder checkpoint directory, or an external weights file; with
            ``pretrain``, the name of an EARLIER initialisation of the sweep makes the two-step
            variant (e.g. SimCLR, then Fundus on its encoder; Jang et al. 2024).
        pretrain: settings of a pretraining run made first (the fields of
            :class:`~retinassl.jobs.pretrain.PretrainConfig`: ``method``, ``engine``, ``label``,
            ``positive_from``, ``mask``, ``seed``, ``model``; ``data``, ``preprocess`` and ``name`` are set by
            the sweep). Its encoder becomes the initialisation.
        pool: what ``pretrain`` trains on: ``unlabelled`` (the cleaned pool of ``pool.data``) or
            ``train`` (the cleaned downstream training images with their labels; only with an
            official test split).
        pretrain_seeds: pretrain once per seed (``pretrain/<name>/seed-<s>``) and keep the encoder
            whose linear probe scores best on patients held out from the downstream training images
            (:meth:`~retinassl.sweeps.transfer_inits.TransferInits.selected`): two pretraining runs
            of one recipe can differ by more than the effects a study measures, so a single run's
            encoder is one draw. None: one run, seeded by ``pretrain.seed`` or the sweep's seed.
    """

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
    init: str = "scratch"
    pretrain: dict[str, Any] | None = None
    pool: Literal["unlabelled", "train"] = "unlabelled"
    pretrain_seeds: list[int] | None = Field(None, min_length=1)


class PoolConfig(Section):
    """The unlabelled pretraining pool.

    Attributes:
        data: the sources combined into the pool (labels are ignored).
        detect_duplicates: also run the near-duplicate detector against the test images.
    """

    data: list[DataConfig] = Field(default_factory=list)
    detect_duplicates: bool = True


class ExplainConfig(Section):
    """Figures made after the cells.

    Attributes:
        tsne: a t-SNE of each initialisation's frozen embeddings, coloured by the first task's label.
        gradcam: test images in each initialisation's Grad-CAM overlay (0: none); uses the model
            fine-tuned on the largest fraction with the first seed.
        task: the task whose fine-tuned model is explained (default: the first).
    """

    tsne: bool = True
    gradcam: int = Field(6, ge=0)
    task: str | None = None


class TuningConfig(Section):
    """Fine-tuning settings chosen per initialisation on validation data carved from the training
    images (:mod:`~retinassl.sweeps.transfer_tuning`), so that every initialisation, scratch
    included, is fine-tuned with the setting that suits it best and no test image is looked at.

    Attributes:
        grid: candidate values per fine-tuning setting (a field of
            :class:`~retinassl.jobs.finetune.FinetuneConfig`, e.g. ``{lr: [0.0003, 0.001],
            min_steps: [40, 160]}``); every combination is tried.
        task: the task whose primary metric chooses (default: the first task).
        fraction: label fraction of the tuning runs (of the training images, as in the cells).
        seeds: tuning runs per candidate (each its own tuning split and label subset); the
            candidate with the best mean validation score wins (ties: the earlier candidate).
        val_fraction: share of the training patients held out (stratified) to score the tuning runs.
    """

    grid: dict[str, list[Any]]
    task: str | None = None
    fraction: float = Field(0.1, gt=0, le=1)
    seeds: list[int] = Field(default_factory=lambda: [0, 1], min_length=1)
    val_fraction: float = Field(0.25, gt=0, lt=1)


class TransferConfig(Section):
    """A transfer-evaluation experiment (``kind: transfer``).

    Attributes:
        kind: always ``transfer`` (the sweep runner that executes it).
        name: experiment name (results ``experiment`` column, run-directory name).
        seed: seeds the folds, the scratch encoder of the linear probe, and pretraining.
        runs_dir: where run directories are created.
        data: the downstream dataset (``split`` column: ``test`` rows are the test set).
        dedupe: clean the downstream data (:func:`~retinassl.data.leakage.clean_downstream`).
        detect_duplicates: also run the near-duplicate detector on the downstream data.
        preprocess: preprocessing of every image (downstream and pool).
        model: the encoder architecture (``init`` is set per initialisation).
        pool: the pretraining pool.
        pretrain_engine: engine settings of the pretraining runs (an initialisation's
            ``pretrain.engine`` overrides them).
        inits: the initialisations compared.
        reference: the initialisation others are tested against (DeLong).
        tasks: the downstream tasks.
        fractions: label fractions of the training images.
        seeds: label-subset seeds (and fine-tuning seeds).
        finetune_seeds: seeds used by fine-tuning (default: ``seeds``), to save compute.
        finetune_fractions: fractions used by fine-tuning (default: ``fractions``).
        protocols: ``probe`` and/or ``finetune``.
        folds: cross-validation folds when the data has no test split.
        probe: linear-probe settings.
        finetune: fine-tuning settings.
        engine: fine-tuning engine settings.
        explain: t-SNE and Grad-CAM figures.
        finetune_tuning: choose ``finetune`` settings per initialisation on validation data
            (:class:`TuningConfig`; None: ``finetune`` as given, for every initialisation).
        keep_workdirs: keep each fine-tuning run's checkpoints and logs (default: deleted).
        workers: processes sharing the cells (each takes every ``workers``-th initialisation;
            with ``engine.num_threads: 1`` two workers use both cores of a 2-core machine).
        evaluate_on: external datasets every cell's model is also evaluated on (:class:`ExternalSpec`).
        budgets: per ``--budget`` overrides of any of these keys (applied by the sweep command).
    """

    kind: Literal["transfer"] = "transfer"
    name: str = "transfer"
    seed: int = 0
    runs_dir: Path = Path("runs")
    data: DataConfig = DataConfig()
    dedupe: bool = True
    detect_duplicates: bool = False
    preprocess: PreprocessConfig = PreprocessConfig(size=128)
    model: ModelConfig = ModelConfig(arch="resnet18")
    pool: PoolConfig = PoolConfig()
    pretrain_engine: EngineConfig = EngineConfig()
    inits: list[InitSpec] = Field(default_factory=lambda: [InitSpec(name="scratch")])
    reference: str = "scratch"
    tasks: list[TaskSpec] = Field(default_factory=lambda: [TaskSpec(name="abnormal")])
    fractions: list[float] = Field(default_factory=lambda: list(FRACTIONS))
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])
    finetune_seeds: list[int] | None = None
    finetune_fractions: list[float] | None = None
    protocols: list[Protocol] = Field(default_factory=lambda: ["probe", "finetune"])
    folds: int = Field(5, ge=2)
    probe: ProbeConfig = ProbeConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    finetune_tuning: TuningConfig | None = None
    engine: EngineConfig = EngineConfig(batch_size=32, checkpoint_every_n_steps=0)
    explain: ExplainConfig = ExplainConfig()
    keep_workdirs: bool = False
    workers: int = Field(1, ge=1)
    evaluate_on: list[ExternalSpec] = Field(default_factory=list)
    budgets: dict[str, dict[str, Any]] = Field(default_factory=dict)

    def check(self) -> None:
        """Cross-field checks (unique names, a known reference, valid fractions)."""
        names = [i.name for i in self.inits]
        if len(set(names)) != len(names):
            raise ConfigError(f"inits: names must be unique, got {names}")
        if self.reference not in names:
            raise ConfigError(f"reference {self.reference!r} is not one of the inits {names}")
        if len({t.name for t in self.tasks}) != len(self.tasks) or not self.tasks:
            raise ConfigError("tasks: give at least one task, with unique names")
        if not self.fractions or any(not 0 < f <= 1 for f in self.fractions):
            raise ConfigError(f"fractions must be in (0, 1], got {self.fractions}")
        bad = [s for s in (self.finetune_seeds or []) if s not in self.seeds]
        if bad:
            raise ConfigError(f"finetune_seeds {bad} are not among seeds {self.seeds}")
        bad = [f for f in (self.finetune_fractions or []) if f not in self.fractions]
        if bad:
            raise ConfigError(f"finetune_fractions {bad} are not among fractions {self.fractions}")
        if self.finetune_tuning is not None:
            tuning = self.finetune_tuning
            unknown = sorted(set(tuning.grid) - set(FinetuneConfig.model_fields))
            if unknown or not tuning.grid or any(not v for v in tuning.grid.values()):
                raise ConfigError(f"finetune_tuning.grid: give candidate values of fine-tuning settings "
                                  f"({', '.join(FinetuneConfig.model_fields)}); unknown: {unknown}")
            if tuning.task is not None and tuning.task not in {t.name for t in self.tasks}:
                raise ConfigError(f"finetune_tuning.task {tuning.task!r} is not one of the tasks "
                                  f"{[t.name for t in self.tasks]}")
            for values in tuning_candidates(tuning.grid):
                validate(FinetuneConfig, {**self.finetune.model_dump(), **values},
                         origin="finetune_tuning.grid")
        external = [e.name for e in self.evaluate_on]
        if len(set(external)) != len(external):
            raise ConfigError(f"evaluate_on: names must be unique, got {external}")
        for spec in self.evaluate_on:
            self.evaluated_task(spec)
        names = [i.name for i in self.inits]
        for spec in self.inits:
            if spec.pretrain_seeds is not None and (spec.pretrain is None or "seed" in spec.pretrain
                                                    or len(set(spec.pretrain_seeds)) != len(spec.pretrain_seeds)):
                raise ConfigError(f"init {spec.name}: pretrain_seeds {spec.pretrain_seeds} needs a 'pretrain' "
                                  "block without its own 'seed', and distinct seeds")
            if spec.pretrain_seeds is not None and spec.pool == "train":
                raise ConfigError(f"init {spec.name}: pretrain_seeds chooses on training patients held out "
                                  "from the downstream labels, which a pretraining on pool 'train' has trained on")
        for k, spec in enumerate(self.inits):  # a typo must fail now, not after hours of other initialisations
            if spec.init != "scratch" and spec.init in names and (spec.pretrain is None or spec.init not in names[:k]):
                raise ConfigError(f"init {spec.name}: init {spec.init!r} names an initialisation of this "
                                  "sweep; that is the two-step variant, which needs 'pretrain' and an "
                                  f"initialisation listed before it (order: {names})")
            if spec.pretrain is not None:
                from retinassl.methods.base import method_class

                pretrain = self.pretrain_config(spec, Path("pool.csv"))
                params = {k: v for k, v in pretrain.method.items() if k != "name"}
                validate(method_class(pretrain.method_name).Config, params,
                         origin=f"init {spec.name}: pretrain.method")

    def encoder_inputs(self) -> list[EncoderInput]:
        """Each given encoder (an init's, or a two-step init's given first step) and the inputs the
        sweep prepares for it (:func:`~retinassl.models.initialize.check_encoder_inputs`); encoders the
        sweep pretrains itself are made on those inputs."""
        return [(spec.init, self.preprocess, f"init {spec.name}") for spec in self.inits
                if spec.init != "scratch" and self.init_named(spec.init) is None]

    def choice_task(self) -> TaskSpec:
        """The task whose primary metric makes the choices made on validation data (fine-tuning
        settings, pretraining seeds): ``finetune_tuning.task``, else the first task."""
        name = self.finetune_tuning.task if self.finetune_tuning is not None else None
        return next(t for t in self.tasks if t.name == (name or self.tasks[0].name))

    def init_named(self, name: str) -> InitSpec | None:
        """The initialisation called ``name``, if one is (a two-step init's first step)."""
        return None if name == "scratch" else next((i for i in self.inits if i.name == name), None)

    def evaluated_task(self, external: ExternalSpec) -> TaskSpec:
        """The sweep task whose models an external dataset evaluates (see :class:`ExternalSpec`)."""
        binary = [t for t in self.tasks if t.binary_metric is not None]
        named = [t for t in self.tasks if t.name == external.task]
        if external.task is not None and not named:
            raise ConfigError(f"evaluate_on {external.name}: task {external.task!r} is not one of the "
                              f"tasks {[t.name for t in self.tasks]}")
        task = named[0] if named else (binary[0] if binary else None)
        if task is None or task.binary_metric is None:
            raise ConfigError(f"evaluate_on {external.name}: an external dataset is scored with a binary "
                              f"label; the task needs a binary score (binary, or multiclass with "
                              f"positive_from)")
        return task

    def pretrain_config(self, spec: InitSpec, pool_file: Path):  # -> PretrainConfig
        """The pretraining run of ``spec`` (on the pool manifest ``pool_file``)."""
        from retinassl.jobs.pretrain import PretrainConfig

        settings = dict(spec.pretrain or {})
        engine = merge_budget(self.pretrain_engine.model_dump(mode="json"), settings.pop("engine", {}) or {})
        override, base = settings.pop("model", {}) or {}, self.model.model_dump(mode="json")
        if override.get("arch", base["arch"]) != base["arch"]:  # another encoder: the sweep's arguments do not apply
            base["kwargs"] = {}
        model = merge_budget(base, override)
        merged = {"name": f"{self.name}-{spec.name}", "seed": self.seed,
                  "data": [{"source": "manifest", "manifest": str(pool_file),
                            "cache_dir": None if self.data.cache_dir is None else str(self.data.cache_dir),
                            "workers": self.data.workers}],
                  "preprocess": self.preprocess.model_dump(mode="json"), "model": model,
                  "engine": engine, **settings}
        return validate(PretrainConfig, merged, origin=f"init {spec.name}: pretrain")


def tuning_candidates(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of a tuning grid's values, in a fixed order (keys sorted, values as given)."""
    import itertools

    keys = sorted(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def downstream_only(data: dict[str, Any]) -> dict[str, Any]:
    """A transfer experiment's mapping without its pretraining pool, also in every budget: what a job
    that starts from given encoders reads (evaluating or explaining one), so the pool's data need not be
    on the machine. The input is not changed."""
    data = {k: v for k, v in data.items() if k != "pool"}
    if "budgets" in data:
        data["budgets"] = {budget: {k: v for k, v in (override or {}).items() if k != "pool"}
                           for budget, override in (data["budgets"] or {}).items()}
    return data


def resolve_config(data: dict[str, Any], budget: str | None) -> TransferConfig:
    """Validate a preset's mapping after applying its ``budgets[budget]`` overrides."""
    budgets = data.get("budgets", {}) or {}
    if budget is not None and budgets and budget not in budgets:
        raise ConfigError(f"budget {budget!r} is not defined by this experiment (it has "
                          f"{', '.join(budgets)})")
    merged = merge_budget(data, budgets.get(budget, {}) if budget else {})
    config = validate(TransferConfig, merged, origin=f"transfer experiment ({budget or 'no'} budget)")
    config = with_published(config)  # a published model (model.weights): its architecture and inputs
    config.check()
    return config
