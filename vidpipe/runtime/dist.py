"""The per-rank distributed context: rank, world, device and backend, with an explicit process-group lifetime."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist

from vidpipe.runtime.devices import threads_per_rank
from vidpipe.runtime.host_memory import keep_freed_memory


@dataclass(frozen=True)
class RankSetup:
    """Everything a worker needs to join the run; picklable, built by the launcher."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    device_type: str  # "cpu" | "cuda"
    backend: str  # "gloo" | "nccl"
    store_host: str | None = None  # None: torchrun's env:// rendezvous
    store_port: int | None = None
    timeout_s: float = 1800.0
    launched_at: float = 0.0  # wall time the command started (start-up figures are measured from it)
    #: The launcher's VIDPIPE_* settings at launch time. NOTE: ranks are forked from a worker server that may
    #: have started long before (a long-lived process launches many runs), so its environment can be stale.
    env: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class DistContext:
    """A joined rank. Passed explicitly to strategies; never a module global."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str
    local_world_size: int = 1  # ranks on this rank's machine (under torchrun, --nproc-per-node)
    #: Wall times of this rank's start-up stages ("launched", "started", "joined"); jobs add "loaded" and
    #: "first_step". Reported as seconds after launch (`metrics.startup_seconds`).
    stage_times: dict[str, float] = field(default_factory=dict, compare=False)

    @property
    def is_first(self) -> bool:
        return self.rank == 0

    @property
    def is_last(self) -> bool:
        return self.rank == self.world_size - 1

    @property
    def first_machine_ranks(self) -> int:
        """Ranks on rank 0's machine: torchrun numbers each node's ranks consecutively, rank 0's node first."""
        return self.local_world_size if self.local_world_size < self.world_size else self.world_size

    def synchronize(self) -> None:
        """Wait for the work queued on this rank's compute stream, so that a clock read after it means something.
        NOTE: not `torch.cuda.synchronize`, which also waits for NCCL's streams (a send still in flight)."""
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()

    def barrier(self) -> None:
        if self.backend == "nccl":
            dist.barrier(device_ids=[self.device.index])
        else:
            dist.barrier()


def process_group_backend(backend: str, device_type: str) -> str:
    """The backend string for `init_process_group`: on CUDA one group with two backends, so that tensors on the
    GPU go over NCCL while CPU tensors (control messages: headers, cancel flags, the sampling state of a sample in
    flight, pickled objects) go over gloo. NCCL alone refuses CPU tensors. Subgroups (the mesh's) inherit both."""
    if backend == "nccl":
        return "cpu:gloo,cuda:nccl"
    return backend


def cuda_device_for(local_rank: int, visible: int) -> torch.device:
    """The GPU of a rank: its local rank, wrapped onto the visible devices. Under torchrun with one visible GPU per
    process (a scheduler setting CUDA_VISIBLE_DEVICES per rank) `cuda:LOCAL_RANK` would not exist."""
    if visible < 1:
        raise RuntimeError("no CUDA device is visible to this rank (CUDA_VISIBLE_DEVICES="
                           f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})")
    return torch.device("cuda", local_rank % visible)


def join(setup: RankSetup, started_at: float | None = None) -> DistContext:
    """Pin the device, share out the CPU, create the process group. Pair with `leave` in a `finally`."""
    stage_times = {"launched": setup.launched_at or time.time(), "started": started_at or time.time()}
    device_id = None
    if setup.device_type == "cuda":
        device = cuda_device_for(setup.local_rank, torch.cuda.device_count())
        torch.cuda.set_device(device)
        device_id = device  # NCCL binds its communicator to this GPU at once, not at the first collective
    else:
        device = torch.device("cpu")
        keep_freed_memory()
    # NOTE: on CPU every rank would otherwise start one thread per core: W ranks x cores threads thrash.
    torch.set_num_threads(threads_per_rank(setup.local_world_size))

    timeout = timedelta(seconds=setup.timeout_s)
    backend = process_group_backend(setup.backend, setup.device_type)
    if setup.store_port is not None:
        store = dist.TCPStore(
            setup.store_host, setup.store_port, setup.world_size, is_master=False, timeout=timeout
        )
        dist.init_process_group(backend, store=store, rank=setup.rank, world_size=setup.world_size,
                                timeout=timeout, device_id=device_id)
    else:
        dist.init_process_group(backend, timeout=timeout, device_id=device_id)  # env:// from torchrun
    stage_times["joined"] = time.time()
    return DistContext(setup.rank, setup.world_size, setup.local_rank, device, setup.backend,
                       setup.local_world_size, stage_times)


def leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def torchrun_setup(device_type: str, backend: str, timeout_s: float = 1800.0) -> RankSetup | None:
    """The rank this process is under torchrun (RANK/WORLD_SIZE/LOCAL_RANK set), or None when not."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    return RankSetup(
        rank=int(os.environ["RANK"]),
        world_size=int(os.environ["WORLD_SIZE"]),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"])),
        device_type=device_type,
        backend=backend,
        timeout_s=timeout_s,
        launched_at=process_start_time(),
    )


def process_start_time() -> float:
    """Wall time this process started: under torchrun, the closest thing to the command's launch."""
    import psutil

    return psutil.Process().create_time()
