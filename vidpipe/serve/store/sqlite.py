"""The embedded store: SQLite in the server's --out folder, for one node (the default).

One connection, shared by the HTTP handlers and the engine's threads behind one lock; WAL, so a reader never waits
for a write on disk. A claim is one `BEGIN IMMEDIATE` transaction: the only writer is this process.
"""

from __future__ import annotations

import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path

from vidpipe.serve.store.sql import SqlStore

#: The database's time as SQL: seconds since the epoch, with fractions.
_NOW = "((julianday('now') - 2440587.5) * 86400.0)"


class SqliteStore(SqlStore):
    NOW = _NOW
    SEQ = "INTEGER NOT NULL"
    CLAIM_LOCK = ""  # the transaction holds the database's write lock

    def __init__(self, path: Path):
        self.path = Path(path)
        self.name = f"SQLite store {self.path}"
        self.shared = False  # one node
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        with self._transaction() as run:
            self._migrate(run, lambda run: {row[1] for row in run("PRAGMA table_info(jobs)")})

    @contextmanager
    def _transaction(self):
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield lambda sql, params=(): self._db.execute(sql, params)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _duplicate(self, error: Exception) -> bool:
        return isinstance(error, sqlite3.IntegrityError)

    def _insert_sql(self, columns: list[str]) -> str:
        return (f"INSERT INTO jobs (seq, {', '.join(columns)}) VALUES ((SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs), "
                f"{', '.join('?' for _ in columns)}) RETURNING seq")

    def close(self) -> None:
        with self._lock:
            self._db.close()
