"""``retinassl runs archive|restore``: keep a run's results where they survive a change of machine
(the results table, predictions and settings records, without weights or paths; see
:mod:`retinassl.io.archive`), and bring them back as a run directory that ``--resume`` continues."""

from __future__ import annotations

from pathlib import Path

import typer

from retinassl.cli.common import DATA_ROOT

app = typer.Typer(no_args_is_help=True, help="Archive a run's results (no weights, no image paths) and restore "
                                             "them as a run directory to resume.")


@app.command("archive")
def archive(run_dir: Path = typer.Argument(..., help="A run directory (runs/<name>-<time>)."),
            dest: Path = typer.Argument(..., help="The folder that holds archives (e.g. a committed "
                                                  "benchmarks/results/runs); the archive is DEST/<run name>."),
            data_root: Path = DATA_ROOT,
            file_name_ids: bool = typer.Option(False, "--file-name-ids", help="The run reads a folder, csv, glob or "
                                               "manifest source, whose image ids are file names, and those names "
                                               "identify no one (e.g. a public dataset): archive them.")) -> None:
    """Copy a run's results table, predictions and settings records (paths under the data root as
    $RETINASSL_DATA_ROOT/..., other paths left out) into DEST/<run name>/ with archive.json (every
    file's size and SHA-256). Archiving the same run again replaces its earlier archive when the run
    continues it."""
    from retinassl.io.archive import archive_run

    target = archive_run(run_dir, dest, data_root=data_root, file_name_ids=file_name_ids)
    typer.echo(f"archive: {target}")


@app.command("restore")
def restore(archive_dir: Path = typer.Argument(..., help="An archive (DEST/<run name> of `runs archive`)."),
            runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help="Where the run directory is made.")) -> None:
    """Check an archive against its archive.json and copy it to RUNS_DIR/<run name>/, from which
    `retinassl sweep --resume` runs the cells that have no rows yet."""
    from retinassl.io.archive import restore_run

    target = restore_run(archive_dir, runs_dir)
    typer.echo(f"run directory: {target} (continue it with `retinassl sweep --resume {target}`)")
