"""Do the numbers move when the code is reorganised, bit for bit in float32? (issue 16)

``house_equivalence.py`` compared the redesign's results at the default precision (bf16 autocast on
this CPU). This script checks the stricter claim: with float32 forced and one intra-op thread, the
code before the redesign and the code at a later commit give results rows (and prediction CSVs) that
are equal value for value (exact float equality, no tolerance).

    python benchmarks/house_equivalence_float32.py                  # before = 55304ae^, after = HEAD
    python benchmarks/house_equivalence_float32.py --quick --cells vessel-curve   # a smoke check
    python benchmarks/house_equivalence_float32.py --parallel      # before and after of a cell side by side

How: each commit is checked out in its own git worktree under /tmp (removed at the end) and run
through its own command line (``retinassl.cli.main``) with ``PYTHONPATH=<worktree>/src`` on this
venv, in its own working directory, runs directory and image/feature cache (``RETINASSL_CACHE``: a
shared cache would let one side read what the other computed). float32 and one thread are forced twice:
by config overrides where a command takes them (``engine.precision=32``, ``engine.num_threads=1``,
``inference.precision=32``), and, for what has no override (the demo, OCT layer probabilities), by a
``sitecustomize`` put first on ``PYTHONPATH`` that (1) makes torch report no native bf16 so every
``precision: auto`` resolves to float32, (2) clamps ``torch.set_num_threads`` to 1, and (3) records
every bf16/fp16 autocast that is entered: a run that entered one fails the check.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from _common import ROOT, write_results
from house_equivalence import TIMING, commands

DEFAULT_BEFORE = "55304ae^"  # the parent of "One house: a layered package, ..." (the redesign)
CELLS = ("transfer", "ssl-gan", "vessel-curve", "demo")
# Names the redesign changed on purpose, mapped to today's (none were needed for these cells: the
# earlier comparison at the default precision matched every key). Applied to the "before" rows.
COLUMN_RENAMES: dict[str, str] = {}
VALUE_RENAMES: dict[str, dict[str, str]] = {}  # column -> {old value: new value}, e.g. init names

SHIM = '''\
"""Started by house_equivalence_float32.py: float32 and one intra-op thread in every process."""
import os

if os.environ.get("HOUSE_FLOAT32") == "1":
    import torch

    torch.set_num_threads(1)
    _set_threads = torch.set_num_threads
    torch.set_num_threads = lambda n: _set_threads(1)
    # cpu_supports_bf16() (both versions) asks this: "auto" precision then means float32
    torch.ops.mkldnn._is_mkldnn_bf16_supported = lambda: False
    _enter = torch.autocast.__enter__

    def _guarded_enter(self):
        if getattr(self, "_enabled", False) and getattr(self, "fast_dtype", None) in (torch.bfloat16, torch.float16):
            with open(os.environ["HOUSE_AUTOCAST_LOG"], "a") as out:
                out.write(f"{self.device} {self.fast_dtype} pid {os.getpid()}\\n")
        return _enter(self)

    torch.autocast.__enter__ = _guarded_enter
'''


def float32_overrides(quick: bool) -> dict[str, list[str]]:
    """Per cell: the config overrides that force float32 / one thread (names both versions accept)
    and restrict the cell to something small."""
    engines_ssl = [f"learners.{name}.engine.{key}" for name in ("ssl-gan", "convnet", "resnet34")
                   for key in ("precision=32", "num_threads=1")]
    out = {
        # one seed and one label fraction of the smoke budget (all three inits, both protocols)
        "transfer": ["engine.precision=32", "engine.num_threads=1", "pretrain_engine.precision=32",
                     "pretrain_engine.num_threads=1", "budgets.smoke.seeds=[0]",
                     "budgets.smoke.fractions=[1.0]", "budgets.smoke.finetune_fractions=[1.0]"],
        "ssl-gan": engines_ssl,  # the whole smoke budget (2 label counts, 3 learners, the extension)
        "vessel-curve": ["engine.precision=32", "engine.num_threads=1", "inference.precision='32'"],
        "demo": [],
    }
    if quick:
        out["transfer"] += ["budgets.smoke.finetune.max_steps=2", "budgets.smoke.pretrain_engine.max_steps=1"]
        out["ssl-gan"] += ["budgets.smoke.labelled=[4]", "extension.enabled=false"]
    return out


def cell_command(cell: str, root: Path, quick: bool, quick_demo: bool = False) -> list[str]:
    args = commands(root)[cell] + float32_overrides(quick)[cell]
    if cell == "demo" and (quick or quick_demo):
        args.append("--quick")
    return args


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], check=True, capture_output=True, text=True).stdout.strip()


def start(side: str, worktree: Path, shim: Path, cell: str, base: Path, quick: bool, quick_demo: bool):
    """Start one side of one cell; returns (process, its folder, start time)."""
    folder = base / side / cell
    folder.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": f"{shim}{os.pathsep}{worktree / 'src'}", "HOUSE_FLOAT32": "1",
           "HOUSE_AUTOCAST_LOG": str(folder / "autocast.log"), "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1", "RETINASSL_CACHE": str(folder / "cache"), "RETINASSL_PROGRESS": "0"}
    argv = [sys.executable, "-c", "import sys; from retinassl.cli import main; sys.argv[0] = 'retinassl'; "
            "sys.exit(main())", *cell_command(cell, folder, quick, quick_demo)]
    log = open(folder / "log.txt", "w")
    print(f"[{time.strftime('%H:%M:%S')}] {side} {cell}: {' '.join(argv[3:])}", flush=True)
    return subprocess.Popen(argv, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT), folder, time.time()


def finish(proc, folder: Path, began: float, side: str, cell: str) -> dict:
    code = proc.wait()
    seconds = round(time.time() - began, 1)
    print(f"[{time.strftime('%H:%M:%S')}] {side} {cell}: exit {code} after {seconds} s", flush=True)
    if code != 0:
        raise SystemExit(f"{side} {cell} failed (exit {code}); log: {folder / 'log.txt'}\n"
                         + (folder / "log.txt").read_text()[-3000:])
    (run_dir,) = [p for p in (folder / "runs").iterdir() if p.is_dir()]
    autocast = folder / "autocast.log"
    # what the engine says it trained with ("precision 32-true" in both versions' training log line)
    logs = [folder / "log.txt", *(folder / "runs").rglob("*.log")]
    precisions = sorted({m for log in logs for m in re.findall(r"precision (\S+?),", log.read_text(errors="replace"))})
    return {"run_dir": run_dir, "seconds": seconds, "folder": folder, "engine_precisions": precisions,
            "autocast_entries": len(autocast.read_text().splitlines()) if autocast.exists() else 0}


def read_rows(run_dir: Path, before: bool) -> pd.DataFrame:
    rows = pd.read_csv(run_dir / "results.csv", dtype=str, keep_default_na=False)
    rows = rows[~rows["metric"].isin(TIMING)]
    if before:
        rows = rows.rename(columns=COLUMN_RENAMES)
        for column, mapping in VALUE_RENAMES.items():
            if column in rows:
                rows[column] = rows[column].replace(mapping)
    return rows.reset_index(drop=True)


def same(a: str, b: str) -> bool:
    """Exact equality of two values as written: the same text, or the same float64 (NaN == NaN)."""
    if a == b:
        return True
    try:
        x, y = float(a), float(b)
    except ValueError:
        return False
    return x == y or (x != x and y != y)


def compare_rows(left: pd.DataFrame, right: pd.DataFrame) -> dict:
    keys = [c for c in left.columns if c not in ("value", "experiment")]
    if set(keys) != {c for c in right.columns if c not in ("value", "experiment")}:
        return {"error": f"columns differ: before {list(left.columns)}, after {list(right.columns)}"}
    for frame in (left, right):  # repeated keys are matched in the order written
        frame["occurrence"] = frame.groupby(keys, sort=False).cumcount().astype(str)
    merged = left.merge(right, on=keys + ["occurrence"], how="outer", suffixes=("_before", "_after"),
                        indicator=True)
    both = merged[merged["_merge"] == "both"]
    equal = both.apply(lambda r: same(r["value_before"], r["value_after"]), axis=1) if len(both) else pd.Series([], dtype=bool)
    text_equal = int((both["value_before"] == both["value_after"]).sum())
    differ = both[~equal.astype(bool)]
    only = merged[merged["_merge"] != "both"]
    describe = lambda r: {k: r[k] for k in keys if r[k] != ""}  # noqa: E731
    return {"rows_before": len(left), "rows_after": len(right), "rows_compared": len(both),
            "rows_equal": int(equal.sum()), "rows_equal_as_text": text_equal,
            "only_one_side": [{**describe(r), "side": "before" if r["_merge"] == "left_only" else "after"}
                              for _, r in only.iterrows()],
            "differing": [{**describe(r), "before": r["value_before"], "after": r["value_after"]}
                          for _, r in differ.iterrows()]}


def compare_predictions(before: dict, after: dict) -> dict:
    """Every CSV under the two run directories' ``predictions/``, matched by relative path, compared
    cell for cell (text equal, or equal floats; the side's own folder path is blanked first)."""
    def files(run_dir: Path) -> dict[str, Path]:
        folder = run_dir / "predictions"
        return {str(p.relative_to(folder)): p for p in folder.rglob("*.csv")} if folder.exists() else {}

    a, b = files(before["run_dir"]), files(after["run_dir"])
    out = {"files_before": len(a), "files_after": len(b), "only_before": sorted(set(a) - set(b)),
           "only_after": sorted(set(b) - set(a)), "files_equal": 0, "cells_compared": 0, "differing": []}
    for name in sorted(set(a) & set(b)):
        x = pd.read_csv(a[name], dtype=str, keep_default_na=False).replace(str(before["folder"]), "<side>", regex=False)
        y = pd.read_csv(b[name], dtype=str, keep_default_na=False).replace(str(after["folder"]), "<side>", regex=False)
        if list(x.columns) != list(y.columns) or x.shape != y.shape:
            out["differing"].append({"file": name, "before": f"{x.shape} {list(x.columns)}",
                                     "after": f"{y.shape} {list(y.columns)}"})
            continue
        out["cells_compared"] += x.size
        bad = [(i, c, x.at[i, c], y.at[i, c]) for c in x.columns for i in x.index if not same(x.at[i, c], y.at[i, c])]
        if bad:
            out["differing"].append({"file": name, "cells_differing": len(bad),
                                     "first": [{"row": int(i), "column": c, "before": u, "after": v}
                                               for i, c, u, v in bad[:10]]})
        else:
            out["files_equal"] += 1
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default=DEFAULT_BEFORE, help="commit before the redesign")
    parser.add_argument("--after", default="HEAD", help="commit after it")
    parser.add_argument("--cells", default=",".join(CELLS), help=f"comma-separated, of {CELLS}")
    parser.add_argument("--quick", action="store_true", help="tiny settings, nothing written (a smoke check)")
    parser.add_argument("--quick-demo", action="store_true", help="the demo with --quick (minutes, not ~10), "
                        "the other cells at full size; results written")
    parser.add_argument("--parallel", action="store_true", help="run the two sides of a cell side by side")
    parser.add_argument("--keep", action="store_true", help="keep the worktrees and run folders")
    parser.add_argument("--name", default="house_equivalence_float32",
                        help="results file name (a run of some cells need not replace another's file)")
    args = parser.parse_args()
    cells = [c for c in args.cells.split(",") if c]
    if unknown := set(cells) - set(CELLS):
        raise SystemExit(f"unknown cells {sorted(unknown)}; known: {CELLS}")
    commits = {"before": git("rev-parse", args.before), "after": git("rev-parse", args.after)}
    base = Path(tempfile.mkdtemp(prefix="house-f32-"))
    shim = base / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(SHIM)
    trees = {side: base / f"tree-{side}-{commit[:8]}" for side, commit in commits.items()}  # outside the repo
    for side, tree in trees.items():
        git("worktree", "add", "--detach", str(tree), commits[side])
    report: dict = {"commits": commits, "cells": {}}
    try:
        for cell in cells:
            runs = {}
            if args.parallel:
                started = {side: start(side, trees[side], shim, cell, base, args.quick, args.quick_demo) for side in trees}
                runs = {side: finish(*started[side], side, cell) for side in trees}
            else:
                for side in trees:
                    runs[side] = finish(*start(side, trees[side], shim, cell, base, args.quick, args.quick_demo), side, cell)
            result = compare_rows(read_rows(runs["before"]["run_dir"], True), read_rows(runs["after"]["run_dir"], False))
            result["predictions"] = compare_predictions(runs["before"], runs["after"])
            result["command"] = "retinassl " + " ".join(cell_command(cell, Path("<side>"), args.quick, args.quick_demo))
            result["seconds"] = {side: runs[side]["seconds"] for side in runs}
            result["engine_precisions_logged"] = {side: runs[side]["engine_precisions"] for side in runs}
            result["bf16_or_fp16_autocasts_entered"] = {side: runs[side]["autocast_entries"] for side in runs}
            report["cells"][cell] = result
            print(json.dumps({k: v for k, v in result.items() if k not in ("only_one_side", "differing")}, default=str),
                  flush=True)
    finally:
        if not args.keep:
            for tree in trees.values():
                git("worktree", "remove", "--force", str(tree))
            shutil.rmtree(base, ignore_errors=True)
    write_report(report, args)


