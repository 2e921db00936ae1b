"""Hand-offs: a sample's state (latents + conditioning) sent whole from one rank to another, without blocking.

Tensors go one by one in the fixed order of the model's `state_spec`, each with its own tag, so that the
receiver, which allocated its buffers from the same spec, matches them without any metadata exchange.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from vidpipe.models.base import SampleState, TensorSpec


@dataclass
class PendingSend:
    """A posted send. NOTE: it holds the tensors: they must stay alive (and unchanged) until `wait` returns."""

    works: list
    tensors: list[torch.Tensor]

    def wait(self) -> None:
        for work in self.works:
            work.wait()
        self.tensors.clear()


@dataclass
class PendingRecv:
    works: list
    state: SampleState

    def wait(self) -> SampleState:
        for work in self.works:
            work.wait()
        return self.state


def post_send(state: SampleState, spec: dict[str, TensorSpec], dst: int) -> PendingSend:
    """NOTE: each tensor is sent from where the receiver expects it (the device, or the host for `on_host`
    specs): on GPUs a device tensor goes over NCCL and a host tensor over gloo, and both sides must agree."""
    device = state["latents"].device
    tensors = [state[name].to(s.device_for(device)).contiguous() for name, s in spec.items()]
    works = [dist.isend(tensor, dst, tag=tag) for tag, tensor in enumerate(tensors)]
    return PendingSend(works, tensors)


def post_recv(spec: dict[str, TensorSpec], src: int, device: torch.device) -> PendingRecv:
    state = {name: s.empty(device) for name, s in spec.items()}
    works = [dist.irecv(tensor, src, tag=tag) for tag, tensor in enumerate(state.values())]
    return PendingRecv(works, state)


def send_latent(latents: torch.Tensor, dst: int) -> None:
    """Blocking send of one tensor (phase-2 redistribution, not on the hot path)."""
    dist.send(latents.contiguous(), dst)


def recv_latent(spec: TensorSpec, src: int, device: torch.device) -> torch.Tensor:
    tensor = spec.empty(device)
    dist.recv(tensor, src)
    return tensor
