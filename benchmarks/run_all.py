"""`make bench`: the speed and overhead benchmarks, one after another, each rewriting its results in
benchmarks/results/ (the hand-written reading below each file's marker is kept).

These are the measured targets of the toolkit's own cost: the engine, pretraining, SSL-GAN,
vessel, OCT, predict and ViT throughput against the bare model (side by side in one run), the probe's
feature cache and the data pipeline; the closing table gives each one's outcome and seconds. The
real-data studies (pretraining and transfer, SSL-GAN tables, cross-dataset) take hours each and are
run one by one with the command recorded in their results file; they are not part of this.

A benchmark that reads a public dataset is skipped, with the reason, when the dataset is not under
the shared data folder (``RETINASSL_SHARED_DATA`` or ``../shared/data``). Run them with nothing else
busy on the cores: two trainings at once slow each other by an order of magnitude.

    .venv/bin/python benchmarks/run_all.py [NAME ...] [--list]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import SHARED_DATA  # noqa: E402

# name -> (the public dataset folder it reads under SHARED_DATA, or None; the arguments of the results it
# rewrites: each file's recorded command, so that a rerun compares with it and takes the time it took)
BENCHMARKS: dict[str, tuple[str | None, list[str]]] = {
    "training_speed": (None, ["--steps", "10", "--repeats", "3", "--cases", "convnet-32px,resnet18-224px"]),
    "pretrain_speed": (None, ["--steps", "10", "--repeats", "3"]),
    "ssl_gan_speed": (None, ["--steps", "30", "--repeats", "3"]),
    "oct_speed": (None, []),
    "predict_speed": (None, []),
    "vit_speed": (None, []),
    "vessel_speed": ("drive", ["--root", str(SHARED_DATA / "drive"), "--threads", "2"]),
    "probe_time": ("idrid", ["--threads", "2"]),
    "data_pipeline": ("idrid", ["--images", "48"]),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"a subset of: {', '.join(BENCHMARKS)}")
    parser.add_argument("--list", action="store_true", help="say what would run, and run nothing")
    args = parser.parse_args()
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {unknown}; known: {', '.join(BENCHMARKS)}")
    outcomes = []
    for name in args.names or list(BENCHMARKS):
        dataset, extra = BENCHMARKS[name]
        command = [sys.executable, f"benchmarks/{name}.py", *extra]  # from the project root, recorded so
        if dataset is not None and not (SHARED_DATA / dataset).is_dir():
            outcomes.append((name, f"skipped: {SHARED_DATA / dataset} is absent", 0.0))
            continue
        if args.list:
            outcomes.append((name, "would run: " + " ".join(command[1:]), 0.0))
            continue
        print(f"== {name}: {' '.join(command[1:])}", flush=True)
        start = time.perf_counter()
        code = subprocess.call(command, cwd=HERE.parent)
        outcomes.append((name, "ok" if code == 0 else f"FAILED (exit {code})", time.perf_counter() - start))
    print("\n| benchmark | outcome | seconds |\n|---|---|---|")
    for name, outcome, seconds in outcomes:
        print(f"| {name} | {outcome} | {seconds:.0f} |")
    if any(outcome.startswith("FAILED") for _, outcome, _ in outcomes):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
