"""Imported last by the worker server (see `forkserver.py`): tells the launcher the preload is done, and whether
it left CUDA initialised (ranks forked from such a process cannot use CUDA)."""

import json
import os
import time

import psutil
import torch

from vidpipe.runtime.forkserver import STATE_FILE_ENV


def _write_state() -> None:
    path = os.environ.get(STATE_FILE_ENV)
    if not path:
        return
    state = {"pid": os.getpid(), "cuda_initialized": bool(torch.cuda.is_initialized()),
             "preload_s": round(time.time() - psutil.Process().create_time(), 3)}
    partial = f"{path}.partial"
    with open(partial, "w") as file:  # written whole, then renamed: the launcher never reads half a state
        json.dump(state, file)
    os.replace(partial, path)


_write_state()
