"""Speed of the patch SSL-GAN: training patches/s of the GAN step through the toolkit's engine vs the
same networks in a bare PyTorch loop (measured side by side, interleaved, in one run), and the
inference time of one image's 64-patch heatmap.

    .venv/bin/python benchmarks/ssl_gan_speed.py [--width 32] [--generator 128,64,32,32]
        [--batch 64] [--steps 30] [--repeats 2] [--precision auto]

A "step" is one discriminator update and one generator update on a batch of ``batch`` unlabelled
and ``batch`` labelled patches (32x32 crops of 40x40 windows) plus ``batch`` generated ones;
patches/s counts the unlabelled patches (one pass over them is an epoch). Both paths run the same
modules, losses, augmentation and EMA update on the same dataset; the engine path adds Lightning,
per-batch RNG streams, logging and resumable checkpoints (``checkpoint_every_n_steps``). Steps are
timed from one step's end to the next (startup excluded), after ``warmup`` steps.

Writes benchmarks/results/ssl_gan_speed.json and .md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_results  # noqa: E402

from retinassl.config import EngineConfig  # noqa: E402
from retinassl.engine.fit import fit, resolve_precision  # noqa: E402
from retinassl.methods.base import build_method  # noqa: E402
from retinassl.models import build_encoder  # noqa: E402
from retinassl.io.rundir import RunDir  # noqa: E402
from retinassl.losses import gan as losses  # noqa: E402
from retinassl.models.patch_classifier import PatchClassifier  # noqa: E402
from retinassl.data.patch_bank import PatchBank, SemiSupervisedPatches  # noqa: E402
from retinassl.methods.ssl_gan import crop_and_flip, ema_update  # noqa: E402


def random_bank(n_images: int, patch: int = 32, margin: int = 4, labelled: bool = True,
                seed: int = 0) -> PatchBank:
    rng = np.random.default_rng(seed)
    w = patch + 2 * margin
    windows = torch.from_numpy(rng.integers(0, 256, (n_images * 64, 3, w, w), dtype=np.uint8))
    labels = (rng.random(n_images * 64) < 0.15).astype(np.int64) if labelled else None
    return PatchBank(windows, torch.full((n_images, 3), 1 / 255.0), torch.zeros(n_images, 3), labels,
                     np.arange(n_images), 8, patch, margin)


def make_method(args: argparse.Namespace):
    encoder = build_encoder("convnet", width=args.width, weight_norm=True, dropout=True)
    return build_method("ssl-gan", {"generator_channels": args.generator, "init_seed": 0}, encoder)


def engine_run(args: argparse.Namespace, dataset) -> list[float]:
    method = make_method(args)
    stamps: list[float] = []
    after = method.after_step

    def timed_after_step() -> None:
        after()
        stamps.append(time.perf_counter())

    method.after_step = timed_after_step  # type: ignore[method-assign]
    with tempfile.TemporaryDirectory() as tmp:
        run = RunDir(Path(tmp))
        run.update_status(status="running")
        cfg = EngineConfig(max_epochs=1000, max_steps=args.warmup + args.steps, batch_size=args.batch,
                           precision=args.precision, checkpoint_every_n_steps=args.checkpoint_every)
        fit(method, dataset, config=cfg, run=run, seed=0)
    return list(np.diff(stamps[args.warmup - 1:]))


def bare_run(args: argparse.Namespace, dataset) -> list[float]:
    """The same modules, losses, augmentation and EMA, in a plain loop."""
    method = make_method(args)
    precision = resolve_precision(args.precision, "cpu")
    bf16 = precision.startswith("bf16")
    enc, head, gen = method.encoder, method.head, method.generator_net
    if bf16:  # the engine's channels_last default on CPU comes with its bf16 path
        method.to(memory_format=torch.channels_last)
    d_params = [*enc.parameters(), *head.parameters()]
    opt_d = torch.optim.Adam(d_params, lr=3e-4, betas=(0.5, 0.999))
    opt_g = torch.optim.Adam(gen.parameters(), lr=3e-4, betas=(0.5, 0.999))
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch, shuffle=True, drop_last=True,
                                         generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    method.train()
    stamps = []
    step = 0
    while step < args.warmup + args.steps:
        for batch in loader:
            def real(x: torch.Tensor) -> torch.Tensor:
                x = crop_and_flip(x, 32, g) * 2 - 1
                return x.contiguous(memory_format=torch.channels_last) if bf16 else x

            # discriminator
            for p in d_params:
                p.requires_grad_(True)
            gen.requires_grad_(False)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                lab, unl = real(batch["labelled"]), real(batch["unlabelled"])
                with torch.no_grad():
                    fake = gen(gen.sample_latent(unl.shape[0], g))
                feats = enc(torch.cat([lab, unl, fake]))
                logits = head(feats)
                n = lab.shape[0]
                loss_d = losses.supervised_loss(logits[:n], batch["label"]) + \
                    losses.unsupervised_loss(logits[:2 * n], logits[2 * n:])
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
            # generator
            for p in d_params:
                p.requires_grad_(False)
            gen.requires_grad_(True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                unl = real(batch["unlabelled"])
                with torch.no_grad():
                    real_features = enc(unl)
                fake_features = enc(gen(gen.sample_latent(unl.shape[0], g)))
                loss_g = losses.feature_matching_loss(real_features, fake_features)
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
            ema_update(method.ema_encoder, enc, 0.999)
            ema_update(method.ema_head, head, 0.999)
            stamps.append(time.perf_counter())
            step += 1
            if step >= args.warmup + args.steps:
                break
    return list(np.diff(stamps[args.warmup - 1:]))


def heatmap_time(args: argparse.Namespace, repeats: int = 20) -> dict[str, float]:
    """Seconds to score one image's 64 patches (EMA discriminator, folded head) and draw the
    overlay (Gaussian blur + colour map) at 512 px."""
    from retinassl.figures.heatmap import overlay
    from retinassl.jobs.patch_evaluation import predict_bank

    method = make_method(args).eval()
    classifier = PatchClassifier.from_method(method, 32)
    bank = random_bank(1, margin=0, labelled=False)
    image = np.random.default_rng(0).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    predict, total = [], []
    for _ in range(repeats + 2):
        t0 = time.perf_counter()
        logits = predict_bank(classifier, bank)[0]
        t1 = time.perf_counter()
        overlay(image, 1 / (1 + np.exp(-logits.reshape(8, 8))))
        t2 = time.perf_counter()
        predict.append(t1 - t0)
        total.append(t2 - t0)
    return {"predict_64_patches_s": statistics.median(predict[2:]),
            "predict_and_overlay_s": statistics.median(total[2:])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--generator", type=lambda s: [int(c) for c in s.split(",")],
                        default=[128, 64, 32, 32])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--checkpoint-every", type=int, default=500)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--name", default="ssl_gan_speed")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    unlabelled = random_bank(149)
    dataset = SemiSupervisedPatches(unlabelled, unlabelled.images(np.arange(20)), seed=0)
    engine, bare = [], []
    for r in range(args.repeats):  # interleaved, so load changes hit both paths alike
        engine += engine_run(args, dataset)
        bare += bare_run(args, dataset)
        print(f"repeat {r}: engine {args.batch / statistics.median(engine):.1f}, bare "
              f"{args.batch / statistics.median(bare):.1f} patches/s", flush=True)
    e, b = statistics.median(engine), statistics.median(bare)
    heat = heatmap_time(args)
    data = {"settings": {k: v for k, v in vars(args).items()},
            "precision": resolve_precision(args.precision, "cpu"),
            "engine_step_s": e, "bare_step_s": b,
            "engine_patches_per_s": args.batch / e, "bare_patches_per_s": args.batch / b,
            "engine_over_bare_time": e / b, "engine_steps": engine, "bare_steps": bare, **heat}
    table = (f"| path | s/step (median of {len(engine)}) | unlabelled patches/s |\n|---|---|---|\n"
             f"| toolkit engine (`fit`, Lightning) | {e:.3f} | {args.batch / e:.1f} |\n"
             f"| bare PyTorch loop, same modules | {b:.3f} | {args.batch / b:.1f} |\n\n"
             f"Engine time / bare time: **{e / b:.3f}** (target <= 1.15). Precision "
             f"{data['precision']}; discriminator width {args.width}, generator {args.generator}, "
             f"batch {args.batch} unlabelled + {args.batch} labelled + {args.batch} generated.\n\n"
             f"Heatmap of one image (64 patches, EMA discriminator): prediction "
             f"{1000 * heat['predict_64_patches_s']:.1f} ms, prediction + Gaussian-blurred overlay "
             f"at 512 px {1000 * heat['predict_and_overlay_s']:.1f} ms.")
    write_results(args.name, data, table)
    print(table)


if __name__ == "__main__":
    main()
