"""A resume journal: an SQLite file that records each file's outcome.

Run the same batch again with the same journal after a crash, Ctrl-C or
``kill -9``, and the files it records as stored are left out. Everything
else is sent. A file counts as the same file while its path, size and
modification time are unchanged. Outcomes are committed in small groups,
so a hard kill can lose the last few records. Those files are sent again,
and a receiver keeps one copy because it keys objects by SOP Instance UID.
Files added from memory have no path and are never journalled.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from types import TracebackType

logger = logging.getLogger(__name__)

COMMIT_EVERY_OUTCOMES = 16
COMMIT_EVERY_SECONDS = 0.25

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outcomes (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    sop_instance_uid TEXT,
    status TEXT NOT NULL,
    detail TEXT,
    recorded_at REAL NOT NULL
)
"""


class Journal:
    """The outcomes of earlier runs, and a place to record this run's.

    Raises
    ------
    ValueError
        If ``path`` cannot be opened as an SQLite journal; the message names it.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        try:
            self.connection = sqlite3.connect(self.path)
            self.connection.execute("PRAGMA journal_mode=WAL")
            self.connection.execute("PRAGMA synchronous=NORMAL")
            self.connection.execute(_SCHEMA)
            self.connection.commit()
        except sqlite3.DatabaseError as exc:
            raise ValueError(
                f"Invalid journal '{self.path}': {exc}; give a new file name or an "
                "existing dicomsend journal"
            ) from exc
        self.pending = 0
        self.last_commit = time.monotonic()

    def was_stored(self, path: str) -> bool:
        """Return True if ``path``, unchanged since, was stored by an earlier run."""
        stamp = _stamp(path)
        if stamp is None:
            return False
        row = self.connection.execute(
            "SELECT size, mtime_ns, status FROM outcomes WHERE path = ?",
            (os.path.realpath(path),),
        ).fetchone()
        return row is not None and (row[0], row[1]) == stamp and row[2] == "stored"

    def record(self, path: str, sop_instance_uid: str | None, stored: bool,
               detail: str | None) -> None:
        stamp = _stamp(path)
        if stamp is None:
            return
        self.connection.execute(
            "INSERT OR REPLACE INTO outcomes VALUES (?, ?, ?, ?, ?, ?, ?)",
            (os.path.realpath(path), stamp[0], stamp[1], sop_instance_uid,
             "stored" if stored else "failed", detail, time.time()),
        )
        self.pending += 1
        if (self.pending >= COMMIT_EVERY_OUTCOMES
                or time.monotonic() - self.last_commit > COMMIT_EVERY_SECONDS):
            self.commit()

    def commit(self) -> None:
        self.connection.commit()
        self.pending = 0
        self.last_commit = time.monotonic()

    def close(self) -> None:
        self.commit()
        self.connection.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, exc_type: type[BaseException] | None,
                 exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def _stamp(path: str) -> tuple[int, int] | None:
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_size, status.st_mtime_ns
