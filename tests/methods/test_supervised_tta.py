"""Test-time augmentation of the supervised method's scores (``tta``): off by default, the mean score
over the views (computed here independently with ``torch.flip``/``torch.rot90``), invariant to the turns
it averages over, and kept by a saved classifier so that ``retinassl predict`` applies it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from retinassl.methods.base import build_method
from retinassl.models import build_encoder


def _method(tta: str, task: str = "binary"):
    torch.manual_seed(3)
    params = {"tta": tta, "task": task, "num_classes": 3}
    return build_method("supervised", params, build_encoder("resnet18")).eval()


def _images() -> torch.Tensor:
    return torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _by_hand(x: torch.Tensor) -> dict[str, list[torch.Tensor]]:
    turns = [torch.rot90(x, k, dims=(-2, -1)) for k in range(4)]
    mirrored = [torch.rot90(x.flip(-1), k, dims=(-2, -1)) for k in range(4)]
    return {"flips": [x, x.flip(-1), x.flip(-2), x.flip(-1).flip(-2)], "dihedral": turns + mirrored}


@pytest.mark.parametrize("task", ["binary", "multiclass"])
def test_the_scores_are_the_mean_over_the_views(task: str) -> None:
    x = _images()
    plain = _method("none", task)
    with torch.no_grad():
        assert torch.equal(plain.scores(x), torch.sigmoid(plain(x)) if task == "binary" else torch.softmax(plain(x), 1))
        for tta, views in _by_hand(x).items():
            method = _method(tta, task)  # the same weights (same seed)
            expected = torch.stack([plain.scores(v) for v in views]).mean(0)
            assert torch.allclose(method.scores(x), expected, atol=1e-6)
            assert not torch.allclose(method.scores(x), plain.scores(x), atol=1e-4)  # it does something


def test_dihedral_scores_do_not_depend_on_orientation_and_flips_only_on_quarter_turns() -> None:
    x = _images()
    with torch.no_grad():
        dihedral, flips = _method("dihedral"), _method("flips")
        for view in (torch.rot90(x, 1, dims=(-2, -1)), x.flip(-1), x.flip(-2).transpose(-2, -1)):
            assert torch.allclose(dihedral.scores(view), dihedral.scores(x), atol=1e-6)
        assert torch.allclose(flips.scores(x.flip(-2)), flips.scores(x), atol=1e-6)
        assert not torch.allclose(flips.scores(torch.rot90(x, 1, dims=(-2, -1))), flips.scores(x), atol=1e-4)


def test_a_saved_classifier_keeps_its_tta(tmp_path: Path) -> None:
    from retinassl.jobs.finetune import FinetuneConfig, load_classifier, save_classifier
    from retinassl.metrics.tasks import TaskSpec

    assert FinetuneConfig().tta == "none"
    method = _method("dihedral")
    task = TaskSpec(name="referable", kind="binary", label="dr_grade", positive_from=2)
    save_classifier(tmp_path / "clf", method, arch="resnet18", kwargs={}, preprocess={"size": 32}, task=task)
    loaded, _, _ = load_classifier(tmp_path / "clf")
    x = _images()
    with torch.no_grad():
        assert loaded.config.tta == "dihedral" and torch.allclose(loaded.scores(x), method.scores(x), atol=1e-6)


def test_fine_tuning_passes_it_on_and_patch_classifiers_refuse_it(tiny_prepared) -> None:
    """``finetune: {tta: ...}`` reaches the method it builds; a patch classifier (which keeps the encoder and
    head only, scoring each patch once) refuses a tta it would silently ignore, before anything trains."""
    from retinassl.config import ModelConfig, validate
    from retinassl.errors import ConfigError
    from retinassl.jobs.finetune import FinetuneConfig, build_classifier
    from retinassl.jobs.patch_config import LearnerConfig
    from retinassl.jobs.train import TrainConfig
    from retinassl.metrics.tasks import TaskSpec

    task = TaskSpec(name="referable", kind="binary", label="dr_grade", positive_from=2)
    method, _ = build_classifier(ModelConfig(arch="convnet", kwargs={"width": 4}), task, tiny_prepared,
                                 FinetuneConfig(tta="flips"), seed=0)
    assert method.config.tta == "flips"
    with pytest.raises(ConfigError, match="tta='flips': test-time augmentation applies to whole-image"):
        validate(LearnerConfig, {"method": {"name": "supervised", "tta": "flips"}}, origin="learner")
    with pytest.raises(ConfigError, match="tta='dihedral'"):
        validate(TrainConfig, {"task": {"kind": "patch"}, "method": {"name": "supervised", "tta": "dihedral"}},
                 origin="train")
    validate(TrainConfig, {"task": {"kind": "image"}, "method": {"name": "supervised", "tta": "dihedral"}},
             origin="train")
