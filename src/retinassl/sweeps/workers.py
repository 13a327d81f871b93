"""Worker processes of parallel sweeps end with the sweep.

:func:`run_worker_processes` starts a sweep's workers and waits for them; if the sweep is
interrupted while it waits (Ctrl+C, or SIGTERM through the command line's handler), it terminates
them before the interruption goes on, and a worker's exception is raised in the sweep itself.

A sweep's workers are ``spawn`` processes that train cell after cell. If the sweep's main process
dies (killed, or its terminal closed), they would otherwise go on training, claiming cells and
writing into the run directory; a ``--resume`` of the same run would then start a second set of
workers next to them. :func:`exit_with_parent`, called first thing in a worker, starts a daemon
thread that ends the worker (exit code 3) within ``interval`` seconds of its parent's death. A cell
interrupted that way resumes from its last checkpoint.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

log = logging.getLogger(__name__)

ORPHAN_EXIT_CODE = 3


def exit_with_parent(parent: int | None = None, interval: float = 2.0) -> threading.Thread:
    """Watch the parent process (``parent``: its pid, default the current parent) and end this
    process when it is gone (this process re-parented to another, e.g. init)."""
    expected = os.getppid() if parent is None else int(parent)

    def watch() -> None:
        while True:
            if os.getppid() != expected:
                log.error("the sweep's main process (pid %d) has gone: worker %d stops (the run "
                          "continues with --resume)", expected, os.getpid())
                logging.shutdown()
                os._exit(ORPHAN_EXIT_CODE)
            time.sleep(interval)

    thread = threading.Thread(target=watch, name="exit-with-parent", daemon=True)
    thread.start()
    return thread


def run_worker_processes(target: Callable[..., None], arguments: Sequence[tuple[Any, ...]], name: str,
                         grace: float = 30.0) -> None:
    """Run ``target(*args)`` in one ``spawn`` process per entry of ``arguments``; wait for all.

    The first failed worker's exception (by worker order, with the worker's traceback as a note) is
    raised here; a worker that ended otherwise (killed, SystemExit, an orphan's exit) raises a
    RuntimeError with its exit code. If this process is interrupted while it waits, every worker
    still running is sent SIGTERM (SIGKILL after ``grace`` seconds) before the interruption
    propagates: no worker goes on writing into the run directory.
    """
    context = multiprocessing.get_context("spawn")
    errors = context.SimpleQueue()
    processes = [context.Process(target=_reporting, args=(target, args, k, errors, len(arguments)),
                                 name=f"{name}-{k}") for k, args in enumerate(arguments)]
    reported: dict[int, BaseException] = {}
    try:
        for process in processes:
            process.start()
        for process in processes:
            while process.is_alive():
                process.join(0.2)
                _drain(errors, reported)  # read while waiting: a worker blocks on a full pipe
    except BaseException:
        _stop(processes, grace)
        raise
    _drain(errors, reported)
    for index, process in enumerate(processes):
        if index in reported:
            raise reported[index]
        if process.exitcode != 0:
            raise RuntimeError(f"worker {process.name} ended with exit code {process.exitcode} (see "
                               f"the run's log); the run continues with --resume")


def _drain(errors: Any, reported: dict[int, BaseException]) -> None:
    while not errors.empty():
        index, error = errors.get()
        reported.setdefault(index, error)


def _reporting(target: Callable[..., None], args: tuple[Any, ...], index: int, errors: Any, workers: int = 1) -> None:
    """A worker's body: ``target(*args)``; an exception is sent to the parent (then re-raised). The
    worker's trainings take their share of the cores (``engine.num_threads: 0``; :mod:`retinassl.engine.threads`)."""
    import traceback

    from retinassl.engine.threads import SHARING_ENV

    os.environ[SHARING_ENV] = str(workers)
    try:
        target(*args)
    except Exception as exc:
        if hasattr(exc, "add_note"):  # Python >= 3.11; notes survive pickling
            exc.add_note(f"in worker {index}:\n{traceback.format_exc()}")
        try:  # the parent must be able to rebuild it
            pickle.loads(pickle.dumps(exc))
            errors.put((index, exc))
        except Exception:
            errors.put((index, RuntimeError(f"worker {index}: {type(exc).__name__}: {exc}")))
        raise
    except BaseException as exc:  # SystemExit (e.g. Lightning's on SIGTERM), KeyboardInterrupt
        errors.put((index, RuntimeError(f"worker {index} stopped by {type(exc).__name__}({exc}); "
                                        f"the run continues with --resume")))
        raise


def _stop(processes: list[Any], grace: float) -> None:
    for process in processes:
        if process.is_alive():
            process.terminate()
    deadline = time.monotonic() + grace
    for process in processes:
        if process.pid is not None:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join()
