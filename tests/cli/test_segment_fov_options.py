"""The FOV estimate of the segmentation commands: the model's setting unless the command line says
otherwise, and the DRIVE preset's STARE evaluation without a threshold chosen on STARE."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from retinassl.cli.segment import _preprocess
from retinassl.config import load_config
from retinassl.data.preprocess import PreprocessConfig
from retinassl.jobs.segment_config import SegmentConfig, SegmentPreprocessConfig


def test_predict_and_evaluate_keep_the_models_fov_rule_unless_told():
    segmenter = SimpleNamespace(preprocess=SegmentPreprocessConfig(fov_background=True, fov_threshold=0.1))
    assert _preprocess(segmenter, None, None, None).fov_background is True
    assert _preprocess(segmenter, None, None, None, False).fov_background is False
    assert _preprocess(segmenter, 0.2, None, None).fov_threshold == 0.2


def test_the_drive_preset_records_the_background_rule_and_no_stare_tuned_threshold(tmp_path: Path):
    (tmp_path / "drive").mkdir()
    (tmp_path / "stare").mkdir()
    cfg = load_config(SegmentConfig, "drive-vessels", [], data_root=tmp_path)
    assert cfg.preprocess.fov_background
    stare = next(spec for spec in cfg.evaluate_on if spec.name == "stare")
    assert stare.preprocess.fov_background
    assert stare.preprocess.fov_threshold == PreprocessConfig().fov_threshold
