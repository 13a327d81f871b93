"""Same seed, same numbers, per precision setting (in process, through :func:`retinassl.engine.fit.fit`):

- ``engine.deterministic=true`` forces float32 and deterministic kernels even when bf16 is asked
  for, and two runs are bit-identical;
- bf16 autocast (the CPU default where the processor supports it) is repeatable run to run on the
  same machine (what README promises); it is not promised across processors, since oneDNN picks
  kernels (and accumulation orders) per instruction set.

Methods: supervised, rotation (pretext) and the vessel U-Net; the patch GAN's same-seed check is its
command-line run in test_faults.py (float32). Through the command line, float32 sameness of every
family is checked by test_faults.py (the resumed run equals the uninterrupted one).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from retinassl.config import EngineConfig
from retinassl.engine.fit import fit
from retinassl.methods.base import build_method
from retinassl.models import build_encoder
from retinassl.io.rundir import RunDir


class Images(torch.utils.data.Dataset):
    def __init__(self, channels: int = 3, n: int = 12, size: int = 32) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.rand(n, channels, size, size, generator=g)
        self.vessel = (torch.rand(n, 1, size, size, generator=g) > 0.8).float()
        self.y = torch.arange(n) % 2

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.x[i], "label": self.y[i], "index": i, "target": self.vessel[i],
                "fov": torch.ones_like(self.vessel[i])}


def _method(name: str):
    torch.manual_seed(0)
    if name == "segmentation":
        pytest.importorskip("retinassl.methods.vessel_segmentation")
        import retinassl.methods.vessel_segmentation  # noqa: F401  (registers it)

        encoder = build_encoder("unet", in_channels=1, channels=(4, 8))
        return build_method(name, {"patch_size": 16, "patches_per_image": 2}, encoder), Images(1)
    import retinassl.methods  # noqa: F401

    encoder = build_encoder("convnet", width=4)
    return build_method(name, {"lr": 1e-2} if name == "supervised" else {}, encoder), Images(3)


def _train(tmp: Path, name: str, tag: str, **engine) -> dict[str, torch.Tensor]:
    method, data = _method(name)
    run = RunDir.create(tmp, f"{name}-{tag}")
    config = EngineConfig(max_epochs=2, batch_size=4, checkpoint_every_n_steps=-1, **engine)
    fit(method, data, config=config, run=run, seed=3)
    return {k: v.detach().clone() for k, v in method.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", ["supervised", "rotation", "segmentation"])
def test_deterministic_flag_gives_identical_runs_even_when_bf16_is_asked(tmp_path: Path, name: str,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="retinassl")
    a = _train(tmp_path, name, "a", precision="bf16", deterministic=True)
    b = _train(tmp_path, name, "b", precision="bf16", deterministic=True)
    assert _same(a, b)
    assert "precision 32-true" in caplog.text  # deterministic overrides the bf16 request


@pytest.mark.parametrize("name", ["supervised", "segmentation"])
def test_bf16_is_repeatable_on_this_machine(tmp_path: Path, name: str) -> None:
    a = _train(tmp_path, name, "a", precision="bf16")
    b = _train(tmp_path, name, "b", precision="bf16")
    assert _same(a, b)
