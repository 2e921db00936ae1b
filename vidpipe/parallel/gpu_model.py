"""The stated GPU model of a latency plan (cfg, sp), shared by every family's simulator: what `vidpipe simulate`
prints beside its measured run, because a CPU host's gloo (more processes than cores, milliseconds a collective)
says nothing about NCCL inside one GPU machine (tens of microseconds).

One step of one rank on G GPUs = the one-GPU kernel time x the rank's share of the work + a fixed latency per
collective + the bytes it sends over one link at a fixed bandwidth; no overlap of communication with compute.
Each family supplies its own share, collective count and bytes (`models/<family>/cost.py`).
"""

from __future__ import annotations

#: NCCL's latency per small collective inside one machine, and the bandwidth of a GPU-to-GPU link (NVLink 3 is
#: 300 GB/s a direction on paper; 100 GB/s is what an all-to-all of a few MB gets).
GPU_COLLECTIVE_LATENCY_S = 20e-6
GPU_LINK_BYTES_PER_S = 100e9


def predicted_gpu_step_s(step_s: float, work_share: float, calls: float, bytes_sent: float) -> float:
    """A step of one rank on GPUs, modelled: the kernel time shrinks with the rank's share of the work, each
    collective costs a fixed latency, and the bytes go over one link at a fixed bandwidth (no overlap)."""
    return step_s * work_share + calls * GPU_COLLECTIVE_LATENCY_S + bytes_sent / GPU_LINK_BYTES_PER_S


def gpu_model_figures(step_s: float, work_share: float, calls: float, bytes_sent: float, bytes_what: str,
                      calls_what: str = "") -> dict:
    """The model's figures for one rank's step (the slowest rank's share, calls and bytes), with its assumptions
    in words; `bytes_what` says whose bytes ("SVD-XT's bytes at latent 14x40x72, fp16"), `calls_what` where the
    count comes from (", as counted")."""
    predicted = predicted_gpu_step_s(step_s, work_share, calls, bytes_sent)
    return {
        "predicted_step_s": predicted,
        "predicted_latency_speedup": step_s / predicted,
        "work_share": work_share,
        "collectives_per_step": calls,
        "bytes_per_step": bytes_sent,
        "assumptions": (
            f"kernel time x work share ({work_share:.3f}); {GPU_COLLECTIVE_LATENCY_S * 1e6:.0f} us per collective "
            f"({calls:g} per step{calls_what}); {bytes_what} ({bytes_sent / 1e6:.1f} MB per step) at "
            f"{GPU_LINK_BYTES_PER_S / 1e9:.0f} GB/s; no overlap of communication with compute; kernels as "
            "efficient on a share of the work as on all of it"
        ),
    }


def gpu_model_line(model: dict) -> str:
    """The one line `simulate` prints for `gpu_model_figures`' result."""
    return (f"GPU model (a model, not a measurement): one step {model['predicted_step_s'] * 1000:.1f} ms, latency "
            f"speed-up {model['predicted_latency_speedup']:.2f}x over one GPU; assumes {model['assumptions']}")
