"""Jobs and their results, kept in SQLite in the server's output folder: they survive being read, and a restart.

One table, one row per job; the parent's engine writes it when a job changes state (and its progress every few
seconds). The connection is shared by the HTTP handlers and the engine's thread, behind one lock.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

STATUSES = ("queued", "running", "done", "failed", "cancelled")
FINISHED = ("done", "failed", "cancelled")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    request TEXT NOT NULL,
    image_path TEXT NOT NULL,
    image_name TEXT NOT NULL,
    samples_total INTEGER NOT NULL,
    samples_done INTEGER NOT NULL DEFAULT 0,
    steps_total INTEGER NOT NULL,
    steps_done INTEGER NOT NULL DEFAULT 0,
    files TEXT NOT NULL DEFAULT '[]',
    error TEXT,
    first_step_at REAL,
    latencies_s TEXT NOT NULL DEFAULT '[]',
    client TEXT
)
"""
#: Columns added since the first schema, with their declarations: an older store gains them when opened.
_ADDED_COLUMNS = {"client": "TEXT"}


@dataclass
class JobRecord:
    id: str
    seq: int
    status: str
    created_at: float
    request: dict  # the options as submitted (and any sweep), JSON
    image_path: str
    image_name: str
    samples_total: int
    steps_total: int
    samples_done: int = 0
    steps_done: int = 0
    files: list[str] = field(default_factory=list)  # paths relative to the job's folder
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    first_step_at: float | None = None  # wall time the job's first step began on a rank
    latencies_s: list[float] = field(default_factory=list)  # per finished sample: first step -> last step
    client: str | None = None  # who submitted it: a digest of its token, or its address (never the token itself)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


class JobStore:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")  # readers never wait for the engine's writes
        self._db.execute(_SCHEMA)
        present = {row[1] for row in self._db.execute("PRAGMA table_info(jobs)")}
        for name, declaration in _ADDED_COLUMNS.items():
            if name not in present:
                self._db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {declaration}")

    def next_seq(self) -> int:
        with self._lock:
            (top,) = self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM jobs").fetchone()
        return top + 1

    def save(self, job: JobRecord) -> None:
        row = asdict(job)
        row["request"] = json.dumps(job.request)
        row["files"] = json.dumps(job.files)
        row["latencies_s"] = json.dumps(job.latencies_s)
        columns = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        with self._lock:
            self._db.execute(f"INSERT OR REPLACE INTO jobs ({columns}) VALUES ({marks})", tuple(row.values()))

    def get(self, job_id: str) -> JobRecord | None:
        with self._lock:
            cursor = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,))
            row = cursor.fetchone()
            names = [d[0] for d in cursor.description]
        return _record(names, row) if row else None

    def recent(self, limit: int = 50, before_seq: int | None = None) -> list[JobRecord]:
        """The newest jobs first; `before_seq`: only those submitted before that one (the next page)."""
        with self._lock:
            cursor = self._db.execute("SELECT * FROM jobs WHERE seq < ? ORDER BY seq DESC LIMIT ?",
                                      (before_seq if before_seq is not None else 2**62, limit))
            rows = cursor.fetchall()
            names = [d[0] for d in cursor.description]
        return [_record(names, row) for row in rows]

    def unfinished(self) -> list[JobRecord]:
        """Jobs a stopped server had not finished, oldest first: a restarted server runs them again."""
        with self._lock:
            cursor = self._db.execute(
                "SELECT * FROM jobs WHERE status IN ('queued', 'running') ORDER BY seq")
            rows = cursor.fetchall()
            names = [d[0] for d in cursor.description]
        return [_record(names, row) for row in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _record(names: list[str], row) -> JobRecord:
    values = dict(zip(names, row, strict=True))
    values["request"] = json.loads(values["request"])
    values["files"] = json.loads(values["files"])
    values["latencies_s"] = json.loads(values["latencies_s"])
    return JobRecord(**values)


def now() -> float:
    return time.time()
