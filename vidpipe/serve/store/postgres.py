"""The fleet's store: every `vidpipe serve --store postgresql://...` node shares one queue in one Postgres database.

A claim locks its row with `FOR UPDATE SKIP LOCKED`, so two nodes claiming at once take different jobs and never
wait for each other. Leases are measured by the database's clock. One connection per node, behind a lock; a lost
connection raises `StoreUnavailable` and the next call connects again.
"""

from __future__ import annotations

import sys
import threading
from contextlib import contextmanager

import psycopg
from psycopg import conninfo

from vidpipe.serve.store.records import StoreUnavailable
from vidpipe.serve.store.sql import SqlStore

#: The channel nodes wake each other on (design §11: NOTIFY as a wake-up, the row as the truth).
CHANNEL = "vidpipe"
#: Any number, the same on every node: schema changes by nodes starting at once are made one at a time.
_SCHEMA_LOCK = 7_271_929_041
#: Give up on an unreachable database after this long, and notice a dead connection this fast.
_CONNECT = {"connect_timeout": 5, "keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2,
            "keepalives_count": 3, "tcp_user_timeout": 10_000, "application_name": "vidpipe serve"}


class PostgresStore(SqlStore):
    NOW = "EXTRACT(EPOCH FROM clock_timestamp())::double precision"
    SEQ = "BIGSERIAL"
    CLAIM_LOCK = " FOR UPDATE SKIP LOCKED"

    def __init__(self, dsn: str):
        self._dsn = dsn
        self.name = f"Postgres store {describe(dsn)}"
        self.shared = True  # many nodes
        self._lock = threading.RLock()
        self._conn: psycopg.Connection | None = None
        self._closed = threading.Event()
        with self._transaction() as run:
            run("SELECT pg_advisory_xact_lock(?)", (_SCHEMA_LOCK,))
            self._migrate(run, lambda run: {row[0] for row in run(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'jobs' "
                "AND table_schema = current_schema()")})

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self._dsn, autocommit=True, **_CONNECT)
        return self._conn

    @contextmanager
    def _transaction(self):
        with self._lock:
            try:
                conn = self._connection()
                with conn.transaction():
                    yield lambda sql, params=(): conn.execute(sql.replace("?", "%s"), params)
            except (psycopg.OperationalError, psycopg.InterfaceError) as error:
                if self._conn is not None:
                    self._conn.close()
                reason = redact(" ".join(str(error).split()), self._dsn)  # one line
                raise StoreUnavailable(f"{self.name}: cannot connect ({reason})") from None

    def _duplicate(self, error: Exception) -> bool:
        return isinstance(error, psycopg.errors.UniqueViolation)

    def _insert_sql(self, columns: list[str]) -> str:
        return f"INSERT INTO jobs ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)}) RETURNING seq"

    def _notify(self, run, message: str) -> None:
        run("SELECT pg_notify(?, ?)", (CHANNEL, message))

    def listen(self, on_message) -> None:
        threading.Thread(target=self._listen, args=(on_message,), name="vidpipe-listen", daemon=True).start()

    def _listen(self, on_message) -> None:
        """Its own connection, LISTENing; lost, it connects again (a notification missed meanwhile is made up for by
        polling)."""
        while not self._closed.is_set():
            try:
                with psycopg.connect(self._dsn, autocommit=True, **_CONNECT) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    while not self._closed.is_set():
                        for notice in conn.notifies(timeout=1.0):
                            try:
                                on_message(notice.payload)
                            except Exception as error:  # noqa: BLE001 - a wake-up must not end the listening
                                print(f"vidpipe serve: a store notification failed: {error!r}", file=sys.stderr)
            except (psycopg.OperationalError, psycopg.InterfaceError):
                self._closed.wait(2.0)

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            if self._conn is not None:
                self._conn.close()


def redact(text: str, dsn: str) -> str:
    """`text` with the DSN's password, if it has one, replaced by ***."""
    try:
        password = conninfo.conninfo_to_dict(dsn).get("password")
    except psycopg.ProgrammingError:
        password = None
    return text.replace(password, "***") if password else text


def describe(dsn: str) -> str:
    """The DSN as messages show it: user, host, port and database, never the password."""
    try:
        parts = conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "postgresql://(a DSN that could not be read)"
    user = f"{parts['user']}@" if parts.get("user") else ""
    port = f":{parts['port']}" if parts.get("port") else ""
    return f"postgresql://{user}{parts.get('host', 'localhost')}{port}/{parts.get('dbname', '')}"
