"""The training engine: exact resume after SIGKILL, divergence guard, and 2-process DDP on CPU."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

SCRIPT = textwrap.dedent('''
    import json, os, signal, sys
    from pathlib import Path
    import torch
    from safetensors.torch import save_file
    from retinassl.config import EngineConfig
    from retinassl.engine.fit import fit
    from retinassl.methods.base import build_method
    from retinassl.models import build_encoder
    from retinassl.io.rundir import RunDir
    import retinassl.methods  # registers "supervised"

    torch.set_num_threads(1)
    out = Path(sys.argv[1]); mode = sys.argv[2]; kill_at = int(sys.argv[3])
    devices = int(sys.argv[4]); batch = int(sys.argv[5]); augment = sys.argv[6]

    class Toy(torch.utils.data.Dataset):
        def __init__(self, n):
            g = torch.Generator().manual_seed(0)
            self.x = torch.randn(n, 3, 32, 32, generator=g)
            self.y = (self.x[:, 0].mean((1, 2)) > 0).long()
        def __len__(self): return len(self.x)
        def __getitem__(self, i): return {"image": self.x[i], "label": self.y[i], "index": i}

    torch.manual_seed(0)
    encoder = build_encoder("convnet", width=8, dropout=(augment != "none"), weight_norm=True)
    method = build_method("supervised", {"lr": 3e-3, "augment": augment, "schedule": "cosine"}, encoder)
    seen = []
    loss = method.loss
    def counting_loss(b, group, generator):
        seen.append(b["index"].tolist())
        if kill_at and len(seen) == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return loss(b, group, generator)
    method.loss = counting_loss
    # one thread pinned: float sums depend on the thread count, and the reference run and the killed
    # one must compute alike whatever the load when each starts (README: pin it to compare bit for bit)
    cfg = EngineConfig(max_epochs=3, batch_size=batch, precision="32", devices=devices, num_threads=1,
                       strategy="ddp" if devices > 1 else "auto", checkpoint_every_n_steps=2)
    run = RunDir.resume(out / "run") if mode == "resume" else None
    if run is None:
        (out / "run").mkdir(parents=True, exist_ok=True)
        run = RunDir(out / "run"); run.update_status(status="running")
    result = fit(method, Toy(48), config=cfg, run=run, seed=5, resume=(mode == "resume"))
    rank = int(os.environ.get("LOCAL_RANK", 0))
    state = {k: v.contiguous() for k, v in method.state_dict().items()}
    save_file(state, str(out / f"weights-{mode}-rank{rank}.safetensors"))
    (out / f"seen-{mode}-rank{rank}.json").write_text(json.dumps(seen))
''')


def run_script(tmp: Path, mode: str, kill_at: int = 0, devices: int = 1, batch: int = 8,
               augment: str = "dihedral") -> subprocess.CompletedProcess:
    script = tmp / "train_script.py"
    script.write_text(SCRIPT)
    return subprocess.run([sys.executable, str(script), str(tmp), mode, str(kill_at), str(devices),
                           str(batch), augment], capture_output=True, text=True, timeout=600)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", [4, 9, 13])
def test_sigkill_then_resume_gives_identical_weights(tmp_path: Path, kill_at: int) -> None:
    ref = tmp_path / "ref"
    ref.mkdir()
    done = run_script(ref, "fresh")
    assert done.returncode == 0, done.stderr[-2000:]
    killed = tmp_path / "killed"
    killed.mkdir()
    first = run_script(killed, "fresh", kill_at=kill_at)
    assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]
    second = run_script(killed, "resume")
    assert second.returncode == 0, second.stderr[-2000:]
    a = weights(ref / "weights-fresh-rank0.safetensors")
    b = weights(killed / "weights-resume-rank0.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the resumed run trained only the batches the killed one had not checkpointed
    resumed = json.loads((killed / "seen-resume-rank0.json").read_text())
    assert 0 < len(resumed) < 18


@pytest.mark.slow
@pytest.mark.ddp
def test_ddp_two_ranks_agree_and_match_single_process_large_batch(tmp_path: Path) -> None:
    ddp = tmp_path / "ddp"
    ddp.mkdir()
    proc = run_script(ddp, "fresh", devices=2, batch=6, augment="none")
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = weights(ddp / "weights-fresh-rank0.safetensors")
    r1 = weights(ddp / "weights-fresh-rank1.safetensors")
    for k in r0:
        assert torch.equal(r0[k], r1[k]), f"ranks disagree on {k}"
    # every sample seen exactly once per epoch across the two ranks
    s0 = json.loads((ddp / "seen-fresh-rank0.json").read_text())
    s1 = json.loads((ddp / "seen-fresh-rank1.json").read_text())
    per_epoch = 48 // 12
    for epoch in range(3):
        got = sorted(i for b in s0[epoch * per_epoch:(epoch + 1) * per_epoch] +
                     s1[epoch * per_epoch:(epoch + 1) * per_epoch] for i in b)
        assert got == list(range(48)), f"epoch {epoch}"
    # DDP averages gradients: the same as one process with the two ranks' batches together
    single = tmp_path / "single"
    single.mkdir()
    proc = run_script(single, "fresh", devices=1, batch=12, augment="none")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ref = weights(single / "weights-fresh-rank0.safetensors")
    for k in ref:
        assert torch.allclose(ref[k], r0[k], atol=2e-5, rtol=1e-4), k


def test_nan_loss_stops_with_last_good_weights(tmp_path: Path) -> None:
    from retinassl.config import EngineConfig
    from retinassl.engine.fit import fit
    from retinassl.errors import TrainingDiverged
    from retinassl.methods.base import build_method
    from retinassl.models import build_encoder
    from retinassl.io.rundir import RunDir
    import retinassl.methods  # noqa: F401

    class Toy(torch.utils.data.Dataset):
        def __len__(self):
            return 16

        def __getitem__(self, i):
            return {"image": torch.full((3, 32, 32), float(i)), "label": torch.tensor(i % 2), "index": i}

    method = build_method("supervised", {"augment": "none"}, build_encoder("convnet", width=4))
    calls = {"n": 0}
    real = method.loss

    def loss(batch, group, generator):
        calls["n"] += 1
        value, logs = real(batch, group, generator)
        return (value * float("nan") if calls["n"] == 3 else value), logs

    method.loss = loss
    run = RunDir.create(tmp_path, "nan")
    with pytest.raises(TrainingDiverged, match=r"the main loss became nan at batch 2"):
        fit(method, Toy(), config=EngineConfig(max_epochs=2, batch_size=4, precision="32"), run=run, seed=0)
    saved = load_file(str(run.checkpoints / "last-good-weights.safetensors"))
    for k, v in method.state_dict().items():
        assert torch.equal(saved[k], v)
        assert torch.isfinite(v.float()).all()
