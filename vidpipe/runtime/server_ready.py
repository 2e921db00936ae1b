"""Imported last by the worker server (see `forkserver.py`): warms what every rank would otherwise build again after
its fork, then tells the launcher the preload is done, and whether it left CUDA initialised (ranks forked from such
a process cannot use CUDA)."""

import gc
import json
import os
import sys
import time

import psutil
import torch

from vidpipe.runtime.forkserver import STATE_FILE_ENV


def _warm() -> None:
    """Work each rank would repeat, done once here and inherited by every fork.

    - transformers (5.x) builds its checkpoint conversion mapping, hundreds of compiled regular expressions, at the
      first `from_pretrained` of a process: about 0.7 s of every rank's load here (the CLIP and UMT5 encoders).
    - `gc.freeze()` moves the preloaded modules' objects to a permanent generation: a rank's `gc.collect()` (each
      release of the denoiser) no longer walks hundreds of thousands of them, and a collection never writes to
      their pages, which stay shared with the server after the fork.
    """
    if "transformers" in sys.modules:  # only where the preload imported it (simulate's does not)
        try:
            from transformers.conversion_mapping import get_checkpoint_conversion_mapping

            get_checkpoint_conversion_mapping("clip")
        except Exception:  # noqa: BLE001 - another transformers version: nothing to warm, nothing lost
            pass
    gc.collect()
    gc.freeze()


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


_warm()
_write_state()
