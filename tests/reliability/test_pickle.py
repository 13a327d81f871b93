"""Untrusted weight files: every command that loads weights made elsewhere (``model.init``) offers
``--allow-pickle`` and refuses a pickle-based ``.pth`` without it (exit 2, one error line naming the
file); with it, the file is read with ``torch.load(weights_only=True)``, so a pickle that would run
code is still refused and runs nothing."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from reliability.harness import CROSS_MODAL_YAML, GAN_YAML, cli_in_process
from retinassl.errors import CheckpointError

TINY_DATA = "data.options={n_images: 8, size: 64, prevalence: 0.5, seed: 0}"
COMMANDS = {
    "train": (["train", "demo", TINY_DATA, "preprocess.size=64", "model.arch=convnet",
                  "model.kwargs={width: 4}"], "model.init"),
    "pretrain": (["pretrain", "rotation", TINY_DATA, "preprocess.size=64", "model.arch=convnet",
                  "model.kwargs={width: 4}"], "model.init"),
    "segment train": (["segment", "train", "drive-vessels", "data={source: synthetic, options: {n_images: 6, "
                       "size: 64, seed: 1}}", "evaluate_on=[]", "preprocess.size=64"], "model.init"),
    "semisup train": (["semisup", "train", "GAN_YAML"], "learner.model.init"),
    "oct pretrain": (["oct", "pretrain", "CROSS_MODAL_YAML"], "model.init"),
}


class _Evil:
    """Unpickling this would create a file (any code could run instead)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


@pytest.fixture(autouse=True)
def _private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETINASSL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("RETINASSL_PROGRESS", "0")
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_command_offers_allow_pickle_and_refuses_pickle_by_default(tmp_path: Path, command: str,
                                                                    capsys: pytest.CaptureFixture) -> None:
    args, key = COMMANDS[command]
    if command == "semisup train":
        pytest.importorskip("retinassl.jobs.semisup")
        (tmp_path / "gan.yaml").write_text(GAN_YAML)
        args = [str(tmp_path / "gan.yaml") if a == "GAN_YAML" else a for a in args]
    if command == "oct pretrain":
        from retinassl.cli import oct as oct_cli

        if not hasattr(oct_cli, "pretrain"):
            pytest.skip("`retinassl oct pretrain` has not landed yet")
        (tmp_path / "cm.yaml").write_text(CROSS_MODAL_YAML)
        args = [str(tmp_path / "cm.yaml") if a == "CROSS_MODAL_YAML" else a for a in args]
    code, out, _ = cli_in_process(command.split() + ["--help"], capsys)
    assert code == 0 and "--allow-pickle" in out, out
    weights = tmp_path / "weights.pth"
    torch.save({"conv.weight": torch.zeros(2, 3, 3, 3)}, weights)
    code, out, err = cli_in_process(args + [f"{key}={weights}", "--runs-dir", str(tmp_path / "runs")], capsys)
    assert code == 2 and "Traceback" not in err, err
    assert err.count("error: ") == 1 and str(weights) in err and "pickle" in err and "--allow-pickle" in err, err


def test_allow_pickle_still_refuses_code(tmp_path: Path) -> None:
    """With the flag the loader is ``weights_only``: a pickle that runs code is an error, and the code
    does not run."""
    from retinassl.io.saved_model import read_state_dict

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as fh:
        pickle.dump({"conv.weight": _Evil(marker)}, fh)
    with pytest.raises(CheckpointError, match="weights-only"):
        read_state_dict(evil, allow_pickle=True)
    assert not marker.exists()
    good = tmp_path / "good.pth"
    torch.save({"conv.weight": torch.ones(2, 3, 3, 3)}, good)
    assert torch.equal(read_state_dict(good, allow_pickle=True)["conv.weight"], torch.ones(2, 3, 3, 3))
    with pytest.raises(CheckpointError, match="refusing"):
        read_state_dict(good)


def test_allow_pickle_through_the_command_line_runs_no_code(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as fh:
        pickle.dump({"conv.weight": _Evil(marker)}, fh)
    args, key = COMMANDS["train"]
    code, out, err = cli_in_process(args + [f"{key}={evil}", "--allow-pickle", "--runs-dir",
                                            str(tmp_path / "runs")], capsys)
    assert code == 2 and "Traceback" not in err and "weights-only" in err, err
    assert not marker.exists()
