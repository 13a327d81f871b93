"""Options shared by several commands."""

from __future__ import annotations

from pathlib import Path

import typer

OVERRIDES = typer.Argument(None, help="Config overrides as key=value (e.g. engine.max_epochs=5 "
                                      "data.options.root=/data/idrid).", show_default=False)
RESUME = typer.Option(None, "--resume", help="Continue the run in this run directory from its last "
                                             "checkpoint.", show_default=False)
RUNS_DIR = typer.Option(None, "--runs-dir", help="Where run directories are created (default: the "
                                                 "config's runs_dir, ./runs).", show_default=False)
ALLOW_PICKLE = typer.Option(False, "--allow-pickle", help="Let model.init be a pickle-based .pth/.pt "
                                                          "weights file (read with torch.load("
                                                          "weights_only=True)); refused otherwise.")
SKIP_BAD = typer.Option(False, "--skip-bad", help="Skip unreadable images (listed in the run report) "
                                                  "instead of stopping at the first.")


def with_common_overrides(overrides: list[str] | None, runs_dir: Path | None, skip_bad: bool) -> list[str]:
    """Turn the shared options into config overrides."""
    out = list(overrides or [])
    if runs_dir is not None:
        out.append(f"runs_dir={runs_dir}")
    if skip_bad:
        out.append("data.skip_bad=true")
    return out
