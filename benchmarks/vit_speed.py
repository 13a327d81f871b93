"""ViT-S/16 vs ResNet-18 on the CPU at 224 px: images per second for a training step and for
inference, side by side in one run.

- training step: pooled embedding -> linear head (2 classes) -> cross-entropy -> backward -> AdamW
  step, on a fixed random batch (the bare model loop: no data loading, no Lightning);
- inference: the pooled embedding under ``torch.inference_mode``;
- MAE pretraining step of the same ViT-S/16: encoder on the visible 25 % of the patches, a light
  decoder, normalised-pixel loss (the saving from masking, against the full-image training step);
- precisions: float32 eager, and bf16 autocast with channels_last (the toolkit's CPU default where the
  processor supports bf16; measured anyway, the table says which is the default here).

The models alternate within each round (ViT, ResNet, ViT, ...), so load from other processes on the
shared machine affects both alike; read the ratios, the absolute rates depend on the load (recorded).

Usage: ``flock /work/heavy.lock nice -n 5 .venv/bin/python benchmarks/vit_speed.py [--batch 16]
[--steps 3] [--rounds 3] [--threads 2]``; writes ``benchmarks/results/vit_speed.{json,md}``.
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

MODELS = {"vit_small/16": ("vit_small", {"patch_size": 16, "img_size": 224, "pooling": "mean"}),
          "resnet18": ("resnet18", {})}


def build(name: str, seed: int) -> nn.Module:
    arch, kwargs = MODELS[name]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = build_encoder(arch, **kwargs)
        return nn.Sequential(encoder, nn.Linear(encoder.num_features, 2))


def train_rate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, bf16: bool) -> float:
    """Images per second of ``steps`` training steps (after one untimed warm-up step)."""
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return _rate(step, steps, x.shape[0])


def mae_rate(model: nn.Module, x: torch.Tensor, steps: int, bf16: bool, mask_ratio: float = 0.75) -> float:
    """Images per second of an MAE pretraining step (He et al. 2022): the encoder on the visible
    quarter of the patches, a light decoder (256 wide, 4 blocks), normalised-pixel loss on the hidden
    patches, backward, AdamW; a fresh seeded mask every step."""
    from retinassl.models.mae import MAEDecoder, mae_loss
    from retinassl.models.vit import random_masking

    encoder = model[0].train()
    grid = encoder.patch_grid(x.shape[2], x.shape[3])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        decoder = MAEDecoder(encoder.num_features, encoder.patch_size, 3, grid, encoder.num_prefix_tokens,
                             decoder_dim=256, depth=4, num_heads=8)
    optimizer = torch.optim.AdamW(list(encoder.parameters()) + list(decoder.parameters()), lr=1e-4)
    generator = torch.Generator().manual_seed(0)

    def step() -> None:
        keep, mask, restore = random_masking(x.shape[0], grid[0] * grid[1], mask_ratio, generator)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            tokens, _ = encoder.tokens(x, keep=keep)
            loss = mae_loss(decoder(encoder.norm(tokens), restore, grid), x, mask, encoder.patch_size)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return _rate(step, steps, x.shape[0])


def infer_rate(model: nn.Module, x: torch.Tensor, steps: int, bf16: bool) -> float:
    """Images per second of the pooled embedding in inference mode (after one warm-up batch)."""
    model.eval()
    encoder = model[0]

    def step() -> None:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            encoder(x)

    return _rate(step, steps, x.shape[0])


def _rate(step: Callable[[], None], steps: int, batch: int) -> float:
    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3, help="timed batches per model, mode and round")
    parser.add_argument("--rounds", type=int, default=3)
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

    rates: dict[str, dict[str, list[float]]] = {m: {} for m in MODELS}
    params = {}
    for round_ in range(args.rounds):
        for precision in ("fp32", "bf16"):
            bf16 = precision == "bf16"
            for name in MODELS:
                model = build(name, seed=round_)
                params[name] = sum(p.numel() for p in model[0].parameters())
                xin = x
                if bf16:
                    model = model.to(memory_format=torch.channels_last)
                    xin = x.contiguous(memory_format=torch.channels_last)
                rates[name].setdefault(f"train_{precision}", []).append(train_rate(model, xin, y, args.steps, bf16))
                rates[name].setdefault(f"infer_{precision}", []).append(infer_rate(model, xin, args.steps, bf16))
                if name == "vit_small/16":
                    rates[name].setdefault(f"mae_{precision}", []).append(mae_rate(model, xin, args.steps, bf16))
                print(round_, precision, name, {k: round(v[-1], 2) for k, v in rates[name].items()}, flush=True)

    median = {m: {k: statistics.median(v) for k, v in r.items()} for m, r in rates.items()}
    vit, res = median["vit_small/16"], median["resnet18"]
    rows = ["| model | params (M) | mode | precision | images/s (median of rounds) | ViT / ResNet-18 |",
            "|---|---:|---|---|---:|---:|"]
    for mode in ("train", "infer"):
        for precision in ("fp32", "bf16"):
            key = f"{mode}_{precision}"
            for name in MODELS:
                ratio = f"{vit[key] / res[key]:.2f}" if name == "vit_small/16" else ""
                label = "training step" if mode == "train" else "inference"
                default = " (default)" if (precision == "bf16") == default_bf16 else ""
                rows.append(f"| {name} | {params[name] / 1e6:.1f} | {label} | {precision}{default} | "
                            f"{median[name][key]:.1f} | {ratio} |")
    for precision in ("fp32", "bf16"):
        key = f"mae_{precision}"
        default = " (default)" if (precision == "bf16") == default_bf16 else ""
        rows.append(f"| vit_small/16 MAE step (75 % masked, decoder 256x4) | {params['vit_small/16'] / 1e6:.1f} | "
                    f"pretraining step | {precision}{default} | {vit[key]:.1f} | "
                    f"{vit[key] / vit[f'train_{precision}']:.2f} x the full-image training step |")
    notes = (f"\n\n{args.size} px, batch {args.batch}, {args.threads} threads, {args.rounds} rounds x "
             f"{args.steps} timed batches per model, mode and precision (models alternate within a "
             f"round). Training step = pooled embedding + linear head + cross-entropy + backward + "
             f"AdamW; inference = pooled embedding under inference_mode. bf16 = autocast + "
             f"channels_last; the toolkit's CPU default here is {'bf16' if default_bf16 else 'fp32'} "
             f"(cpu_supports_bf16() = {default_bf16}).")
    write_results(args.name, {"settings": vars(args), "params": params, "rates": rates, "median": median,
                              "vit_over_resnet": {k: vit[k] / res[k] for k in res},
                              "mae_over_full_step": {p: vit[f"mae_{p}"] / vit[f"train_{p}"] for p in ("fp32", "bf16")},
                              "default_precision": "bf16" if default_bf16 else "fp32"},
                  "\n".join(rows) + notes)


if __name__ == "__main__":
    main()
