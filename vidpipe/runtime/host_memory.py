"""Keep a CPU rank's freed memory for its next tensors instead of handing it back to the kernel at every free.

glibc's malloc serves a large block (above a threshold that starts at 128 KB) with its own `mmap` and unmaps it
when it is freed, and gives the top of its heap back once more than a small amount is free there. A CPU rank
allocates and frees the same activations in every block of every step, so the kernel maps, zeroes and unmaps the
same hundreds of megabytes again each step. Measured on one wan-small transformer call on one thread: 54,000 page
faults (213 MB zeroed) and 0.18 s of system time per call, and a kernel worker (`mm_percpu_wq`) busy about 5 % of
a core beside the rank: the core a second rank computes on, so under `cfg2` or `sp2` every collective waits for
the rank that kernel worker slowed. With the two settings below the same call faults no page after the first.

What it costs: up to `TRIM_THRESHOLD` of freed memory stays with the rank (its peak is unchanged: that memory was
in use a moment before). The ranks of a GPU run compute in device memory and keep glibc's defaults. A user who
tunes malloc themselves (`MALLOC_*_` or `GLIBC_TUNABLES`, a preloaded jemalloc or tcmalloc) keeps their own
settings, and `VIDPIPE_HOST_MALLOC=system` keeps glibc's defaults.
"""

from __future__ import annotations

import ctypes
import os
import platform

M_TRIM_THRESHOLD = -1  # <malloc.h>
M_MMAP_THRESHOLD = -3

#: The largest threshold glibc accepts (half its 64 MB heap size on 64-bit): blocks below it come from the heap.
MMAP_THRESHOLD = 32 << 20
#: Free memory the top of the heap may hold before glibc trims it: one step's activations of the models run on CPU.
TRIM_THRESHOLD = 512 << 20

OPT_OUT_ENV = "VIDPIPE_HOST_MALLOC"

#: What `keep_freed_memory` did in this process ("" until a CPU rank calls it): reported with the run's figures.
applied = ""


def users_own_malloc_settings(environ=os.environ) -> str | None:
    """What in the environment already tunes or replaces malloc, or None."""
    if environ.get(OPT_OUT_ENV) == "system":
        return f"{OPT_OUT_ENV}=system"
    tuned = sorted(k for k in environ if k.startswith("MALLOC_") and k.endswith("_"))
    if tuned:
        return tuned[0]
    if "glibc.malloc" in environ.get("GLIBC_TUNABLES", ""):
        return "GLIBC_TUNABLES"
    preload = environ.get("LD_PRELOAD", "")
    if "jemalloc" in preload or "tcmalloc" in preload:
        return "LD_PRELOAD"
    return None


def keep_freed_memory() -> str:
    """Apply the settings to this process's malloc (a CPU rank's, after its fork); says what it did."""
    global applied
    applied = _apply()
    return applied


def _apply() -> str:
    if platform.libc_ver()[0] != "glibc":
        return "system (not glibc)"
    own = users_own_malloc_settings()
    if own is not None:
        return f"the user's ({own})"
    libc = ctypes.CDLL(None)
    if not (libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)):
        return "system (glibc refused the settings)"
    return f"kept: mmap above {MMAP_THRESHOLD >> 20} MB, trim above {TRIM_THRESHOLD >> 20} MB"
