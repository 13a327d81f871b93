"""What ``make demo`` showed: the comparison sentences of a demo run's report summary (the same
functions the HTML report uses), as ``benchmarks/results/demo_summary.{json,md}``.

Usage::

    make demo                                   # writes runs/demo-<time>/
    .venv/bin/python benchmarks/demo_summary.py runs/demo-<time>
"""

from __future__ import annotations

import argparse
import html
import re
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, write_results  # noqa: E402

from retinassl.io.results import read_results  # noqa: E402
from retinassl.report.summary import paired_sentences, transfer_sentences  # noqa: E402


def plain(sentence: str) -> str:
    """A report sentence without its HTML markup."""
    return html.unescape(re.sub(r"<[^>]+>", "", sentence))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path, help="a finished demo run directory (runs/demo-<time>)")
    args = parser.parse_args()
    results = read_results(args.run / "results.csv")
    comparison_csv = args.run / "comparison.csv"
    comparison = pd.read_csv(comparison_csv) if comparison_csv.is_file() else None
    sentences = [plain(s) for s in (transfer_sentences(comparison) if comparison is not None else [])
                 + paired_sentences(results)]
    run = str(args.run.resolve().relative_to(ROOT) if args.run.resolve().is_relative_to(ROOT) else args.run)
    text = "\n".join([f"Demo run: `{run}` (git-ignored; `make demo`).", "",
                      "The comparisons its report's summary states:", ""] + [f"- {s}" for s in sentences])
    write_results("demo_summary", {"run": run, "sentences": sentences}, text)
    print(text)


if __name__ == "__main__":
    main()
