"""The ``retinassl`` command.

Each command group lives in its own module and is added here explicitly. Errors the toolkit raises
on purpose (:class:`~retinassl.errors.RetinasslError`) are printed as one line naming the file, row
and problem, with exit status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import logging
import signal
import threading

import typer

from retinassl.errors import RetinasslError, Terminated
from retinassl.logs import setup_logging
from retinassl.cli import data as data_cmd
from retinassl.cli import demo as demo_cmd
from retinassl.cli import evaluate as evaluate_cmd
from retinassl.cli import explain as explain_cmd
from retinassl.cli import oct as oct_cmd
from retinassl.cli import predict as predict_cmd
from retinassl.cli import pretrain as pretrain_cmd
from retinassl.cli import report as report_cmd
from retinassl.cli import runs as runs_cmd
from retinassl.cli import segment as segment_cmd
from retinassl.cli import semisup as semisup_cmd
from retinassl.cli import sweep as sweep_cmd
from retinassl.cli import train as train_cmd

app = typer.Typer(
    name="retinassl", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    help="Label-efficient deep learning on retinal images: pretrain encoders without labels, train "
         "semi-supervised classifiers from a handful of labelled images, and evaluate them the way "
         "papers in the field do.\n\nStart with `retinassl demo` (synthetic data, a few minutes on a "
         "laptop CPU), then `retinassl data inspect idrid --option root=PATH` on your own data.")
app.add_typer(data_cmd.app, name="data")
app.add_typer(oct_cmd.app, name="oct")
app.command("train")(train_cmd.train)
app.command("pretrain")(pretrain_cmd.pretrain)
app.command("predict")(predict_cmd.predict)
app.command("demo")(demo_cmd.demo)
app.command("report")(report_cmd.report)
app.command("sweep")(sweep_cmd.sweep)
app.add_typer(evaluate_cmd.app, name="evaluate")
app.add_typer(explain_cmd.app, name="explain")
app.add_typer(runs_cmd.app, name="runs")
app.add_typer(segment_cmd.app, name="segment")
app.add_typer(semisup_cmd.app, name="semisup")


@app.callback()
def _setup(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    setup_logging(logging.DEBUG if verbose else logging.INFO)


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated("terminated by SIGTERM")


def main() -> None:
    """Console entry point. SIGTERM (``kill``, ``scancel``) ends a command as an exception, so the
    run records it, a sweep stops its workers, and ``--resume`` continues from the checkpoints."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        app()
    except RetinasslError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        typer.secho("interrupted", fg=typer.colors.RED, err=True)
        raise SystemExit(130) from None
    except Terminated:
        _terminated()
    except SystemExit as exc:
        if type(exc).__name__ == "SIGTERMException":  # Lightning's own SIGTERM exit (code None)
            _terminated()
        raise


def _terminated() -> None:
    typer.secho("terminated (SIGTERM): the run keeps its checkpoints; continue it with --resume RUN",
                fg=typer.colors.RED, err=True)
    raise SystemExit(143) from None
