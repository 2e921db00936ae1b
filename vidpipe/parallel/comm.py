"""The collectives that split one sample's step, each counting what this rank sends and how long it waits.

Every function takes the `CommStats` of its rank explicitly, so `bench` can report the bytes each rank sends per
step beside the analytic figure (`models/svd/cost.py`). "Sent" means payload that leaves this rank for others:
an all-gather of a chunk to K ranks sends the chunk K-1 times, an all-to-all sends every part but its own, a
halo sends one frame to each neighbour. Padding added for uneven splits counts (it is really moved).

NOTE: gloo's list collectives refuse tensors of unequal size, so uneven splits are padded (gathers) or go
through `all_to_all_single` with split sizes on flat buffers (all-to-alls).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from vidpipe.runtime.timing import DeviceTimer, SpanStart, span_start

#: torch 2.13 renamed all_gather_into_tensor (and warns on the old name); older releases have only the old one.
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


@dataclass
class CommStats:
    """What this rank's collectives sent, how many there were, and the time spent in them: host seconds on CPU,
    the compute stream's seconds on CUDA, from events around each call (NCCL runs async: a host clock reads ~0)."""

    bytes_sent: int = 0
    calls: int = 0
    timer: DeviceTimer = field(default_factory=DeviceTimer, repr=False, compare=False)

    def add(self, nbytes: int, started: SpanStart | float) -> None:
        """Count one call that sent `nbytes` and began at `started` (`span_start`, or a `perf_counter` reading)."""
        self.bytes_sent += nbytes
        self.calls += 1
        if isinstance(started, SpanStart):
            self.timer.stop(started)
        else:
            self.timer.stop(SpanStart(torch.device("cpu"), started))

    @property
    def seconds(self) -> float:
        """Time inside collectives so far. NOTE: on CUDA it waits for the pending events: read it after a run."""
        return self.timer.seconds()

    def snapshot(self) -> tuple[int, int, float]:
        return self.bytes_sent, self.calls, self.seconds


@dataclass(frozen=True)
class Group:
    """A process group with this rank's position in it, and the stats its collectives add to."""

    group: dist.ProcessGroup
    rank: int
    size: int
    global_ranks: tuple[int, ...]
    stats: CommStats

    @classmethod
    def of(cls, mesh, stats: CommStats) -> Group:
        group = mesh.get_group()
        ranks = tuple(dist.get_process_group_ranks(group))
        return cls(group, dist.get_rank(group), len(ranks), ranks, stats)


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def gather_along(local: torch.Tensor, dim: int, sizes: list[int], group: Group) -> torch.Tensor:
    """Every rank's `local` (of size `sizes[rank]` along `dim`) concatenated along `dim`, on every rank."""
    longest = max(sizes)
    padded = local
    if local.shape[dim] < longest:  # uneven split: pad to the longest part, trim after
        pad_shape = list(local.shape)
        pad_shape[dim] = longest - local.shape[dim]
        padded = torch.cat([local, local.new_zeros(pad_shape)], dim=dim)
    padded = padded.movedim(dim, 0).contiguous()
    out = padded.new_empty((group.size * longest, *padded.shape[1:]))
    started = span_start(padded.device)
    _all_gather_single(out, padded, group=group.group)
    group.stats.add(_nbytes(padded) * (group.size - 1), started)
    parts = [out[r * longest : r * longest + sizes[r]] for r in range(group.size)]
    return torch.cat(parts).movedim(0, dim)


def all_to_all(send_parts: list[torch.Tensor], recv_numels: list[int], group: Group) -> list[torch.Tensor]:
    """Send `send_parts[j]` to rank j; returns the flat part received from each rank (of `recv_numels[i]`)."""
    send_numels = [part.numel() for part in send_parts]
    send = send_parts[0].new_empty(sum(send_numels))
    for flat, part in zip(send.split(send_numels), send_parts, strict=True):
        flat.view(part.shape).copy_(part)  # NOTE: one copy; `cat` of reshaped slices copied every slice twice
    recv = send.new_empty(sum(recv_numels))
    started = span_start(send.device)
    dist.all_to_all_single(recv, send, recv_numels, send_numels, group=group.group)
    sent = (sum(send_numels) - send_numels[group.rank]) * send.element_size()
    group.stats.add(sent, started)
    return list(recv.split(recv_numels))


def exchange_halo(first: torch.Tensor, last: torch.Tensor, group: Group) -> tuple[torch.Tensor | None, ...]:
    """Send `first` to the previous rank and `last` to the next; returns (the previous rank's last, the next
    rank's first), None at the ends of the group. One batched exchange with the two neighbours only."""
    ops, before, after = [], None, None
    sent = 0
    if group.rank > 0:
        prev = group.global_ranks[group.rank - 1]
        before = torch.empty_like(last)
        ops += [dist.P2POp(dist.isend, first.contiguous(), prev, group.group),
                dist.P2POp(dist.irecv, before, prev, group.group)]
        sent += _nbytes(first)
    if group.rank < group.size - 1:
        nxt = group.global_ranks[group.rank + 1]
        after = torch.empty_like(first)
        ops += [dist.P2POp(dist.isend, last.contiguous(), nxt, group.group),
                dist.P2POp(dist.irecv, after, nxt, group.group)]
        sent += _nbytes(last)
    started = span_start(first.device)
    if ops:
        for work in dist.batch_isend_irecv(ops):
            work.wait()
    group.stats.add(sent, started)
    return before, after


def gather_small(values: torch.Tensor, group: Group) -> torch.Tensor:
    """Every rank's `values` (same shape everywhere) stacked: [group size, *values.shape]."""
    shape = values.shape
    values = values.contiguous().view(1, -1)
    out = values.new_empty((group.size, values.shape[1]))
    started = span_start(values.device)
    _all_gather_single(out, values, group=group.group)
    group.stats.add(_nbytes(values) * (group.size - 1), started)
    return out.view(group.size, *shape)
