"""Where a model comes from (`ModelSource`) and where vidpipe caches what it builds: shared by the registry and
every family package, so that neither imports the other."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from; small and picklable, handed to every worker.

    kind "dir": `path` is a diffusers model directory with weights (Stable Video Diffusion or Wan).
    kind "random": `path` is a config directory (no weights); workers build random weights from it.
    """

    kind: Literal["dir", "random"]
    path: Path
    name: str  # what the user asked for
    repo_id: str | None = None  # the hub repo it came from, if any
    family: str = "svd"  # the family package that runs it (`vidpipe/models/<family>/`), from model_index.json


def default_cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vidpipe"


@contextmanager
def quiet_saving():
    """Saving a model built here (a few MB, once): transformers' "Writing model shards" bar would only break the
    command's one-line output."""
    from transformers.utils import logging as transformers_logging

    bars_were_on = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if bars_were_on:
            transformers_logging.enable_progress_bar()


def build_once(name: str, cache_dir: Path | None, build: Callable[[Path], object]) -> Path:
    """`cache_dir/name` (default: the vidpipe cache), made by `build(directory)` if it is not there yet.

    Written to a temporary directory and renamed into place: a concurrent or interrupted build never leaves half a
    model, and a build that lost the race to an identical one is simply dropped. The path is absolute, so that
    workers find it whatever their working directory.
    """
    from vidpipe.errors import UsageError

    root = (Path(cache_dir) if cache_dir is not None else default_cache_root()).expanduser().absolute()
    target = root / name
    if (target / "model_index.json").is_file():
        return target
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    except OSError as error:
        raise UsageError(f"cannot write the model {name} under {root}: {error}; pass a writable cache dir") from error
    try:
        with quiet_saving():
            build(tmp)
        os.rename(tmp, target)
    except OSError as error:
        if not (target / "model_index.json").is_file():  # another process's identical build did not land either
            raise UsageError(f"cannot write the model {name} to {target}: {error}; free disk space") from error
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
