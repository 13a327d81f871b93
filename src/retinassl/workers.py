"""Worker processes of parallel sweeps end with the sweep.

A sweep's workers are ``spawn`` processes that train cell after cell. If the sweep's main process
dies (killed, or its terminal closed), they would otherwise go on training, claiming cells and
writing into the run directory; a ``--resume`` of the same run would then start a second set of
workers next to them. :func:`exit_with_parent`, called first thing in a worker, starts a daemon
thread that ends the worker (exit code 3) within ``interval`` seconds of its parent's death. A cell
interrupted that way resumes from its last checkpoint.
"""

from __future__ import annotations

import logging
import os
import threading
import time

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
