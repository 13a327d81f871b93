"""Training throughput of the engine's defaults (issue 2's benchmark).

Side by side, on the same model, batch and data, with interleaved repetitions:
- ``bare fp32``: a plain PyTorch loop, float32, NCHW (what a first script does);
- ``bare fast``: the same loop with the engine's CPU defaults (channels_last + bf16 autocast);
- ``engine``: :func:`retinassl.engine.fit.fit` with its defaults (Lightning, logging, checkpoints).
Reported: images/s of each, the speed-up of the defaults over fp32, and the engine's overhead vs the
bare loop with the same numerics (target: within 15 %).

Cases: the conv-large ConvNet (width 96) on 32 px patches (the SSL-GAN paper resizes its 128 px cells
to 32), batch 64, and on 128 px patches, batch 8; ResNet18 on 224 px images, batch 16.

Usage: python benchmarks/training_speed.py [--steps 30] [--repeats 3] [--cases a,b] [--name NAME]
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch

from _common import write_results
from retinassl.config import EngineConfig
from retinassl.engine.fit import fit
from retinassl.hardware import cpu_supports_bf16
from retinassl.methods.base import build_method
from retinassl.models import build_encoder
from retinassl.io.rundir import RunDir

CASES = {"convnet-32px": ("convnet", {"width": 96}, 32, 64),  # the SSL-GAN paper: 128 px cells resized to 32 px
         "convnet-128px": ("convnet", {"width": 96}, 128, 8),  # issue 2's setting: 16x the pixels, ~0.5 img/s in fp32
         "resnet18-224px": ("resnet18", {}, 224, 16)}


class Images(torch.utils.data.Dataset):
    def __init__(self, n: int, size: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.rand(n, 3, size, size, generator=g)
        self.y = torch.randint(0, 2, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.x[i], "label": self.y[i], "index": i}


def make_method(arch: str, kwargs: dict):
    torch.manual_seed(0)
    return build_method("supervised", {"augment": "none", "schedule": "constant"}, build_encoder(arch, **kwargs))


def bare_loop(arch: str, kwargs: dict, data: Images, batch: int, steps: int, fast: bool) -> float:
    method = make_method(arch, kwargs)
    opt = method.configure_optimizers()["main"]
    if fast:
        method = method.to(memory_format=torch.channels_last)
    loader = torch.utils.data.DataLoader(data, batch_size=batch, shuffle=True, drop_last=True)
    gen = torch.Generator().manual_seed(0)
    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if fast and cpu_supports_bf16()
                else contextlib.nullcontext())
    it = iter(loader)
    done, start = 0, None
    while done < steps + 3:
        try:
            b = next(it)
        except StopIteration:
            it = iter(loader)
            b = next(it)
        if done == 3:
            start = time.perf_counter()
        x = b["image"].contiguous(memory_format=torch.channels_last) if fast else b["image"]
        with autocast:
            loss, _ = method.loss({"image": x, "label": b["label"]}, "main", gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        done += 1
    return steps * batch / (time.perf_counter() - start)


class StepTimer(pl.Callback):
    """Wall time from the start of batch ``skip`` to the end of the last batch."""

    def __init__(self, skip: int) -> None:
        self.skip, self.start, self.end, self.count = skip, None, None, 0

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if self.count == self.skip:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.count += 1
        self.end = time.perf_counter()


def engine_loop(arch: str, kwargs: dict, data: Images, batch: int, steps: int) -> float:
    method = make_method(arch, kwargs)
    timer = StepTimer(3)
    with tempfile.TemporaryDirectory() as tmp:
        run = RunDir.create(Path(tmp), "bench")
        # one epoch covers every timed step (no epoch-end checkpoint inside the timing)
        config = EngineConfig(max_epochs=1, max_steps=steps + 3, batch_size=batch,
                              checkpoint_every_n_steps=-1, log_every_n_steps=10)
        fit(method, data, config=config, run=run, seed=0, callbacks=[timer])
    return steps * batch / (timer.end - timer.start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    parser.add_argument("--name", default="training_speed", help="results file name")
    args = parser.parse_args()
    cases = {name: CASES[name] for name in args.cases.split(",")}
    torch.set_num_threads(2)
    results, lines = {}, []
    for name, (arch, kwargs, size, batch) in cases.items():
        data = Images(batch * (args.steps + 4), size)
        runs = {"bare_fp32": [], "bare_fast": [], "engine": []}
        for _ in range(args.repeats):
            runs["bare_fp32"].append(bare_loop(arch, kwargs, data, batch, args.steps, fast=False))
            runs["bare_fast"].append(bare_loop(arch, kwargs, data, batch, args.steps, fast=True))
            runs["engine"].append(engine_loop(arch, kwargs, data, batch, args.steps))
        med = {k: float(np.median(v)) for k, v in runs.items()}
        results[name] = {"runs_images_per_s": runs, "median_images_per_s": med, "batch": batch,
                         "size": size, "speedup_defaults_vs_fp32": med["bare_fast"] / med["bare_fp32"],
                         "engine_overhead_vs_bare_same_numerics": 1 - med["engine"] / med["bare_fast"]}
        r = results[name]
        lines.append(f"| {name} (batch {batch}) | {med['bare_fp32']:.1f} | {med['bare_fast']:.1f} | "
                     f"{med['engine']:.1f} | {r['speedup_defaults_vs_fp32']:.2f}x | "
                     f"{100 * r['engine_overhead_vs_bare_same_numerics']:+.1f} % |")
    table = ("| case | bare fp32 NCHW img/s | bare channels_last+bf16 img/s | engine (defaults) img/s | "
             "defaults vs fp32 | engine overhead vs bare |\n|---|---|---|---|---|---|\n" + "\n".join(lines) +
             f"\n\nMedian of {args.repeats} interleaved repetitions of {args.steps} timed steps (after 3 "
             f"warm-up steps); bf16 supported by this CPU: {cpu_supports_bf16()}.\n")
    write_results(args.name, {"cases": results, "bf16_supported": cpu_supports_bf16()}, table)
    print(table)


if __name__ == "__main__":
    main()
