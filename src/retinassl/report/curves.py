"""Training curves: every ``train/*`` column of the engine's CSV log (``logs/csv/metrics.csv``)
against the step, raw and smoothed, as a report section."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from retinassl.io.rundir import RunDir
from retinassl.figures.plots import plt, save_figure


def read_history(path: str | Path) -> pd.DataFrame:
    """The CSV log with one row per step and one column per ``train/*`` metric (rows of other
    metrics dropped, several rows of one step merged)."""
    frame = pd.read_csv(path)
    columns = [c for c in frame.columns if c.startswith("train/")]
    if "step" not in frame.columns or not columns:
        return pd.DataFrame()
    return frame[["step", *columns]].groupby("step", as_index=False).mean().dropna(how="all", subset=columns)


def running_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Mean of the last ``window`` values at each position (fewer at the start)."""
    cumulative = np.cumsum(np.insert(values, 0, 0.0))
    counts = np.minimum(np.arange(1, len(values) + 1), window)
    ends = np.arange(1, len(values) + 1)
    return (cumulative[ends] - cumulative[ends - counts]) / counts


def curves_figure(history: pd.DataFrame, path: str | Path, title: str = "") -> Path:
    """One panel per ``train/*`` column: raw values (thin) and a running mean (thick)."""
    columns = [c for c in history.columns if c != "step"]
    fig, axes = plt.subplots(1, len(columns), figsize=(3.6 * len(columns), 3.0), squeeze=False)
    for ax, column in zip(axes[0], columns):
        data = history[["step", column]].dropna()
        steps, values = data["step"].to_numpy(), data[column].to_numpy(dtype=float)
        window = max(1, len(values) // 10)
        ax.plot(steps, values, lw=0.6, alpha=0.4, color="tab:blue", marker="o" if len(values) < 10 else None, ms=3)
        ax.plot(steps, running_mean(values, window), lw=1.8, color="tab:blue")
        ax.set_title(column.removeprefix("train/"), fontsize=11)
        ax.set_xlabel("step")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def curves_summary(history: pd.DataFrame, tail: float = 0.1) -> pd.DataFrame:
    """First and last values of each curve (means over the first and last ``tail`` of the log)."""
    rows = []
    for column in (c for c in history.columns if c != "step"):
        values = history[column].dropna().to_numpy(dtype=float)
        if len(values) == 0:
            continue
        n = max(1, int(round(tail * len(values))))
        rows.append({"metric": column.removeprefix("train/"), "logged steps": len(values),
                     "start": float(values[:n].mean()), "end": float(values[-n:].mean())})
    return pd.DataFrame(rows)


def training_curves_section(run: RunDir):  # -> Section | None
    """The training curves of the run's engine log, if it has one."""
    from retinassl.report.sections import Section, figure_html, table_html

    path = run.path / "logs" / "csv" / "metrics.csv"
    if not path.is_file():
        return None
    history = read_history(path)
    if history.empty:
        return None
    figure = curves_figure(history, run.report_dir / "figures" / "training-curves.png")
    summary = curves_summary(history)
    return Section("Training curves",
                   figure_html(figure.name, "training curves",
                               "Each training loss against the step; thin: logged values, thick: running "
                               "mean over a tenth of the log. <b>Look at</b>: the thick line should fall "
                               "and flatten; flat from the start or rising means the run did not learn.",
                               cls="natural")
                   + '<p class="note">Start/end: means over the first and last tenth of the log.</p>'
                   + table_html(summary, text_columns=("metric",)))
