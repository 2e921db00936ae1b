"""Where `vidpipe serve` keeps its jobs: one contract (`sql.py`), two backends. SQLite in --out for one node;
Postgres for a fleet of nodes sharing one queue (`--store postgresql://...`, design §11)."""

from __future__ import annotations

from pathlib import Path

from vidpipe.errors import UsageError
from vidpipe.serve.store.records import (
    FINISHED,
    STATUSES,
    Beat,
    Claim,
    JobRecord,
    NodeInfo,
    StoreUnavailable,
    now,
)
from vidpipe.serve.store.sql import SqlStore as JobStore

__all__ = ["FINISHED", "STATUSES", "Beat", "Claim", "JobRecord", "JobStore", "NodeInfo", "StoreUnavailable", "now",
           "open_store"]


def open_store(spec: str | None, out: Path) -> JobStore:
    """`--store`: None for SQLite in `out`, a postgresql:// DSN for the fleet's database. A store that cannot be
    opened is one line (no password in it)."""
    from vidpipe.serve.store.sql import SchemaTooNew

    if spec and (spec.startswith(("postgres://", "postgresql://")) or "=" in spec):  # a URL or key=value DSN
        from vidpipe.serve.store.postgres import PostgresStore, describe, redact

        try:
            return PostgresStore(spec)
        except StoreUnavailable as error:
            raise UsageError(f"--store: {error}; is the database running, and the DSN right?") from None
        except SchemaTooNew as error:
            raise UsageError(f"--store: {error}") from None
        except Exception as error:  # noqa: BLE001 - a bad DSN, a refused login: one line, the password hidden
            raise UsageError(f"--store {describe(spec)}: {' '.join(redact(str(error), spec).split())}") from None
    if spec:
        raise UsageError(f"--store {spec!r}: give a postgresql://USER:PASSWORD@HOST:PORT/DATABASE DSN, or leave it "
                         "out for SQLite in --out (one node)")
    from vidpipe.serve.store.sqlite import SqliteStore

    try:
        return SqliteStore(Path(out) / "jobs.sqlite3")
    except SchemaTooNew as error:
        raise UsageError(f"--out: {error}") from None

