"""Scale: preparing a large synthetic dataset and training one epoch on it stay within 3 GB of peak
memory, and their time grows linearly with the number of images (issue 7).

What it does, in a work directory (default ``/tmp/retinassl-scale``, several GB):

1. for each size N in ``--sizes`` (2,000, 5,000, 20,000) generates N synthetic fundus images of
   ``--image-size`` px (256: 20,000 PNGs with seven 1-bit masks each is about 2.5 GB and feasible
   on 2 cores; 512 px would take four times as long to generate for no change in what is
   measured) with ``generate_dataset`` (``--workers`` processes; the sets grow in one folder, the
   first images of a larger set being the same files), then
2. as the user would, runs in subprocesses
   - ``retinassl data prepare`` (manifest -> preprocessed cache at ``--prep-size`` px, ``data.workers``
     processes, a fresh cache per size, so every image is decoded), then
   - ``retinassl train`` for exactly one epoch (``engine.max_epochs=1``, a whole-image ConvNet
     classifier of ``abnormal`` on the cached images; the run's own prepare step is a cache hit),
     which also predicts the test split and writes the report;
3. samples every 0.2 s the resident set size of the whole process tree (the command and all its
   children: preprocessing workers, DDP ranks, ...) and records the peak, and the wall time.

RSS of a process tree counts shared pages once per process (an over-estimate with fork()ed
workers) and includes the memory-mapped cache pages a process has touched (file-backed, reclaimable):
so the peak reported is an upper bound on what the job needs.

Usage (long: run it in the background under the heavy-job lock)::

    nohup flock /work/heavy.lock nice -n 5 .venv/bin/python benchmarks/scale.py > /tmp/scale.log 2>&1 &
    python benchmarks/scale.py --sizes 200,500   # a quick check

Writes ``benchmarks/results/scale.json`` and ``scale.md`` after every size.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

from _common import ROOT, write_results

RETINASSL = [str(Path(sys.executable).with_name("retinassl"))]
LIMIT_BYTES = 3 * 1024 ** 3


def tree_rss(proc: psutil.Process) -> tuple[int, int]:
    """(sum of RSS over ``proc`` and its descendants, largest single RSS)."""
    total = largest = 0
    try:
        procs = [proc] + proc.children(recursive=True)
    except psutil.Error:
        return 0, 0
    for p in procs:
        try:
            rss = p.memory_info().rss
        except psutil.Error:
            continue
        total += rss
        largest = max(largest, rss)
    return total, largest


def measure(cmd: list[str], env: dict[str, str], log_path: Path, interval: float = 0.2) -> dict:
    """Run ``cmd``; its wall time, exit status and peak tree RSS."""
    start = time.perf_counter()
    with open(log_path, "w") as log:
        popen = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        proc = psutil.Process(popen.pid)
        peak = {"tree": 0, "single": 0, "processes": 1}
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                total, largest = tree_rss(proc)
                peak["tree"] = max(peak["tree"], total)
                peak["single"] = max(peak["single"], largest)
                try:
                    peak["processes"] = max(peak["processes"], 1 + len(proc.children(recursive=True)))
                except psutil.Error:
                    pass
                stop.wait(interval)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        code = popen.wait()
        stop.set()
        thread.join()
    seconds = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"{' '.join(cmd)} failed with status {code}; see {log_path}:\n"
                         + log_path.read_text()[-3000:])
    return {"seconds": seconds, "peak_rss_tree_mb": peak["tree"] / 2 ** 20,
            "peak_rss_single_mb": peak["single"] / 2 ** 20, "processes": peak["processes"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="2000,5000,20000")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--prep-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--work", type=Path, default=Path("/tmp/retinassl-scale"))
    parser.add_argument("--open-files", type=int, default=1024,
                        help="RLIMIT_NOFILE for the measured commands (1024: the usual default)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "RETINASSL_PROGRESS": "0", "PYTHONUNBUFFERED": "1"}
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(args.open_files, hard), hard))  # inherited

    # 1. the synthetic images: generated per size into one folder (the first N images of a larger
    # set are the same files, re-written identically), so that the figures of the smaller sizes are
    # written before the largest set exists
    data_dir = work / f"synthetic-{args.image_size}"
    generation = []
    import pandas as pd

    rows = []
    for n in sizes:
        marker = data_dir / f"manifest-{n}.csv"
        if not marker.is_file():
            script = (f"from retinassl.data.synthetic import generate_dataset; "
                      f"generate_dataset({str(data_dir)!r}, {n}, size={args.image_size}, "
                      f"prevalence=0.5, seed=0, workers={args.workers}, manifest_name='manifest-{n}.csv')")
            gen = measure([sys.executable, "-c", script], env, work / f"generate-{n}.log")
            gen["images"] = n
            generation.append(gen)
            print(f"generated {n} images in {gen['seconds']:.0f} s", flush=True)
        manifest = marker
        cache = work / f"cache-{n}"
        shutil.rmtree(cache, ignore_errors=True)
        runs = work / f"runs-{n}"
        shutil.rmtree(runs, ignore_errors=True)
        common = ["data.source=manifest", f"data.manifest={manifest}", f"data.cache_dir={cache}",
                  f"preprocess.size={args.prep_size}"]
        prep = measure(RETINASSL + ["data", "prepare", "demo", *common, f"data.workers={args.workers}",
                                    "--out", str(work / f"prepared-{n}.csv")], env,
                       work / f"prepare-{n}.log")
        print(f"{n}: prepare {prep['seconds']:.0f} s, peak {prep['peak_rss_tree_mb']:.0f} MB", flush=True)
        train = measure(RETINASSL + [
            "train", "demo", *common, "data.workers=0", "task.kind=image", "task.label=abnormal",
            "task.heatmaps=0", "model.arch=convnet", "model.kwargs={width: 16}",
            "preprocess.normalize=max", "method={name: supervised, lr: 0.002, augment: dihedral}",
            "engine.max_epochs=1", f"engine.batch_size={args.batch_size}",
            "engine.checkpoint_every_n_steps=100", "engine.log_every_n_steps=50",
            "--runs-dir", str(runs)], env, work / f"train-{n}.log")
        results = pd.read_csv(next(runs.glob("*/results.csv")))
        value = dict(zip(results["metric"], results["value"]))
        train["engine_seconds"] = float(value.get("train_seconds", float("nan")))
        train["batches"] = int(value.get("train_batches", 0))
        print(f"{n}: train {train['seconds']:.0f} s (engine {train['engine_seconds']:.0f} s, "
              f"{train['batches']} batches), peak {train['peak_rss_tree_mb']:.0f} MB", flush=True)
        split = pd.read_csv(manifest, dtype=str, keep_default_na=False)["split"]
        rows.append({"images": n, "train_images": int((split == "train").sum()),
                     "prepare": prep, "train": train})
        shutil.rmtree(cache, ignore_errors=True)  # a few GB per size
        report(rows, generation, args)
    if not args.keep:
        for n in sizes:
            shutil.rmtree(work / f"runs-{n}", ignore_errors=True)


def report(rows: list[dict], generation: list[dict], args: argparse.Namespace) -> None:
    """Write results/scale.json and scale.md for the sizes measured so far."""
    base = rows[0]
    for r in rows:
        for stage, key in (("prepare", "seconds"), ("train", "seconds"), ("train", "engine_seconds")):
            r[stage][f"{key}_per_1000"] = 1000 * r[stage][key] / r["images"]
        r["scale_vs_smallest"] = r["images"] / base["images"]
        r["prepare"]["time_ratio_vs_smallest"] = r["prepare"]["seconds"] / base["prepare"]["seconds"]
        r["train"]["engine_time_ratio_vs_smallest"] = r["train"]["engine_seconds"] / base["train"]["engine_seconds"]
    peak = max(max(r["prepare"]["peak_rss_tree_mb"], r["train"]["peak_rss_tree_mb"]) for r in rows)
    lines = ["| images | stage | wall s | s / 1000 images | time ratio vs smallest (size ratio) | "
             "peak RSS, process tree (MB) | largest process (MB) | processes |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        p, t = r["prepare"], r["train"]
        lines.append(f"| {r['images']} | prepare (workers={args.workers}) | {p['seconds']:.0f} | "
                     f"{p['seconds_per_1000']:.1f} | {p['time_ratio_vs_smallest']:.2f} "
                     f"({r['scale_vs_smallest']:.1f}) | {p['peak_rss_tree_mb']:.0f} | "
                     f"{p['peak_rss_single_mb']:.0f} | {p['processes']} |")
        lines.append(f"| {r['images']} | train 1 epoch ({r['train_images']} train images, "
                     f"{t['batches']} batches): command / engine | {t['seconds']:.0f} / "
                     f"{t['engine_seconds']:.0f} | {t['seconds_per_1000']:.1f} / "
                     f"{t['engine_seconds_per_1000']:.1f} | {t['engine_time_ratio_vs_smallest']:.2f} "
                     f"({r['scale_vs_smallest']:.1f}) | {t['peak_rss_tree_mb']:.0f} | "
                     f"{t['peak_rss_single_mb']:.0f} | {t['processes']} |")
    verdict = "under" if peak * 2 ** 20 < LIMIT_BYTES else "OVER"
    notes = (f"\nSynthetic fundus images of {args.image_size} px (PNG + 7 one-bit masks each), "
             f"preprocessed to {args.prep_size} px; train = `retinassl train demo task.kind=image` "
             f"(ConvNet width 16, batch {args.batch_size}, default precision) for one epoch, plus its "
             f"test-split prediction and report. Each size starts from an empty cache. Open-file "
             f"limit {args.open_files}. Peak memory over all stages: {peak:.0f} MB ({verdict} 3 GB)."
             + "".join(f" Generating {g['images']} images took {g['seconds']:.0f} s (peak "
                       f"{g['peak_rss_tree_mb']:.0f} MB, {args.workers} workers)." for g in generation))
    write_results("scale", {"args": vars(args) | {"work": str(args.work)}, "generation": generation,
                            "rows": rows, "peak_rss_mb": peak, "limit_mb": LIMIT_BYTES / 2 ** 20},
                  "\n".join(lines) + "\n" + notes)
    print("\n".join(lines) + notes, flush=True)


if __name__ == "__main__":
    main()
