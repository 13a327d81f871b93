"""`retinassl predict` throughput vs the bare model in a tight loop, side by side in one run (issue 17).

A whole-image classifier (ResNet-18, 512 px) is saved, then applied to N synthetic fundus photographs
(a) through `predict` from the image files, decoding and the preprocessed cache included (cold:
an empty cache; warm: the same images again, memory-mapped), and (b) as the bare model's forward
pass in a tight loop over the same preprocessed tensors (batch 32, eval mode, no grad, the same
precision). Images/s of each and the ratios.

    flock /work/heavy.lock nice -n 5 .venv/bin/python benchmarks/predict_speed.py [--images 96]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _common import write_results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args()
    from retinassl.data.cache import Cache
    from retinassl.data.datasets import ImageDataset
    from retinassl.data.preprocess import PreprocessConfig
    from retinassl.data.synthetic import generate_dataset
    from retinassl.jobs.finetune import save_classifier
    from retinassl.jobs.predict import input_manifest, predict
    from retinassl.methods.base import build_method
    from retinassl.metrics.tasks import TaskSpec
    from retinassl.models import build_encoder

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        generate_dataset(root / "syn", n_images=args.images, size=args.size, seed=0)
        images = sorted((root / "syn" / "images").glob("*.png"))
        torch.manual_seed(0)
        method = build_method("supervised", {}, build_encoder("resnet18")).eval()
        preprocess = PreprocessConfig(size=args.size, normalize="image")
        save_classifier(root / "model", method, arch="resnet18", kwargs={}, preprocess=preprocess.model_dump(),
                        task=TaskSpec(name="dr", label="abnormal"))
        manifest = input_manifest([str(p) for p in images])
        timings = {}
        for label, cache in (("predict, cold cache (decode + preprocess + forward)", root / "cache"),
                             ("predict, warm cache (memory-mapped + forward)", root / "cache")):
            start = time.perf_counter()
            predict(root / "model", manifest, root / f"out-{len(timings)}", cache_dir=cache)
            timings[label] = time.perf_counter() - start
        prepared = Cache(root / "cache").prepare(manifest, preprocess)
        data = ImageDataset(prepared)
        batch = torch.stack([data[i]["image"] for i in range(len(data))])
        start = time.perf_counter()
        with torch.no_grad():
            for s in range(0, len(batch), 32):
                method.scores(batch[s:s + 32])
        timings["bare model forward (tight loop, tensors in memory)"] = time.perf_counter() - start
    bare = timings["bare model forward (tight loop, tensors in memory)"]
    rows = ["| path | seconds | images/s | time vs bare forward |", "|---|---:|---:|---:|"]
    for label, seconds in timings.items():
        rows.append(f"| {label} | {seconds:.1f} | {args.images / seconds:.2f} | {seconds / bare:.2f} x |")
    note = (f"\n\n{args.images} synthetic photographs at {args.size} px, ResNet-18 (random weights), "
            f"{torch.get_num_threads()} threads. Goal of issue 17: predict within 15 % of the bare forward "
            f"(1.15 x), decoding included.")
    write_results("predict_speed", {"images": args.images, "size": args.size, "seconds": timings,
                                    "ratio_vs_bare": {k: v / bare for k, v in timings.items()},
                                    "threads": torch.get_num_threads(), "cores": np.nan}, "\n".join(rows) + note)
    print("\n".join(rows) + note)


if __name__ == "__main__":
    main()
