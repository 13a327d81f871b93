"""Pickle-free training-state trees (io/tree.py) and a weights reader that refuses pickles unless
allowed (io/saved_model.py's read_state_dict)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from retinassl.errors import CheckpointError
from retinassl.io.saved_model import read_state_dict
from retinassl.io.tree import load_tree, save_tree


def test_pickle_refused_unless_allowed(tmp_path: Path) -> None:
    path = tmp_path / "w.pth"
    torch.save({"a": torch.ones(2)}, path)
    with pytest.raises(CheckpointError, match="refusing to load a pickle-based checkpoint"):
        read_state_dict(path)
    assert torch.equal(read_state_dict(path, allow_pickle=True)["a"], torch.ones(2))

    class Evil:
        def __reduce__(self):
            return (exec, ("raise SystemExit('pwned')",))

    torch.save({"a": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="weights-only"):
        read_state_dict(tmp_path / "evil.pth", allow_pickle=True)


def test_tree_round_trip(tmp_path: Path) -> None:
    tree = {"epoch": 3, "lr": 1e-3, "inf": float("inf"), "name": "x", "none": None, "flag": True,
            "t": torch.arange(6).reshape(2, 3), "arr": np.arange(4, dtype=np.uint8),
            "opt": {"state": {0: {"step": torch.tensor(5.0), "exp_avg": torch.ones(3)}},
                    "param_groups": [{"betas": (0.9, 0.999), "params": [0, 1]}]},
            "rng": ("MT19937", np.arange(3, dtype=np.uint32), 2, 0, 0.0), "dtype": torch.float32}
    save_tree(tree, tmp_path / "c.json")
    back = load_tree(tmp_path / "c.json")
    assert back["epoch"] == 3 and back["inf"] == float("inf") and back["none"] is None
    assert torch.equal(back["t"], tree["t"]) and np.array_equal(back["arr"], tree["arr"])
    assert set(back["opt"]["state"]) == {0}
    assert back["opt"]["param_groups"][0]["betas"] == (0.9, 0.999)
    assert back["rng"][0] == "MT19937" and isinstance(back["rng"], tuple)
    assert back["dtype"] is torch.float32
    with pytest.raises(CheckpointError, match="cannot store object at .x"):
        save_tree({"x": object()}, tmp_path / "bad.json")


def test_a_training_checkpoint_cannot_point_outside_its_folder(tmp_path: Path) -> None:
    from retinassl.io.tree import load_tree, save_tree

    save_tree({"w": torch.ones(2)}, tmp_path / "step.json")
    meta = json.loads((tmp_path / "step.json").read_text())
    for bad in ("../../../../etc/passwd", "/etc/passwd", "", 7):
        meta["tensors"] = bad
        (tmp_path / "step.json").write_text(json.dumps(meta))
        with pytest.raises(CheckpointError, match="must be a file name beside it"):
            load_tree(tmp_path / "step.json")
