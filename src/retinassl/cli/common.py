"""Options shared by several commands."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

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
DATA_ROOT = typer.Option(None, "--data-root", help="The folder holding the datasets (idrid/, drive/, "
                        "...): the packaged presets' data paths ($RETINASSL_DATA_ROOT/idrid...) are under it "
                        "(default: the environment variable RETINASSL_DATA_ROOT).", show_default=False)
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


def config_and_overrides(config: str | None, overrides: list[str] | None,
                         default: str | None = None) -> tuple[str | None, list[str]]:
    """Split a command's optional CONFIG argument from its key=value overrides: a first argument
    that is itself key=value is the first override (otherwise ``--resume RUN
    engine.max_epochs=30`` would read the override as CONFIG and drop it). Returns ``(CONFIG or
    default, overrides)``."""
    rest = list(overrides or [])
    if config is not None and "=" in config:
        config, rest = None, [config] + rest
    return (default if config is None else config), rest


def split_args(args: list[str] | None, default: str | None = None) -> tuple[str | None, list[str]]:
    """``[CONFIG] [key=value ...]`` (one argument list) -> ``(CONFIG or default, overrides)``."""
    args = list(args or [])
    return config_and_overrides(args[0] if args else None, args[1:], default)


def open_run(model: type, config: str | None, overrides: list[str] | None, resume: Path | None,
             runs_dir: Path | None, skip_bad: bool = False, default: str | None = None,
             suffix: str = "", data_root: Path | None = None):
    """The validated config and run directory of a training command.

    ``--resume`` reopens a run with its recorded config plus the overrides (e.g. a larger
    ``engine.max_epochs``); otherwise CONFIG (a file or preset; without it, ``default``) plus the
    overrides and the shared options makes a new run, named ``<config name><suffix>-<time>``; the
    preset's data paths are under ``data_root`` (``--data-root``; default ``$RETINASSL_DATA_ROOT``).
    Returns ``(config, run)``."""
    from retinassl.config import load_config
    from retinassl.errors import ConfigError
    from retinassl.io.rundir import RunDir
    from retinassl.models.initialize import check_encoder_inputs

    config, rest = config_and_overrides(config, overrides, default)
    if resume is not None:
        refuse_finished(resume, rest)  # before RunDir.resume, which marks the run running
        cfg = load_config(model, RunDir(resume).config_file, rest)
        check_encoder_inputs(cfg)  # a refused override leaves the run as it was
        run = RunDir.resume(resume)
    else:
        if config is None:
            raise ConfigError("give a CONFIG (a YAML file or a packaged preset), or --resume RUN")
        cfg = load_config(model, config, with_common_overrides(rest, runs_dir, skip_bad), data_root)
        check_batch_config(cfg)  # before the run directory exists
        check_encoder_inputs(cfg)  # before the run directory exists
        run = RunDir.create(cfg.runs_dir, f"{cfg.name}{suffix}")
    run.attach_log_file()
    typer.echo(f"run directory: {run.path}")
    return cfg, run


def check_batch_config(cfg: Any) -> None:
    """Refuse (ConfigError naming ``engine.batch_size``/``preprocess.size``) a training config
    whose batches cannot fit in the memory available (:func:`retinassl.data.limits.
    check_batch_memory`); configs without both sections pass."""
    from retinassl.data.limits import check_batch_memory

    engine, preprocess = getattr(cfg, "engine", None), getattr(cfg, "preprocess", None)
    size = getattr(preprocess, "size", None)
    if engine is not None and isinstance(size, int) and hasattr(engine, "batch_size"):
        check_batch_memory(int(engine.batch_size), size, int(getattr(preprocess, "channels", 3) or 3))


def refuse_finished(run: Any, overrides: list[str]) -> None:
    """``--resume`` of a finished run without a change (no ``key=value``): say so and change
    nothing (re-running its test would append a second set of results). With overrides (e.g. a
    longer ``engine.max_epochs``) the run continues. ``run`` is the run directory's path (or a
    RunDir); call this before ``RunDir.resume``, which marks the run running."""
    from retinassl.io.rundir import RunDir

    run = run if isinstance(run, RunDir) else RunDir(Path(run))
    if run.status().get("status") == "finished" and not overrides:
        typer.echo(f"{run.path} has finished; nothing to resume (give key=value overrides, e.g. a "
                   f"longer engine.max_epochs, to continue training it)")
        raise typer.Exit(0)


def run_job(run: Any, job: Callable[[], Any], *, report: bool = True, title: str | None = None,
            status: Callable[[Any], dict[str, Any]] | None = None) -> tuple[Any, Path | None]:
    """The one wrapper of every command that does work in a run directory: run ``job()``; on any
    exception (SIGTERM included) record ``failed`` and the error in ``run.json`` and re-raise; else
    record ``finished`` (with ``status(result)``, default the metrics when the job returns a
    mapping) and build the report. Returns ``(result, report path or None)``."""
    from retinassl.oct.identity import redact

    try:
        result = job()
    except BaseException as exc:
        # paths an OCT command registered as private (patient-named files) never reach run.json
        run.update_status(status="failed", error=redact(str(exc))[:500])
        raise
    extra = status(result) if status is not None else (
        {"metrics": result} if isinstance(result, dict) else {})
    run.update_status(status="finished", error=None, **extra)
    path = None
    if report:
        from retinassl.report.html import build_report

        path = build_report(run, title=title)
    return result, path


@contextlib.contextmanager
def experiment_record(path: Path, text: str) -> Iterator[None]:
    """Write a run's experiment (its config with the overrides of every (re)start, so that a later
    ``--resume`` without them continues the same experiment) for the block; a start the sweep
    refuses for its settings (:class:`~retinassl.errors.ConfigError`, e.g. a resume at another
    resolution) puts the earlier record back, so the refused overrides do not stick."""
    from retinassl.atomic import write_text
    from retinassl.errors import ConfigError

    previous = path.read_text() if path.is_file() else None
    write_text(path, text)
    try:
        yield
    except ConfigError:
        if previous is not None:
            write_text(path, previous)
        raise
