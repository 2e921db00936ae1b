"""A throwaway Postgres cluster for the fleet's tests: Debian's `postgresql` binaries (initdb, pg_ctl), a data
folder under /tmp, a free local port. Root cannot run initdb, so as root the cluster runs as the `postgres` user the
package creates. Every test gets its own database (`fresh_database`)."""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

#: The role the tests connect as, with a password (it must never show in a message, a log or health).
USER, PASSWORD = "vidpipe", "pw-never-shown-9f3c"
_databases = itertools.count()


class Cluster:
    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="vidpipe-pg-"))
        self.port = _free_port()
        self.bin = _binaries()
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def start(self) -> None:
        data = self.root / "data"
        if self.as_user:
            shutil.chown(self.root, "postgres")
        password_file = self.root / "password"
        password_file.write_text(PASSWORD + "\n")
        if self.as_user:
            shutil.chown(password_file, "postgres")
        self._run("initdb", "-D", str(data), "-U", USER, "--pwfile", str(password_file), "-A", "scram-sha-256",
                  "--no-sync", "-E", "UTF8")
        self.resume()

    def pause(self) -> None:
        """The database goes away (its connections are cut); `resume` brings it back on the same port."""
        self._run("pg_ctl", "-D", str(self.root / "data"), "-m", "fast", "-w", "stop")

    def resume(self) -> None:
        self._run("pg_ctl", "-D", str(self.root / "data"), "-l", str(self.root / "log"), "-w", "-t", "60", "-o",
                  f"-p {self.port} -k {self.root} -h 127.0.0.1 -c fsync=off -c max_connections=200", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.root / "data"), "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(self.root, ignore_errors=True)

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{self.port}/{database}"

    def fresh_database(self) -> str:
        import psycopg

        name = f"t{os.getpid()}_{next(_databases)}"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.dsn(name)

    def _run(self, tool: str, *args: str, check: bool = True) -> None:
        result = subprocess.run([*self.as_user, str(self.bin / tool), *args], capture_output=True, text=True,
                                timeout=120, cwd=self.root)
        if check and result.returncode != 0:
            raise RuntimeError(f"{tool} failed: {result.stderr.strip() or result.stdout.strip()}")


def start_cluster() -> tuple[Cluster | None, str]:
    """(a running cluster, "") or (None, why the fleet's tests are skipped)."""
    if not glob.glob("/usr/lib/postgresql/*/bin/initdb") and not shutil.which("initdb"):
        return None, "no Postgres here: apt-get install postgresql (.ci/run does)"
    if os.geteuid() == 0 and not shutil.which("runuser"):
        return None, "running as root without runuser: initdb refuses root"
    cluster = Cluster()
    try:
        cluster.start()
    except (RuntimeError, KeyError, LookupError, subprocess.TimeoutExpired) as error:
        cluster.stop()
        return None, f"could not start a throwaway Postgres: {error}"
    return cluster, ""


def _binaries() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else Path(shutil.which("initdb")).parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
