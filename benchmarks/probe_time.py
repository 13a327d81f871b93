"""Linear-probe evaluation time: features extracted once and cached vs re-extracted for every cell.

The transfer protocol probes every (task, label fraction, seed) cell of a dataset with the same
frozen encoder. The toolkit embeds every image once (``evaluate/features.py``: cached on disk by
encoder weights + image content + preprocessing) and then fits only a logistic regression per cell.
The naive loop embeds the images of each cell (its labelled subset and the test set) again.

Measured on IDRiD part B (cleaned as in idrid-transfer; official test split), resnet18 with random
weights, the idrid-transfer preset's preprocessing, 2 tasks x 7 fractions x 3 seeds = 42 cells:

* cached, cold: one extraction of every image + 42 probe fits;
* cached, warm: a second sweep (another run, same encoder and data): 0 images embedded, 42 fits;
* naive: per cell, embed its labelled subset and the test images, then the same fit.

Usage: ``python benchmarks/probe_time.py [--size 128] [--threads 1]``
(``--data synthetic`` runs on generated images where ../shared/data is absent).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SHARED_DATA, write_results  # noqa: E402

from retinassl.config import read_yaml  # noqa: E402
from retinassl.data.cache import PreparedData  # noqa: E402
from retinassl.jobs import features as features_module  # noqa: E402
from retinassl.jobs.features import extract_features  # noqa: E402
from retinassl.jobs.probe import assert_frozen, fit_probe  # noqa: E402
from retinassl.sweeps.transfer_config import resolve_config  # noqa: E402
from retinassl.sweeps.transfer_data import evaluation_folds, label_subsets, prepare_downstream  # noqa: E402
from retinassl.models import build_encoder  # noqa: E402


def cells(config, prepared: PreparedData) -> list[tuple]:
    out = []
    for task in config.tasks:
        for fold, train, test in evaluation_folds(prepared.manifest, task, config.folds, config.seed):
            for seed in config.seeds:
                subsets = label_subsets(prepared.manifest, task, train, config.fractions, seed, fold)
                out += [(task, seed, f, subsets[f], test) for f in config.fractions]
    return out


def fit_all(config, prepared: PreparedData, features: np.ndarray, plan: list[tuple]) -> float:
    start = time.perf_counter()
    for task, seed, _, rows, test in plan:
        y = task.targets(prepared.manifest)
        fit_probe(features[rows], y[rows], features[test], task, task.classes(prepared.manifest),
                  config.probe, seed)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data", choices=["idrid", "synthetic"], default="idrid")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    data = read_yaml("idrid-transfer" if args.data == "idrid" else "transfer-demo")
    if args.data == "idrid":
        data["data"]["options"]["root"] = str(SHARED_DATA / "idrid")
    data["preprocess"]["size"] = args.size
    data["model"] = {"arch": "resnet18"}
    config = resolve_config(data, "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        prepared = prepare_downstream(config, Path(tmp))
        plan = cells(config, prepared)
        torch.manual_seed(0)
        encoder = build_encoder("resnet18")
        cache = Path(tmp) / "cache"
        counted = {"images": 0}
        real_embed = features_module.embed

        def counting(encoder, prepared, *a, **k):
            counted["images"] += len(prepared)
            return real_embed(encoder, prepared, *a, **k)

        features_module.embed = counting
        with assert_frozen(encoder):
            cold = extract_features(encoder, prepared, cache)
            cold_fit = fit_all(config, prepared, cold.values, plan)
            cold_images = counted["images"]
            counted["images"] = 0
            warm = extract_features(encoder, prepared, cache)
            warm_fit = fit_all(config, prepared, warm.values, plan)
            warm_images = counted["images"]
            # naive: embed each cell's labelled rows and the test rows again
            start = time.perf_counter()
            naive_images = 0
            for task, seed, _, rows, test in plan:
                both = np.concatenate([rows, test])
                values = features_module.embed(encoder, prepared.subset(both))
                naive_images += len(both)
                y = task.targets(prepared.manifest)
                fit_probe(values[:len(rows)], y[rows], values[len(rows):], task,
                          task.classes(prepared.manifest), config.probe, seed)
            naive = time.perf_counter() - start
    result = {
        "data": args.data, "images": len(prepared), "cells": len(plan), "size": args.size,
        "threads": args.threads, "feature_dim": int(cold.values.shape[1]),
        "cached_cold": {"extract_seconds": cold.seconds, "fit_seconds": cold_fit,
                        "total_seconds": cold.seconds + cold_fit, "images_embedded": cold_images},
        "cached_warm": {"extract_seconds": warm.seconds, "fit_seconds": warm_fit,
                        "total_seconds": warm.seconds + warm_fit, "images_embedded": warm_images},
        "naive": {"total_seconds": naive, "images_embedded": naive_images},
    }
    rows = [("cached, first sweep", result["cached_cold"]), ("cached, second sweep", result["cached_warm"])]
    lines = ["| linear-probe evaluation | images embedded | extraction s | probe fits s | total s |",
             "|---|---|---|---|---|"]
    for name, r in rows:
        lines.append(f"| {name} | {r['images_embedded']} | {r['extract_seconds']:.1f} | "
                     f"{r['fit_seconds']:.1f} | {r['total_seconds']:.1f} |")
    lines.append(f"| naive (re-embed every cell) | {naive_images} | - | - | {naive:.1f} |")
    text = (f"{len(plan)} probe cells (2 tasks x {len(config.fractions)} fractions x {len(config.seeds)} "
            f"seeds) on {len(prepared)} {args.data} images at {args.size} px, resnet18 (random weights, "
            f"{result['feature_dim']}-d features), {args.threads} thread(s); the encoder state was "
            f"compared before and after (unchanged).\n\n" + "\n".join(lines) + "\n\n"
            f"Speed-up of the cached protocol: {naive / result['cached_cold']['total_seconds']:.1f}x on "
            f"the first sweep, {naive / max(1e-9, result['cached_warm']['total_seconds']):.1f}x on later "
            f"sweeps of the same encoder.")
    write_results(f"probe_time_{args.data}", result, text)
    print(text)


if __name__ == "__main__":
    main()