def verdict(cell: dict) -> bool:
    p = cell["predictions"]
    return ("error" not in cell and not cell["only_one_side"] and not cell["differing"]
            and cell["rows_compared"] == cell["rows_equal"] > 0 and not p["differing"]
            and not p["only_before"] and not p["only_after"]
            and not any(cell["bf16_or_fp16_autocasts_entered"].values())
            and all(set(p) <= {"32-true"} for p in cell["engine_precisions_logged"].values()))


def write_report(report: dict, args) -> None:
    lines = [f"Before: {report['commits']['before']} (the parent of the redesign 55304ae); "
             f"after: {report['commits']['after']}. float32 forced, one intra-op thread, same seeds; "
             "exact equality of every value (no tolerance).", "",
             "| cell | rows before / after | rows compared | rows equal | rows only on one side | prediction CSVs "
             "(files equal / compared, cells) | engine precision logged | bf16 autocasts entered | seconds before / after | equal |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, c in report["cells"].items():
        if "error" in c:
            lines.append(f"| {name} | {c['error']} |")
            continue
        p = c["predictions"]
        compared = p["files_before"] - len(p["only_before"])
        lines.append(f"| {name} | {c['rows_before']} / {c['rows_after']} | {c['rows_compared']} | {c['rows_equal']} "
                     f"| {len(c['only_one_side'])} | {p['files_equal']} / {compared} ({p['cells_compared']} cells) "
                     f"| {', '.join(sorted(set().union(*c['engine_precisions_logged'].values()))) or '-'} "
                     f"| {sum(c['bf16_or_fp16_autocasts_entered'].values())} "
                     f"| {c['seconds']['before']} / {c['seconds']['after']} | {'yes' if verdict(c) else 'NO'} |")
    lines += ["", "Cell commands (`<side>` is each side's own folder; overrides after the base command force "
              "float32 / one thread and restrict the cell):", ""]
    lines += [f"- {name}: `{c['command']}`" for name, c in report["cells"].items()]
    lines += ["", f"Renamed columns / values mapped before comparing: {COLUMN_RENAMES or 'none'} / "
              f"{VALUE_RENAMES or 'none'}."]
    for name, c in report["cells"].items():
        for key in ("only_one_side", "differing"):
            if c.get(key):
                lines += ["", f"{name}, {key.replace('_', ' ')}:", ""]
                lines += [f"- {json.dumps(r, default=str)}" for r in c[key][:50]]
        if c.get("predictions", {}).get("differing") or c.get("predictions", {}).get("only_before") \
                or c.get("predictions", {}).get("only_after"):
            p = c["predictions"]
            lines += ["", f"{name}, prediction CSVs: only before {p['only_before']}, only after {p['only_after']}"]
            lines += [f"- {json.dumps(r, default=str)}" for r in p["differing"][:20]]
    all_equal = all(verdict(c) for c in report["cells"].values())
    report["verdict"] = "bit-identical in float32" if all_equal else "NOT identical"
    lines += ["", f"Verdict: {report['verdict']}."]
    table = "\n".join(lines)
    print(table)
    if args.quick:
        print("(--quick: nothing written)")
        return
    write_results(args.name, report, table)


if __name__ == "__main__":
    main()
