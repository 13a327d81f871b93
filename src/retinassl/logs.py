"""Logging of ``retinassl`` messages: rich on a terminal, plain timestamped lines elsewhere."""

from __future__ import annotations

import logging
import os
import sys
import warnings


class _CurrentStderrHandler(logging.StreamHandler):
    """A stream handler that writes to whatever ``sys.stderr`` is at the time of the record.

    A handler bound to the stderr of its creation breaks when the CLI runs in-process more than
    once (tests, notebooks) and an earlier stderr has been closed or replaced.
    """

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # the base class assigns it; the property ignores it
        pass


def setup_logging(level: int = logging.INFO) -> None:
    """Log ``retinassl`` messages to stderr (rich on a terminal); keep libraries quiet."""
    logger = logging.getLogger("retinassl")
    logger.setLevel(level)
    if not logger.handlers:
        if sys.stderr.isatty():
            from rich.logging import RichHandler

            handler: logging.Handler = RichHandler(show_path=False, rich_tracebacks=False)
            handler.setFormatter(logging.Formatter("%(message)s"))
        else:
            handler = _CurrentStderrHandler()
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=UserWarning, module="lightning")
    os.environ.setdefault("PYTHONWARNINGS", "ignore::UserWarning")
