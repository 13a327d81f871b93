"""ViT-S/16 vs ResNet-18 on the CPU at 224 px: images per second for a training step and for
inference, and an MAE pretraining step of the same ViT, side by side in one run.

- training step: pooled embedding -> linear head (2 classes) -> cross-entropy -> backward -> AdamW
  step, on a fixed random batch (the bare model loop: no data loading, no Lightning);
- inference: the pooled embedding under ``torch.inference_mode``;
- MAE step (He et al. 2022) of the same ViT-S/16: encoder on the visible 25 % of the patches, a light
  decoder (256 wide, 4 blocks), normalised-pixel loss, backward, AdamW (the saving from masking,
  against the full-image training step);
- precisions: float32 eager, and bf16 autocast with channels_last (the toolkit's CPU default where the
  processor supports bf16; measured anyway, the table says which is the default here).

The machine is shared, so the five workloads of one precision run interleaved one step at a time
(ViT train, ResNet train, ViT infer, ResNet infer, MAE, ViT train, ...): load from other processes
hits all of them alike. Each rate is the batch size over the median step time; the best (minimum)
step time is recorded too.

Usage: ``flock /work/heavy.lock nice -n 5 .venv/bin/python benchmarks/vit_speed.py [--batch 8]
[--steps 8] [--threads 2]``; writes ``benchmarks/results/vit_speed.{json,md}``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from _common import write_results
from retinassl.models import build_encoder
from retinassl.models.mae import MAEDecoder, mae_loss
from retinassl.models.vit_blocks import random_masking

MODELS = {"vit_small/16": ("vit_small", {"patch_size": 16, "img_size": 224, "pooling": "mean"}),
          "resnet18": ("resnet18", {})}


def build(name: str, seed: int) -> nn.Sequential:
    arch, kwargs = MODELS[name]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = build_encoder(arch, **kwargs)
        return nn.Sequential(encoder, nn.Linear(encoder.num_features, 2))


def train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, bf16: bool) -> Callable[[], None]:
    """One supervised training step on the fixed batch."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        model.train()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def infer_step(model: nn.Module, x: torch.Tensor, bf16: bool) -> Callable[[], None]:
    """The pooled embedding of the batch in inference mode."""
    encoder = model[0]

    def step() -> None:
        encoder.eval()
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            encoder(x)

    return step


def mae_step(model: nn.Module, x: torch.Tensor, bf16: bool, mask_ratio: float = 0.75) -> Callable[[], None]:
    """One MAE pretraining step (a fresh seeded mask each time)."""
    encoder = model[0]
    grid = encoder.patch_grid(x.shape[2], x.shape[3])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        decoder = MAEDecoder(encoder.num_features, encoder.patch_size, 3, grid, encoder.num_prefix_tokens,
                             decoder_dim=256, depth=4, num_heads=8)
    params = list(encoder.parameters()) + [p for p in decoder.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95))
    generator = torch.Generator().manual_seed(0)

    def step() -> None:
        encoder.train()
        keep, mask, restore = random_masking(x.shape[0], grid[0] * grid[1], mask_ratio, generator)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            tokens, _ = encoder.tokens(x, keep=keep)
            loss = mae_loss(decoder(encoder.norm(tokens), restore, grid), x, mask, encoder.patch_size)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per workload and precision")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--name", default="vit_speed")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size, generator=g)
    y = torch.randint(0, 2, (args.batch,), generator=g)
    try:  # the engine's own test (the module is moving in the package reorganisation)
        from retinassl.hardware import cpu_supports_bf16
    except ImportError:
        from retinassl.engine import cpu_supports_bf16  # type: ignore[no-redef,attr-defined]
    default_bf16 = bool(cpu_supports_bf16())

    times: dict[str, list[float]] = {}
    params = {}
    for precision in ("fp32", "bf16"):
        bf16 = precision == "bf16"
        xin = x.contiguous(memory_format=torch.channels_last) if bf16 else x
        workloads: dict[str, Callable[[], None]] = {}
        for name in MODELS:
            train_model, infer_model = build(name, 0), build(name, 0)
            if bf16:
                train_model = train_model.to(memory_format=torch.channels_last)
                infer_model = infer_model.to(memory_format=torch.channels_last)
            params[name] = sum(p.numel() for p in train_model[0].parameters())
            workloads[f"{name} train {precision}"] = train_step(train_model, xin, y, bf16)
            workloads[f"{name} infer {precision}"] = infer_step(infer_model, xin, bf16)
        vit_mae = build("vit_small/16", 0)
        workloads[f"vit_small/16 mae {precision}"] = mae_step(vit_mae, xin, bf16)
        for step in workloads.values():  # warm-up (allocations, optimizer state)
            step()
        for i in range(args.steps):
            for key, step in workloads.items():
                start = time.perf_counter()
                step()
                times.setdefault(key, []).append(time.perf_counter() - start)
            print(i, precision, {k: round(args.batch / v[-1], 2) for k, v in times.items() if k.endswith(precision)},
                  flush=True)

    rate = {k: args.batch / statistics.median(v) for k, v in times.items()}
    best = {k: args.batch / min(v) for k, v in times.items()}
    rows = ["| model | params (M) | workload | precision | images/s (median step) | images/s (best step) | ratio |",
            "|---|---:|---|---|---:|---:|---|"]
    for mode, label in (("train", "training step"), ("infer", "inference"), ("mae", "MAE pretraining step")):
        for precision in ("fp32", "bf16"):
            default = " (default)" if (precision == "bf16") == default_bf16 else ""
            for name in MODELS:
                key = f"{name} {mode} {precision}"
                if key not in rate:
                    continue
                if mode == "mae":
                    ratio = f"{rate[key] / rate[f'{name} train {precision}']:.2f} x its full-image training step"
                elif name == "vit_small/16":
                    ratio = f"{rate[key] / rate[f'resnet18 {mode} {precision}']:.2f} x ResNet-18"
                else:
                    ratio = ""
                rows.append(f"| {name} | {params[name] / 1e6:.1f} | {label} | {precision}{default} | "
                            f"{rate[key]:.1f} | {best[key]:.1f} | {ratio} |")
    notes = (f"\n\n{args.size} px, batch {args.batch}, {args.threads} threads, {args.steps} timed steps per "
             f"workload after one warm-up, the workloads of a precision interleaved step by step. Training "
             f"step = pooled embedding + linear head + cross-entropy + backward + AdamW; inference = pooled "
             f"embedding under inference_mode; MAE = 75 % of the patches masked, decoder 256 wide x 4 "
             f"blocks, normalised-pixel loss. bf16 = autocast + channels_last; the toolkit's CPU default "
             f"here is {'bf16' if default_bf16 else 'fp32'} (cpu_supports_bf16() = {default_bf16}). The "
             f"machine is shared (load average at start above): read the ratios.")
    write_results(args.name, {"settings": vars(args), "params": params, "step_seconds": times,
                              "images_per_second_median": rate, "images_per_second_best": best,
                              "default_precision": "bf16" if default_bf16 else "fp32"},
                  "\n".join(rows) + notes)


if __name__ == "__main__":
    main()
