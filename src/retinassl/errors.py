"""The toolkit's own exception types.

Every error a user can cause (bad data, bad config, bad checkpoint) is raised as a subclass of
:class:`RetinasslError` with a message that names the file, the row and the problem, so that the
command line can print one clear line instead of a traceback from deep inside a library.
"""

from __future__ import annotations

from pathlib import Path


class RetinasslError(Exception):
    """Base class of every error the toolkit raises on purpose."""


class DataError(RetinasslError):
    """A file, a manifest row or a label is unusable.

    Args:
        problem: what is wrong, in words a user understands.
        path: the file at fault, if any.
        row: the manifest row (0-based index) or CSV line at fault, if any.
        item: an identifier of the item (manifest ``id``), if any.
    """

    def __init__(self, problem: str, *, path: str | Path | None = None, row: int | None = None,
                 item: str | None = None) -> None:
        self.problem = problem
        self.path = None if path is None else str(path)
        self.row = row
        self.item = item
        where = []
        if self.path is not None:
            where.append(self.path)
        if row is not None:
            where.append(f"row {row}")
        if item is not None:
            where.append(f"id {item!r}")
        super().__init__(f"{': '.join(where)}: {problem}" if where else problem)


class ConfigError(RetinasslError):
    """A configuration file or override is invalid (unknown key, wrong type, bad value)."""


class CheckpointError(RetinasslError):
    """A checkpoint is missing, unsafe (pickle), or does not fit the model it is loaded into."""


class TrainingDiverged(RetinasslError):
    """A loss became NaN or infinite, or a GAN generator collapsed; the last good state was saved."""


class RunDirError(RetinasslError):
    """A run directory cannot be created or resumed."""


class Terminated(BaseException):
    """The process received SIGTERM (``kill``, a scheduler's ``scancel`` or pre-emption).

    The command line raises it from its signal handler so that the run directory records the end
    and the sweep's worker processes stop; the run continues with ``--resume``. A BaseException,
    like KeyboardInterrupt, so that no ``except Exception`` swallows it (but not a
    KeyboardInterrupt: Lightning turns those into ``exit(1)`` inside ``fit``)."""
