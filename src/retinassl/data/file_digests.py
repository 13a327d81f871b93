"""Content digests of files (BLAKE2b), memoised in an SQLite database by (hash of the path, size,
mtime) so that later runs do not re-read unchanged files to hash them. The database holds no file
name (a path can carry a patient's name). The preprocessed-image cache
(:mod:`retinassl.data.cache`) and the leakage and duplicate checks key images by these digests.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path

from retinassl.errors import DataError

log = logging.getLogger(__name__)


def file_digest(path: str | Path) -> str:
    """BLAKE2b-128 hex digest of a file's bytes."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# digests this process has computed, by the file's identity on disk (resolved path, inode, size, change
# and modification times): a sweep start names the same encoder weights several times
_SEEN: dict[tuple[str, int, int, int, int], str] = {}


def remembered_file_digest(path: str | Path) -> str:
    """:func:`file_digest`, computed once per process for a file that has not changed since (for files
    read several times in one run, such as model weights; image digests persist in :class:`DigestMemo`)."""
    path = Path(path).resolve()
    stat = path.stat()
    key = (str(path), stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
    if key not in _SEEN:
        _SEEN[key] = file_digest(path)
    return _SEEN[key]


def path_key(path: str | Path) -> str:
    """What the digest memo stores for a file: a BLAKE2b hash of its absolute path (never the path,
    which can carry a patient's name)."""
    return hashlib.blake2b(os.fsencode(str(Path(path).resolve())), digest_size=16,
                           person=b"retinassl-path").hexdigest()


class DigestMemo:
    """Remembers file digests by (hash of the absolute path, size, mtime) in a small SQLite table.

    Caches made before paths were hashed held a ``digests`` table of absolute paths: it is dropped
    (and the file vacuumed, so that the names leave the disk too) on first use.
    """

    def __init__(self, database: Path) -> None:
        self.database = database

    def _connect(self) -> sqlite3.Connection:
        self.database.parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(self.database, timeout=60)
        if con.execute("PRAGMA user_version").fetchone()[0] < 1:
            # a memo of an older version may hold absolute paths: drop them, and rewrite the file
            # (VACUUM) so that they leave the disk too; user_version marks it done
            con.execute("DROP TABLE IF EXISTS digests")
            con.commit()
            try:
                con.execute("VACUUM")
                con.execute("PRAGMA user_version = 1")
                con.commit()
            except sqlite3.OperationalError as exc:  # another process is using it: next time
                log.debug("could not vacuum %s yet: %s", self.database, exc)
        con.execute("CREATE TABLE IF NOT EXISTS file_digests (path_hash TEXT PRIMARY KEY, "
                    "size INTEGER, mtime INTEGER, digest TEXT)")
        return con

    def digests(self, paths: Sequence[Path]) -> list[str]:
        """Digest of every path, hashing only files that changed since they were last seen."""
        stats = []
        for p in paths:
            try:
                st = p.stat()
            except OSError:
                raise DataError("file does not exist", path=p) from None
            stats.append((p, path_key(p), st.st_size, st.st_mtime_ns))
        with self._connect() as con:
            known = {}
            for i in range(0, len(stats), 500):
                chunk = [s[1] for s in stats[i:i + 500]]
                rows = con.execute(
                    f"SELECT path_hash, size, mtime, digest FROM file_digests WHERE path_hash IN "
                    f"({','.join('?' * len(chunk))})", chunk).fetchall()
                known.update({r[0]: r[1:] for r in rows})
            out, new = [], []
            for (path, key, size, mtime) in stats:
                hit = known.get(key)
                if hit is not None and hit[0] == size and hit[1] == mtime:
                    out.append(hit[2])
                else:
                    digest = file_digest(path)
                    out.append(digest)
                    new.append((key, size, mtime, digest))
            if new:
                con.executemany("INSERT OR REPLACE INTO file_digests VALUES (?, ?, ?, ?)", new)
        return out
