"""Configuration of vessel-segmentation runs (``retinassl segment train``, and the cells of the
vessel label-fraction curve): which images train, the U-Net encoder, engine and preprocessing
defaults of the vessel literature, and the datasets evaluated after training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from retinassl.config import DataConfig, EngineConfig, ModelConfig, Section
from retinassl.data.preprocess import PreprocessConfig
from retinassl.data.vessel_inputs import InputConfig
from retinassl.jobs.segment_inference import InferenceConfig


# -- configuration ---------------------------------------------------------------------------------
class TrainImagesConfig(Section):
    """Which images train, and what an epoch is.

    Attributes:
        split: manifest split of the training images (rows with a ``mask_vessels`` file).
        n_images: label budget: the first ``n_images`` of a seeded random order of the training
            images (nested: the 2 images of a seed contain its 1 image, and so on); None: all.
        subset_seed: seed of that order (None: the run seed).
        samples_per_epoch: image draws per epoch; each draw gives ``patches_per_image`` patches,
            so an epoch has the same number of patches whatever ``n_images`` is.
        freeze_encoder_epochs: train only the decoder for the first epochs (pretrained encoders).
    """

    split: str = "train"
    n_images: int | None = Field(None, ge=1)
    subset_seed: int | None = None
    samples_per_epoch: int = Field(40, ge=1)
    freeze_encoder_epochs: int = Field(0, ge=0)


class SegmentModelConfig(ModelConfig):
    """The U-Net's encoder (:class:`~retinassl.config.ModelConfig` with a small ``unet`` default;
    ``in_channels`` defaults to the input's channels)."""

    arch: str = "unet"
    kwargs: dict[str, Any] = Field(default_factory=lambda: {"channels": [16, 32, 64, 128]})


class SegmentEngineConfig(EngineConfig):
    """:class:`~retinassl.config.EngineConfig` whose batch is a few whole images (each gives
    ``method.patches_per_image`` patches)."""

    batch_size: int = Field(4, ge=1)


class SegmentPreprocessConfig(PreprocessConfig):
    """:class:`~retinassl.data.preprocess.PreprocessConfig` that keeps the original scale by
    default (no FOV crop, ``size`` = the images' longer side), so vessel masks are not resampled."""

    size: int = Field(584, ge=8, le=8192)
    crop_fov: bool = False
    normalize: Literal["max", "imagenet", "image", "unit"] = "unit"


class EvalDatasetConfig(Section):
    """A dataset to evaluate a trained model on (cross-dataset evaluation).

    Attributes:
        name: short name used in the results table (``task = vessels:<name>``) and file names.
        data: where the images come from (any source: ``stare``, ``glob``, ``manifest``...).
        preprocess: its caching (None: the training preprocessing; defaults as for training:
            no FOV crop, ``size`` 584, so set ``size`` to the images' longer side to keep their
            scale, or smaller to shrink them towards the training images' scale).
        split: only rows of this split (None: every row with a vessel mask).
        exclude_flag: leave out rows whose value in this manifest column is 1 (e.g. STARE's
            ``resized``).
    """

    name: str
    data: DataConfig
    preprocess: SegmentPreprocessConfig | None = None
    split: str | None = None
    exclude_flag: str | None = None


class SegmentConfig(Section):
    """A vessel-segmentation run (``retinassl segment train``; preset ``drive-vessels``)."""

    name: str = "vessels"
    seed: int = 0
    runs_dir: Path = Path("runs")
    data: DataConfig = DataConfig()
    preprocess: SegmentPreprocessConfig = SegmentPreprocessConfig()
    input: InputConfig = InputConfig()
    model: SegmentModelConfig = SegmentModelConfig()
    method: dict[str, Any] = Field(default_factory=lambda: {"name": "segmentation"})
    train: TrainImagesConfig = TrainImagesConfig()
    engine: SegmentEngineConfig = SegmentEngineConfig()
    inference: InferenceConfig = InferenceConfig()
    test_split: str = "test"
    evaluate_on: list[EvalDatasetConfig] = Field(default_factory=list)
    figures: int = Field(4, ge=0)
    bootstrap: int = Field(2000, ge=0)
    save_predictions: bool = True
