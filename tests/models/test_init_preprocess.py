"""An encoder is used on inputs prepared as it was trained: a checkpoint whose recorded preprocessing
differs from the run's (other than the size) is refused, naming each field and both values."""

from __future__ import annotations

from pathlib import Path

import pytest

from retinassl.data.preprocess import PreprocessConfig
from retinassl.errors import ConfigError
from retinassl.models import build_encoder
from retinassl.models.checkpoint import save_encoder
from retinassl.models.initialize import check_init_preprocess


def _saved(path: Path, preprocess: PreprocessConfig | None) -> Path:
    return save_encoder(path, build_encoder("convnet", width=4), arch="convnet", kwargs={"width": 4},
                        preprocess=None if preprocess is None else preprocess.model_dump())


def test_an_encoder_is_refused_on_inputs_prepared_otherwise(tmp_path: Path) -> None:
    trained = PreprocessConfig(size=64, color_standardize=True, normalize="max")
    encoder = _saved(tmp_path / "enc", trained)
    # the same preparation, at any size (the resolution study): accepted, by folder or by JSON file
    for size in (64, 224):
        check_init_preprocess(str(encoder), trained.model_copy(update={"size": size}))
    check_init_preprocess(str(next(p for p in Path(encoder).glob("*.json"))), trained)
    # without the colour standardisation it learnt with: refused, the field and both values named
    with pytest.raises(ConfigError, match=r"init lesions: .*preprocess\.color_standardize is False, "
                                          r"the encoder's True"):
        check_init_preprocess(str(encoder), PreprocessConfig(size=64), "init lesions")
    # every differing field is named, not only the first
    with pytest.raises(ConfigError) as caught:
        check_init_preprocess(str(encoder), PreprocessConfig(size=64, normalize="image", clahe=True))
    message = str(caught.value)
    assert all(f"preprocess.{k} is" in message for k in ("clahe", "color_standardize", "normalize"))
    assert "preprocess.size" not in message


def test_scratch_foreign_weights_and_unrecorded_checkpoints_pass(tmp_path: Path) -> None:
    given = PreprocessConfig(size=32, clahe=True)
    check_init_preprocess("scratch", given)
    check_init_preprocess(str(_saved(tmp_path / "bare", None)), given)         # records nothing: not checkable
    weights = tmp_path / "foreign.safetensors"
    from safetensors.torch import save_file

    save_file(build_encoder("convnet", width=4).state_dict(), str(weights))
    check_init_preprocess(str(weights), given)                                 # the user's to set


def test_pretraining_from_an_encoder_prepared_otherwise_stops_before_it_trains(tmp_path: Path) -> None:
    from retinassl.io.rundir import RunDir
    from retinassl.jobs.pretrain import PretrainConfig, run_pretrain

    encoder = _saved(tmp_path / "enc", PreprocessConfig(size=32, color_standardize=True))
    config = PretrainConfig.model_validate({
        "data": [{"source": "synthetic", "options": {"n_images": 4, "size": 32, "out_dir": str(tmp_path / "data")}}],
        "preprocess": {"size": 32},
        "model": {"arch": "convnet", "kwargs": {"width": 4}, "init": str(encoder)},
        "method": {"name": "rotation"}, "engine": {"max_steps": 1, "batch_size": 2}})
    run = RunDir.create(tmp_path / "runs", "two-step")
    with pytest.raises(ConfigError, match="color_standardize"):
        run_pretrain(config, run)
    assert not (run.path / "manifest.csv").exists()                          # nothing prepared or trained
