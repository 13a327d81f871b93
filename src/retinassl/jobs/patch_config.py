"""Configuration of patch-method runs: one training (``retinassl semisup train``) and the packaged
experiment (``retinassl sweep idrid-ssl-gan``).

A *learner* is one way of training a patch classifier: a method (``ssl-gan`` or ``supervised``),
its encoder, its engine settings and the patch geometry it sees. The experiment trains every
learner at every labelled-image count and seed on the same split.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from retinassl.config import DataConfig, EngineConfig, ExternalSpec, ModelConfig, Section
from retinassl.data.augment import check_acquisition_inputs
from retinassl.data.preprocess import PreprocessConfig
from retinassl.metrics.image_score import ImageScore
from retinassl.metrics.ssl_gan_summary import plan

if TYPE_CHECKING:
    from retinassl.models.initialize import EncoderInput


class SplitConfig(Section):
    """A stratified, patient-grouped train/val/test split (Lecouat et al.: 149/50/50).

    Attributes:
        train, val: images in the training and validation cohorts; test gets the rest.
        seed: seed of the split (fixed across the labelled samplings).
    """

    train: int = Field(149, ge=1)
    val: int = Field(50, ge=0)
    seed: int = 0


class PatchConfig(Section):
    """The patch grid and labels.

    Attributes:
        grid: patches per side (8).
        min_pixels: lesion pixels that make a patch diseased (1).
    """

    grid: int = Field(8, ge=1)
    min_pixels: int = Field(1, ge=1)


class PoolConfig(Section):
    """Extra images: unlabelled patches for the SSL-GAN, image-level labelled bags for a supervised
    learner (a bag learner needs their ``abnormal`` label).

    Attributes:
        source: ``idrid-dr-pool`` (IDRiD part-B images with DR that show none of the images of the
            labelled set, :func:`retinassl.data.sources.idrid.idrid_dr_pool`) or any data source.
        options: the source's options (``root``...).
        max_images: use at most this many (a seeded random subset; 0 = all).
    """

    source: str = "idrid-dr-pool"
    options: dict[str, Any] = Field(default_factory=dict)
    max_images: int = Field(0, ge=0)


class LearnerConfig(Section):
    """How one patch classifier is trained.

    Attributes:
        method: the method and its parameters (``{"name": "ssl-gan", ...}`` or
            ``{"name": "supervised", ...}``).
        model: the encoder.
        engine: engine settings; ``engine.max_steps`` sets the training length in optimizer steps
            (independent of how many patches the labelled and unlabelled sets have).
        patch_size: side of the patches the network sees (cells are resized to it).
        margin: context pixels around each cell for random crops (SSL-GAN).
        balance: for ``supervised``, BCE ``pos_weight`` = negatives / positives among the labelled
            patches (Table 5: "binary crossentropy balanced class-weighting").
        val_patches: validation patches (a fixed random subset of the validation images' patches)
            passed to the engine; 0 = no validation. A method with a ``monitor`` then ends with
            the weights of its best validation epoch.
        keep_weights: keep the trained classifier in the run (else only results and predictions).
        min_fov: for ``ssl-gan``, leave out of the unlabelled pool the patches whose cell lies less
            than this fraction inside the field of view (0: keep all, as the paper). The labelled
            patches keep all cells.
        image_score: how the classifier's patch logits make an image's score, recorded with it
            (:func:`retinassl.metrics.image_score.image_scores`): ``sum`` of the 64 probabilities (the
            paper), or ``tissue``, their mean over the cells wholly inside the field of view (the
            black border and the FOV rim, which differ between cameras, left out).
    """

    method: dict[str, Any] = Field(default_factory=lambda: {"name": "ssl-gan"})
    model: ModelConfig = ModelConfig(arch="convnet", kwargs={"width": 96, "weight_norm": True,
                                                              "dropout": True})
    engine: EngineConfig = EngineConfig(max_epochs=1200, batch_size=100)
    patch_size: int = Field(32, ge=8)
    margin: int = Field(0, ge=0)
    balance: bool = True
    val_patches: int = Field(0, ge=0)
    keep_weights: bool = True
    min_fov: float = Field(0.0, ge=0, le=1)
    image_score: ImageScore = "sum"

    @property
    def method_name(self) -> str:
        return str(self.method.get("name", ""))

    @model_validator(mode="after")
    def _check_tta(self) -> LearnerConfig:
        refuse_tta(self.method)
        return self


def refuse_tta(method: dict[str, Any]) -> None:
    """A patch classifier keeps the encoder and head only and scores each patch once: a ``supervised``
    method's test-time augmentation would be ignored, so it is refused (a validator's ValueError)."""
    if method.get("tta", "none") != "none":
        raise ValueError(f"method.tta={method['tta']!r}: test-time augmentation applies to whole-image "
                         "classifiers; a patch classifier scores each patch once (leave tta at none)")


class SemisupTrainConfig(Section):
    """One patch-classifier training (``retinassl semisup train CONFIG``).

    Attributes:
        name: run name. seed: seed of the labelled sampling, initialisation and data order.
        data: the labelled set (``source: idrid-ssl-gan`` is the paper's 249-image IDRiD set).
        preprocess: image preprocessing (512 px: 64 px cells; 1024 px: the paper's 128 px).
        split, patches: see :class:`SplitConfig`, :class:`PatchConfig`.
        n_labelled: training images whose patch labels are used (None: all); the others are
            unlabelled.
        pool: extra unlabelled images (None: the training cohort only).
        learner: how the classifier is trained.
        heatmaps: test images drawn as heatmap overlays.
    """

    name: str = "ssl-gan"
    seed: int = 0
    runs_dir: Path = Path("runs")
    data: DataConfig = DataConfig()
    preprocess: PreprocessConfig = PreprocessConfig(size=512)
    split: SplitConfig = SplitConfig()
    patches: PatchConfig = PatchConfig()
    n_labelled: int | None = Field(None, ge=1)
    pool: PoolConfig | None = None
    learner: LearnerConfig = LearnerConfig()
    heatmaps: int = Field(6, ge=0)

    def encoder_inputs(self) -> list[EncoderInput]:
        """The learner's ``model.init`` and the images it will see (patches of images prepared by
        ``preprocess``; :func:`~retinassl.models.initialize.check_encoder_inputs`)."""
        return [(self.learner.model.init, self.preprocess, "learner.model.init")]

    @model_validator(mode="after")
    def _check_augmentation_inputs(self) -> SemisupTrainConfig:
        check_acquisition_inputs(self.learner.method, self.preprocess, "learner.method",
                                 self.learner.model.weights)
        return self


class ExtensionConfig(Section):
    """The experiment's extension: a learner rerun with the pool's images. The SSL-GAN takes them
    as unlabelled patches; a supervised learner as image-level labelled multiple-instance bags
    (their ``abnormal`` label; the method's ``bag_weight``).

    Attributes:
        enabled: run it.
        learner: which learner (a key of the experiment's ``learners``).
        label: its method name in the results table.
        pool: the extra images (see :class:`PoolConfig`).
        labelled, seeds: counts and seeds to run (None: the experiment's).
    """

    enabled: bool = False
    learner: str = "ssl-gan"
    label: str = "ssl-gan+partB"
    pool: PoolConfig = PoolConfig()
    labelled: list[int] | None = None
    seeds: list[int] | None = None


class GalleryConfig(Section):
    """Which cell's test heatmaps the report shows (Lecouat et al.'s Figure 2 used 20 labels)."""

    n_labelled: int = 20
    seed: int = 0
    images: int = Field(6, ge=0)


class SSLGANExperimentConfig(Section):
    """The packaged experiment ``idrid-ssl-gan`` (``kind: ssl-gan``), after its budget is applied.

    Attributes:
        name, kind, runs_dir: identification.
        data, preprocess, split, patches: the data (see :class:`SemisupTrainConfig`).
        labelled: labelled-image counts (nested per seed).
        seeds: labelled samplings (each also seeds initialisation and data order).
        learners: learner name -> :class:`LearnerConfig` (``ssl-gan``, ``convnet``, ``resnet34``).
        reference, baselines: the learners the sweep trains (a defined learner in neither is not
            trained: ``baselines=[]`` runs the SSL-GAN alone); each baseline is compared with the
            reference by DeLong's test.
        extension: see :class:`ExtensionConfig`.
        gallery: see :class:`GalleryConfig`.
        workers: processes that train cells in parallel (each takes the next unclaimed cell;
            give each learner ``engine.num_threads`` = cores / workers). On a small shared CPU,
            single-threaded workers side by side are far faster than one multi-threaded one.
        evaluate_on: external datasets every cell's classifier also scores (rows of task
            ``patch:abnormal@<name>``; :mod:`retinassl.sweeps.ssl_gan_external`).
        budget: the budget that was applied (recorded for the report).
    """

    name: str = "idrid-ssl-gan"
    kind: Literal["ssl-gan"] = "ssl-gan"
    runs_dir: Path = Path("runs")
    data: DataConfig = DataConfig()
    preprocess: PreprocessConfig = PreprocessConfig(size=512)
    split: SplitConfig = SplitConfig()
    patches: PatchConfig = PatchConfig()
    labelled: list[int] = Field(default_factory=lambda: [10, 20, 40, 80, 149])
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2, 3, 4])
    learners: dict[str, LearnerConfig] = Field(default_factory=dict)
    reference: str = "ssl-gan"
    baselines: list[str] = Field(default_factory=lambda: ["convnet", "resnet34"])
    extension: ExtensionConfig = ExtensionConfig()
    gallery: GalleryConfig = GalleryConfig()
    workers: int = Field(1, ge=1)
    evaluate_on: list[ExternalSpec] = Field(default_factory=list)
    budget: str = ""

    def encoder_inputs(self) -> list[EncoderInput]:
        """The ``model.init`` of each learner the experiment trains (its plan; a learner defined but
        not trained is not checked) and the images it will see
        (:func:`~retinassl.models.initialize.check_encoder_inputs`)."""
        trained = sorted({learner for _, learner, *_ in plan(self.model_dump(mode="json"))})
        return [(self.learners[name].model.init, self.preprocess, f"learners.{name}.model.init")
                for name in trained]

    @model_validator(mode="after")
    def _check(self) -> SSLGANExperimentConfig:
        names = set(self.learners)
        missing = [n for n in [self.reference, *self.baselines] if n not in names]
        if self.extension.enabled and self.extension.learner not in names:
            missing.append(self.extension.learner)
        if missing:
            raise ValueError(f"learners {missing} are referenced but not defined (defined: "
                             f"{sorted(names)})")
        for name in sorted({learner for _, learner, *_ in plan(self.model_dump(mode="json"))}):  # the trained ones
            check_acquisition_inputs(self.learners[name].method, self.preprocess, f"learners.{name}.method",
                                     self.learners[name].model.weights)
        return self
