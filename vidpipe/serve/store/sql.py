"""The job store's contract, written once in SQL that SQLite and Postgres both run (design §11).

A backend says how to connect, how to open a write transaction, what "now" is in its SQL, and how to lock the row
it claims; everything else is here:
- `insert` commits a job before the API answers 202; an Idempotency-Key returns the job it first made;
- `claim` hands the oldest job that is queued, or running on a node whose lease ran out, to a node, with a fresh
  lease token and `attempts + 1`; a job past --max-attempts fails with the reason instead;
- every write a node makes about a job (`heartbeat`, `update`, `release`) carries the lease token and changes
  nothing once another node holds the job;
- `request_cancel` ends a queued job at once, and flags a running one for its node.

Leases are measured in the database's time, never a node's clock.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import asdict, fields

from vidpipe.serve.store.records import JSON_FIELDS, PROGRESS_FIELDS, Beat, Claim, JobRecord, NodeInfo

#: The schema this vidpipe writes. 1: the first SQLite store; 2: `client`; 3: the fleet (leases, nodes, attempts).
SCHEMA_VERSION = 3
_RECORD_FIELDS = tuple(f.name for f in fields(JobRecord))
#: A row's lease columns: kept in the store, never in a JobRecord (a node's token is its own).
_NO_LEASE = "lease_token = NULL, lease_expires = NULL"
_RESET_PROGRESS = ("samples_done = 0, steps_done = 0, files = '[]', latencies_s = '[]', first_step_at = NULL, "
                   "error = NULL")


class SqlStore:
    """The shared SQL. Subclasses set `NOW` (the database's time, in seconds since the epoch, as SQL), `SEQ` (the
    seq column's declaration), `CLAIM_LOCK` (what locks a claimed row) and implement `_transaction`."""

    NOW = ""
    SEQ = ""
    CLAIM_LOCK = ""
    name = ""  # what the store is, for messages (never a password)

    def _transaction(self) -> Iterator:  # a context manager yielding `run(sql, params) -> cursor`
        raise NotImplementedError

    def _duplicate(self, error: Exception) -> bool:
        """Whether `error` is a unique constraint's (the Idempotency-Key's)."""
        raise NotImplementedError

    def _insert_sql(self, columns: list[str]) -> str:
        raise NotImplementedError

    def _notify(self, run, message: str) -> None:
        """Wake the nodes that listen (`listen`), once the transaction commits; nothing where no node listens."""

    def listen(self, on_message) -> None:
        """Call `on_message("job")` when a job is queued and `on_message("cancel:<id>")` when a running job is asked
        to stop, from another thread, until `close`. A wake-up only: the rows stay the truth, polled as well."""

    # 1. The schema.

    def _schema(self) -> list[str]:
        return [
            f"""CREATE TABLE IF NOT EXISTS jobs (
                id TEXT PRIMARY KEY, seq {self.SEQ}, status TEXT NOT NULL,
                created_at DOUBLE PRECISION NOT NULL, started_at DOUBLE PRECISION, finished_at DOUBLE PRECISION,
                request TEXT NOT NULL, image_path TEXT NOT NULL, image_name TEXT NOT NULL,
                samples_total INTEGER NOT NULL, samples_done INTEGER NOT NULL DEFAULT 0,
                steps_total BIGINT NOT NULL, steps_done BIGINT NOT NULL DEFAULT 0,
                files TEXT NOT NULL DEFAULT '[]', error TEXT, first_step_at DOUBLE PRECISION,
                latencies_s TEXT NOT NULL DEFAULT '[]', client TEXT)""",
            """CREATE TABLE IF NOT EXISTS nodes (
                name TEXT PRIMARY KEY, url TEXT, plan TEXT, gpus INTEGER, model TEXT, status TEXT,
                started_at DOUBLE PRECISION, heartbeat_at DOUBLE PRECISION)""",
            "CREATE TABLE IF NOT EXISTS vidpipe_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        ]

    #: Columns added since the first schema (an older store gains them when opened).
    ADDED_COLUMNS = {
        "client": "TEXT", "node": "TEXT", "attempts": "INTEGER NOT NULL DEFAULT 0",
        "cancel_requested": "INTEGER NOT NULL DEFAULT 0", "lease_token": "TEXT", "lease_expires": "DOUBLE PRECISION",
        "idempotency_key": "TEXT",
    }
    INDEXES = (
        "CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, seq)",
        "CREATE INDEX IF NOT EXISTS jobs_by_seq ON jobs (seq)",
        # NOTE: NULLs are distinct in a unique index in both databases: jobs without a key never collide.
        "CREATE UNIQUE INDEX IF NOT EXISTS jobs_by_idempotency_key ON jobs (client, idempotency_key)",
    )

    def _migrate(self, run, columns_present) -> None:
        """Create or bring the schema up to SCHEMA_VERSION; refuse a newer one (written by a newer vidpipe)."""
        for statement in self._schema():
            run(statement)
        row = run("SELECT value FROM vidpipe_meta WHERE key = 'schema_version'").fetchone()
        version = int(row[0]) if row else None
        if version is not None and version > SCHEMA_VERSION:
            raise SchemaTooNew(f"{self.name}: its schema is version {version}, newer than this vidpipe's "
                               f"({SCHEMA_VERSION}): upgrade vidpipe on this node (pip install -U vidpipe)")
        present = columns_present(run)
        for name, declaration in self.ADDED_COLUMNS.items():
            if name not in present:
                run(f"ALTER TABLE jobs ADD COLUMN {name} {declaration}")
        for statement in self.INDEXES:
            run(statement)
        if version != SCHEMA_VERSION:
            run("DELETE FROM vidpipe_meta WHERE key = 'schema_version'")
            run("INSERT INTO vidpipe_meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))

    # 2. Jobs in, jobs read.

    def insert(self, record: JobRecord, idempotency_key: str | None = None) -> JobRecord:
        """Commit a new queued job (its `seq` is assigned here). With `idempotency_key`: a second insert by the same
        client with the same key commits nothing and returns the first job."""
        row = _to_row(record)
        row.pop("seq")
        row["idempotency_key"] = idempotency_key
        try:
            with self._transaction() as run:
                (seq,) = run(self._insert_sql(list(row)), tuple(row.values())).fetchone()
                self._notify(run, "job")
        except Exception as error:
            if idempotency_key is None or not self._duplicate(error):
                raise
            existing = self._one("SELECT * FROM jobs WHERE client = ? AND idempotency_key = ?",
                                 (record.client, idempotency_key))
            if existing is None:  # the first one was deleted in between: nothing to return
                raise
            return existing
        record.seq = seq
        return record

    def get(self, job_id: str) -> JobRecord | None:
        return self._one("SELECT * FROM jobs WHERE id = ?", (job_id,))

    def recent(self, limit: int = 50, before_seq: int | None = None) -> list[JobRecord]:
        """The newest jobs first; `before_seq`: only those submitted before that one (the next page)."""
        return self._all("SELECT * FROM jobs WHERE seq < ? ORDER BY seq DESC LIMIT ?",
                         (before_seq if before_seq is not None else 2**62, limit))

    def queued_ids(self, limit: int = 10_000) -> list[str]:
        """The queue, next first (its positions: 1, 2, ...)."""
        with self._transaction() as run:
            return [row[0] for row in run("SELECT id FROM jobs WHERE status = 'queued' ORDER BY seq LIMIT ?",
                                          (limit,)).fetchall()]

    def queue_position(self, job_id: str) -> int | None:
        with self._transaction() as run:
            row = run("SELECT COUNT(*) FROM jobs WHERE status = 'queued' AND seq <= "
                      "(SELECT seq FROM jobs WHERE id = ? AND status = 'queued')", (job_id,)).fetchone()
        return row[0] or None

    def count_queued(self, client: str | None = None) -> int:
        with self._transaction() as run:
            if client is None:
                return run("SELECT COUNT(*) FROM jobs WHERE status = 'queued'").fetchone()[0]
            return run("SELECT COUNT(*) FROM jobs WHERE status = 'queued' AND client = ?", (client,)).fetchone()[0]

    def request_cancel(self, job_id: str, finished_at: float) -> str | None:
        """'cancelled' (it was queued: done now), 'requested' (it runs: its node stops it), None (finished)."""
        with self._transaction() as run:
            if run("UPDATE jobs SET status = 'cancelled', finished_at = ? WHERE id = ? AND status = 'queued'",
                   (finished_at, job_id)).rowcount:
                return "cancelled"
            if run("UPDATE jobs SET cancel_requested = 1 WHERE id = ? AND status = 'running'", (job_id,)).rowcount:
                self._notify(run, f"cancel:{job_id}")
                return "requested"
        return None

    # 3. The queue: claims, leases, fenced writes.

    def claim(self, node: str, lease_s: float, max_attempts: int, started_at: float,
              exclude: tuple[str, ...] = ()) -> Claim | None:
        """The oldest job that is queued, or whose node's lease ran out, now held by `node`; None when there is none.
        In the same transaction, a job whose node died after it was cancelled ends cancelled, and one already
        started --max-attempts times fails with the reason. `exclude`: jobs the node still holds (one whose lease it
        lost and is still stopping is not its to take again until it has stopped)."""
        # NOTE: a running job without a lease was left by a vidpipe before leases (a server killed mid-job).
        expired = f"(status = 'running' AND (lease_expires IS NULL OR lease_expires < {self.NOW}))"
        token = uuid.uuid4().hex
        with self._transaction() as run:
            run(f"UPDATE jobs SET status = 'cancelled', finished_at = ?, {_NO_LEASE} WHERE {expired} "
                "AND cancel_requested = 1", (started_at,))
            run(f"UPDATE jobs SET status = 'failed', finished_at = ?, {_NO_LEASE}, error = 'its node stopped before "
                "it finished, on each of its ' || attempts || ' attempts (--max-attempts ' || ? || '; the last node: ' "
                f"|| COALESCE(node, 'unknown') || '): not run again' WHERE attempts >= ? AND (status = 'queued' OR "
                f"{expired})", (started_at, str(max_attempts), max_attempts))
            held = f" AND id NOT IN ({', '.join('?' * len(exclude))})" if exclude else ""
            row = run(f"SELECT id FROM jobs WHERE (status = 'queued' OR {expired}){held} ORDER BY seq LIMIT 1"
                      f"{self.CLAIM_LOCK}", tuple(exclude)).fetchone()
            if row is None:
                return None
            cursor = run(f"UPDATE jobs SET status = 'running', node = ?, attempts = attempts + 1, lease_token = ?, "
                         f"lease_expires = {self.NOW} + ?, started_at = ?, {_RESET_PROGRESS} WHERE id = ? "
                         "RETURNING *", (node, token, lease_s, started_at, row[0]))
            record = _record(cursor, cursor.fetchone())
        return Claim(record, token)

    def heartbeat(self, job_id: str, token: str, lease_s: float, progress: dict) -> Beat:
        """Extend the lease and write the job's progress; `held` False: another node holds the job now."""
        sets, values = _sets(progress)
        with self._transaction() as run:
            row = run(f"UPDATE jobs SET lease_expires = {self.NOW} + ?{sets} WHERE id = ? AND lease_token = ? "
                      "RETURNING cancel_requested", (lease_s, *values, job_id, token)).fetchone()
        return Beat(True, bool(row[0])) if row else Beat(False)

    def update(self, job_id: str, token: str, changes: dict) -> bool:
        """A fenced write about a held job (its status, progress, files); a finished status ends the lease. False:
        the node no longer holds the job, and nothing was written."""
        sets, values = _sets(changes)
        end = f", {_NO_LEASE}" if changes.get("status") in ("done", "failed", "cancelled") else ""
        with self._transaction() as run:
            return run(f"UPDATE jobs SET {sets.lstrip(', ')}{end} WHERE id = ? AND lease_token = ?",
                       (*values, job_id, token)).rowcount == 1

    def release(self, job_id: str, token: str) -> bool:
        """A node that stops cleanly hands a held job back to the queue; the attempt is not counted."""
        with self._transaction() as run:
            return run(f"UPDATE jobs SET status = 'queued', {_NO_LEASE}, started_at = NULL, attempts = attempts - 1, "
                       f"{_RESET_PROGRESS} WHERE id = ? AND lease_token = ?",
                       (job_id, token)).rowcount == 1

    def release_node(self, node: str) -> list[str]:
        """A node that starts again (killed before, so its ranks are gone) puts the jobs it held back in the queue at
        once instead of waiting for their leases: the attempt counts."""
        with self._transaction() as run:
            rows = run(f"UPDATE jobs SET status = 'queued', {_NO_LEASE}, {_RESET_PROGRESS} WHERE node = ? "
                       "AND status = 'running' RETURNING id", (node,)).fetchall()
        return [row[0] for row in rows]

    # 4. Nodes.

    def node_beat(self, info: NodeInfo, started_at: float) -> list[dict]:
        """Record that `info.name` is alive (and its state); returns every node seen in the last day, with the
        seconds since its last heartbeat (in the database's time)."""
        values = asdict(info)
        columns = ", ".join([*values, "started_at", "heartbeat_at"])
        updates = ", ".join(f"{name} = excluded.{name}" for name in [*values, "started_at", "heartbeat_at"])
        with self._transaction() as run:
            run(f"INSERT INTO nodes ({columns}) VALUES ({', '.join('?' for _ in values)}, ?, {self.NOW}) "
                f"ON CONFLICT (name) DO UPDATE SET {updates}", (*values.values(), started_at))
        return self.nodes()

    def nodes(self) -> list[dict]:
        """Every node seen in the last day, with the seconds since its last heartbeat (the database's time)."""
        with self._transaction() as run:
            cursor = run(f"SELECT name, url, plan, gpus, model, status, {self.NOW} - heartbeat_at AS seconds_since "
                         f"FROM nodes WHERE heartbeat_at > {self.NOW} - 86400 ORDER BY name")
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    # Reading rows.

    def _one(self, sql: str, params: tuple = ()) -> JobRecord | None:
        with self._transaction() as run:
            cursor = run(sql, params)
            row = cursor.fetchone()
            return _record(cursor, row) if row else None

    def _all(self, sql: str, params: tuple = ()) -> list[JobRecord]:
        with self._transaction() as run:
            cursor = run(sql, params)
            return [_record(cursor, row) for row in cursor.fetchall()]


class SchemaTooNew(Exception):
    pass


def _to_row(record: JobRecord) -> dict:
    row = asdict(record)
    for name in JSON_FIELDS:
        row[name] = json.dumps(row[name])
    row["cancel_requested"] = int(record.cancel_requested)
    return row


def _sets(changes: dict) -> tuple[str, list]:
    unknown = set(changes) - set(PROGRESS_FIELDS)
    if unknown:
        raise ValueError(f"not a field a node writes: {sorted(unknown)}")
    values = [json.dumps(v) if name in JSON_FIELDS else v for name, v in changes.items()]
    return "".join(f", {name} = ?" for name in changes), values


def _record(cursor, row) -> JobRecord:
    values = dict(zip((d[0] for d in cursor.description), row, strict=True))
    for name in JSON_FIELDS:
        values[name] = json.loads(values[name])
    values["cancel_requested"] = bool(values["cancel_requested"])
    return JobRecord(**{name: values[name] for name in _RECORD_FIELDS})
