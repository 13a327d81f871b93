"""Which encoder and input size for the real-data transfer study (issue 18)? Measured, not guessed.

Two measurements per candidate (architecture x input side):

1. **Speed**: images/s of a training step (forward + backward + AdamW on the encoder and a linear
   head, the engine's CPU numerics: channels_last + bf16 autocast where supported) and of inference
   (frozen forward, no grad), on random inputs, ``--threads`` torch threads (2: both cores of the
   shared machine). Candidates are interleaved one step at a time (after warm-up steps), so load
   from other processes on the machine hits them alike; reported: the median step rate.
2. **Frozen features at scratch init**: the encoder with seeded random weights embeds the cleaned
   IDRiD part-B *training* images (the same cleaning as the ``idrid-transfer-real`` sweep); a
   logistic probe (the sweep's probe: L2, C chosen by inner 3-fold CV) is fitted and scored by
   patient-grouped, grade-stratified 3-fold cross-validation **inside the training split**. The
   official test images are never embedded or scored: the choice must not look at them.
   Tasks: referable DR (grade >= 2) and any DR (grade >= 1); reported: the mean over folds and
   init seeds of the validation AUC.

Saved (pretrained) encoders are probed the same way with ``--encoder NAME=DIR`` (at every ``--sizes``,
``--skip speed``): e.g. which resolution of a pretraining to carry on with, chosen inside the training
split rather than on the test results.

Usage::

    flock /work/heavy.lock nice -n 5 .venv/bin/python benchmarks/encoder_choice.py \\
        [--archs resnet18,convnet] [--sizes 224,384] [--threads 2] [--steps 6] [--seeds 0,1]
        [--encoder NAME=DIR ...] [--results-name encoder_choice]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SHARED_DATA, write_results  # noqa: E402

from retinassl.config import ModelConfig  # noqa: E402
from retinassl.hardware import cpu_supports_bf16  # noqa: E402
from retinassl.models import build_encoder  # noqa: E402

KWARGS = {"resnet18": {}, "convnet": {"width": 96, "batch_norm": True, "dropout": False}}
BATCH = {"resnet18": 16, "convnet": 8}


def _autocast() -> contextlib.AbstractContextManager:
    if cpu_supports_bf16():
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class Candidate:
    """One (arch, size): an encoder + linear head, its optimiser and a fixed random batch."""

    def __init__(self, arch: str, size: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.encoder = build_encoder(arch, **KWARGS[arch])
            self.head = torch.nn.Linear(self.encoder.num_features, 1)
        self.model = torch.nn.Sequential(self.encoder, self.head).to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
        self.batch = BATCH[arch]
        # (B, 3, size, size) inputs in [0, 1] and (B,) binary targets
        self.x = torch.rand(self.batch, 3, size, size, generator=generator).contiguous(
            memory_format=torch.channels_last)
        self.y = (torch.rand(self.batch, generator=generator) > 0.5).float()
        self.train_rates: list[float] = []
        self.infer_rates: list[float] = []

    def train_step(self) -> float:
        self.model.train()
        start = time.perf_counter()
        with _autocast():
            logits = self.model(self.x).squeeze(1)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), self.y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return self.batch / (time.perf_counter() - start)

    def infer_step(self) -> float:
        self.model.eval()
        start = time.perf_counter()
        with torch.no_grad(), _autocast():
            self.encoder(self.x)
        return self.batch / (time.perf_counter() - start)


def speed(archs: list[str], sizes: list[int], steps: int, warmup: int) -> list[dict]:
    """Median training and inference images/s per candidate (interleaved steps)."""
    cands = {(a, s): Candidate(a, s, seed=0) for a in archs for s in sizes}
    for c in cands.values():
        for _ in range(warmup):
            c.train_step()
            c.infer_step()
    for _ in range(steps):
        for c in cands.values():
            c.train_rates.append(c.train_step())
            c.infer_rates.append(c.infer_step())
    return [{"arch": a, "size": s, "batch": c.batch,
             "params_m": sum(p.numel() for p in c.encoder.parameters()) / 1e6,
             "train_images_per_s": statistics.median(c.train_rates),
             "infer_images_per_s": statistics.median(c.infer_rates)}
            for (a, s), c in cands.items()]


def probe(archs: list[str], sizes: list[int], seeds: list[int], folds: int, workers: int,
          encoders: dict[str, Path] | None = None) -> list[dict]:
    """Validation AUC of a linear probe on scratch-init frozen features (and on the saved ``encoders``),
    inside IDRiD's training split."""
    from retinassl.models.checkpoint import load_encoder
    from retinassl.data.splits import stratified_kfold
    from retinassl.jobs.features import extract_features
    from retinassl.jobs.probe import ProbeConfig, assert_frozen, fit_probe
    from retinassl.metrics.tasks import TaskSpec
    from retinassl.models.initialize import seeded_initial_encoder
    from retinassl.sweeps.transfer import TransferConfig, prepare_downstream

    tasks = [TaskSpec(name="referable", kind="binary", label="dr_grade", positive_from=2),
             TaskSpec(name="any_dr", kind="binary", label="dr_grade", positive_from=1)]
    out = []
    for size in sizes:
        config = TransferConfig.model_validate({
            "data": {"source": "idrid", "options": {"root": str(SHARED_DATA / "idrid"), "parts": ["B"]},
                     "workers": workers},
            "dedupe": True, "detect_duplicates": True,
            "preprocess": {"size": size, "normalize": "max"}})
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            prepared = prepare_downstream(config, Path(tmp))
        frame = prepared.manifest.frame
        train = np.flatnonzero((frame["split"].astype(str) != "test").to_numpy())
        train_only = prepared.subset(train) if hasattr(prepared, "subset") else None
        if train_only is None:
            raise SystemExit("PreparedData has no subset(): cannot embed the training split alone")
        grades = frame["dr_grade"].to_numpy()[train].astype(int)
        groups = frame["patient"].astype(str).to_numpy()[train]
        splits = stratified_kfold(grades, groups, folds, seed=0)
        candidates = [(arch, seed) for arch in archs for seed in seeds]
        candidates += [(name, seed) for name in (encoders or {}) for seed in seeds]
        for arch, seed in candidates:
            if arch in (encoders or {}):  # a saved encoder; the seed is the probe's
                encoder = load_encoder(encoders[arch])[0].eval()
            else:
                encoder = seeded_initial_encoder(ModelConfig(arch=arch, kwargs=KWARGS[arch]), seed).encoder
            with assert_frozen(encoder):
                features = extract_features(encoder, train_only, config.data.cache_dir)
            for task in tasks:
                y = task.targets(train_only.manifest)
                aucs = []
                for k, (tr, va) in enumerate(splits):
                    scores, _ = fit_probe(features.values[tr], y[tr], features.values[va], task, 1,
                                          ProbeConfig(), seed)
                    aucs.append(task.metrics(y[va], scores)["auc"])
                out.append({"arch": arch, "size": size, "seed": seed, "task": task.name,
                            "val_auc": float(np.mean(aucs)), "fold_aucs": [float(a) for a in aucs],
                            "extract_seconds": features.seconds, "images": int(len(train))})
                print(f"probe {arch} {size}px seed {seed} {task.name}: val AUC {np.mean(aucs):.3f} "
                      f"({', '.join(f'{a:.3f}' for a in aucs)})", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--archs", default="resnet18,convnet")
    parser.add_argument("--sizes", default="224,384")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--skip", choices=["speed", "probe"], default=None)
    parser.add_argument("--encoder", action="append", default=[], metavar="NAME=DIR",
                        help="also probe this saved encoder (at every --sizes; with --skip speed)")
    parser.add_argument("--results-name", default="encoder_choice")
    args = parser.parse_args()
    encoders = {name: Path(path) for name, _, path in (item.partition("=") for item in args.encoder)}
    if encoders and args.skip != "speed":
        raise SystemExit("--encoder: saved encoders are only probed; add --skip speed")
    torch.set_num_threads(args.threads)
    archs = [a for a in args.archs.split(",") if a]
    sizes = [int(s) for s in args.sizes.split(",") if s]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    rates = [] if args.skip == "speed" else speed(archs, sizes, args.steps, args.warmup)
    for r in rates:
        print(f"speed {r['arch']} {r['size']}px: train {r['train_images_per_s']:.1f} img/s, "
              f"inference {r['infer_images_per_s']:.1f} img/s", flush=True)
    probes = [] if args.skip == "probe" else probe(archs, sizes, seeds, args.folds, workers=args.threads,
                                                   encoders=encoders)
    lines = [f"Torch threads: {args.threads}; bf16 autocast: {cpu_supports_bf16()}."]
    if rates:
        lines += [f"Speed: channels_last; {args.steps} interleaved timed steps after {args.warmup} warm-up steps "
                  "(median).", "", "| arch | px | batch | params (M) | train img/s | inference img/s |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r['arch']} | {r['size']} | {r['batch']} | {r['params_m']:.2f} | "
                  f"{r['train_images_per_s']:.1f} | {r['infer_images_per_s']:.1f} |" for r in rates]
    if probes:
        lines += ["", "Linear probe on scratch-init (random, seeded) frozen features"
                  + ("" if not encoders else " and on saved encoders ("
                     + ", ".join(f"{k}: `{v}`" for k, v in encoders.items()) + "; the seed is the probe's)")
                  + ", IDRiD part-B training "
                  f"images only ({probes[0]['images']} after cleaning), {args.folds}-fold patient-grouped "
                  "grade-stratified CV inside the training split; mean validation AUC over folds "
                  f"(and over init seeds {seeds}). The test split is not used.", "",
                  "| arch | px | task | val AUC (mean over seeds) | per seed | feature extraction s |",
                  "|---|---|---|---|---|---|"]
        keys = dict.fromkeys((p["arch"], p["size"], p["task"]) for p in probes)
        for arch, size, task in keys:
            rows = [p for p in probes if (p["arch"], p["size"], p["task"]) == (arch, size, task)]
            lines.append(f"| {arch} | {size} | {task} | {np.mean([r['val_auc'] for r in rows]):.3f} | "
                         + ", ".join(f"{r['val_auc']:.3f}" for r in rows)
                         + f" | {np.mean([r['extract_seconds'] for r in rows]):.0f} |")
    text = "\n".join(lines)
    write_results(args.results_name, {"speed": rates, "probe": probes,
                                      "encoders": {k: str(v) for k, v in encoders.items()}}, text)
    print(text)


if __name__ == "__main__":
    main()
