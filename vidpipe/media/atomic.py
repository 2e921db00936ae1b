"""Write-then-rename, so a reader sees either the old output or the whole new one, never a partial file."""

from __future__ import annotations

import errno
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from vidpipe.errors import VidpipeError

# EDQUOT (quota exceeded) looks the same to the user as a full disk, and has the same fixes.
_DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}

_REASONS = {
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EROFS: "read-only file system",
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
}


def os_error_reason(exc: OSError) -> str:
    """A short lower-case reason for `exc` ("permission denied"), without the path or errno number."""
    reason = _REASONS.get(exc.errno) or (exc.strerror or "").lower() or str(exc)
    return " ".join(reason.split())  # one line, whatever the OS put in it


def temp_path_beside(path: Path, keep_suffix: bool = True) -> Path:
    """A fresh hidden name in `path`'s folder: `.{name}.tmp-<pid>-<random>[suffix]`.

    Same folder, so same filesystem, so `os.replace` is atomic. The suffix is repeated at the end because
    ffmpeg picks the container from it.
    """
    suffix = path.suffix if keep_suffix else ""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}{suffix}")


@contextmanager
def atomic_output(path: Path, keep_suffix: bool = True) -> Iterator[Path]:
    """Yield a temp path beside `path` for the caller to write (a file or a folder); then move it onto `path`.

    An existing output is replaced. On any exception the temp is deleted and nothing changes at `path`. An
    `OSError` becomes a `VidpipeError` naming `path` (a full disk says so).
    """
    temp = temp_path_beside(path, keep_suffix)
    try:
        yield temp
        _move_into_place(temp, path)
    except BaseException as exc:  # KeyboardInterrupt too: a ^C must not leave a temp behind
        remove_quietly(temp)
        if isinstance(exc, OSError):
            raise VidpipeError(_write_failure_message(path, exc)) from exc
        raise


def _move_into_place(temp: Path, path: Path) -> None:
    if not (temp.is_dir() and path.is_dir()):
        os.replace(temp, path)
        return
    # os.replace cannot replace a non-empty folder: move the old one aside first. Between the two renames
    # `path` briefly does not exist, but it never holds a mix of old and new frames.
    old = temp_path_beside(path, keep_suffix=False)
    os.replace(path, old)
    try:
        os.replace(temp, path)
    except BaseException:
        os.replace(old, path)
        raise
    shutil.rmtree(old, ignore_errors=True)


def remove_quietly(path: Path) -> None:
    """Delete a file or folder tree at `path` if there is one; never raises (used while failing already)."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    except OSError:
        pass


def _write_failure_message(path: Path, exc: OSError) -> str:
    if exc.errno in _DISK_FULL_ERRNOS:
        return f"disk full while writing {path}: free space or choose another --out"
    return f"could not write {path} ({os_error_reason(exc)}): check the --out folder or choose another"


def remove_temporaries(folder: Path) -> list[Path]:
    """Delete the hidden temporaries writers left in `folder` (a worker killed mid-write cannot clean up).

    Only names of our own pattern, `.{name}.tmp-<pid>-<hex>...`, are touched.
    """
    import re

    pattern = re.compile(r"^\..+\.tmp-\d+-[0-9a-f]{8}")
    removed = []
    for entry in Path(folder).iterdir() if Path(folder).is_dir() else []:
        if pattern.match(entry.name):
            remove_quietly(entry)
            removed.append(entry)
    return removed
