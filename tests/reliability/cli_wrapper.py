"""``python cli_wrapper.py ARGS...`` runs ``retinassl ARGS...`` in this process, with fault injection and
recording switched on by environment variables (used by the reliability tests; not a test module).

- ``RELIABILITY_KILL_AT_STEP=N``: SIGKILL this process just before its N-th optimizer step (any
  optimizer: for a GAN this can fall between the discriminator and the generator update). Only in
  the process of global rank 0 unless ``RELIABILITY_KILL_RANK`` says otherwise;
  ``RELIABILITY_KILL_SIGNAL=TERM`` sends SIGTERM instead.
- ``RELIABILITY_RECORD=DIR``: append to ``DIR/sampler-rank<r>.jsonl`` the indices each training epoch
  draws from the engine's sampler (one JSON line per epoch: epoch, world size, dataset size,
  indices), and save after every ``engine.fit`` the method's final weights as
  ``DIR/weights-rank<r>-fit<k>.safetensors``.

It is a file (not ``python -c``) so that Lightning's DDP launcher can start the other ranks by
re-running ``sys.argv``, exactly as it does for the ``retinassl`` console script.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path


def _rank() -> int:
    for var in ("RANK", "LOCAL_RANK"):
        if os.environ.get(var):
            return int(os.environ[var])
    return 0


def install() -> None:
    kill_at = int(os.environ.get("RELIABILITY_KILL_AT_STEP", "0") or 0)
    kill_rank = int(os.environ.get("RELIABILITY_KILL_RANK", "0"))
    kill_signal = getattr(signal, "SIG" + os.environ.get("RELIABILITY_KILL_SIGNAL", "KILL"))
    record = os.environ.get("RELIABILITY_RECORD")
    if kill_at:
        import torch

        count = {"n": 0}

        def before_step(optimizer, args, kwargs) -> None:
            count["n"] += 1
            if count["n"] == kill_at and _rank() == kill_rank:
                os.kill(os.getpid(), kill_signal)

        from torch.optim.optimizer import register_optimizer_step_pre_hook

        register_optimizer_step_pre_hook(before_step)
    if record:
        out = Path(record)
        out.mkdir(parents=True, exist_ok=True)
        from retinassl.engine import fit as engine
        from retinassl.engine import loader as engine_loader

        original_iter = engine_loader.EpochSampler.__iter__

        def recording_iter(self):
            indices = [int(i) for i in original_iter(self)]
            with open(out / f"sampler-rank{self.rank}.jsonl", "a") as fh:
                fh.write(json.dumps({"epoch": self.epoch, "world_size": self.world_size,
                                     "size": self.size, "indices": indices}) + "\n")
            return iter(indices)

        engine_loader.EpochSampler.__iter__ = recording_iter
        original_fit = engine.fit
        fits = {"n": 0}

        def recording_fit(method, *args, **kwargs):
            result = original_fit(method, *args, **kwargs)
            from safetensors.torch import save_file

            rank = _rank()
            state = {k: v.detach().cpu().contiguous() for k, v in method.state_dict().items()}
            save_file(state, str(out / f"weights-rank{rank}-fit{fits['n']}.safetensors"))
            fits["n"] += 1
            return result

        engine.fit = recording_fit
        # modules that imported fit by name before this ran
        for name, module in list(sys.modules.items()):
            if name.startswith("retinassl.") and getattr(module, "fit", None) is original_fit:
                module.fit = recording_fit


if __name__ == "__main__":
    install()  # before the CLI imports its pipelines, so their `from retinassl.engine.fit import fit` sees ours
    from retinassl.cli import main

    main()
