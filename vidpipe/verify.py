"""Checking a run's final latents against a reference computation of the same seeds (design §6: every strategy,
for every W, gives the 1-rank latents)."""

from __future__ import annotations

import torch

#: Allowed difference where bit-identity cannot be expected (GPU kernels, half precision).
HALF_TOLERANCE = 2e-2
#: Allowed difference between CPU fp32 runs that split the work (or the cores) differently, relative to the
#: reference's largest magnitude when that exceeds 1: after few steps the latents still carry noise scaled by
#: sigma (up to 700), and rounding differences are scaled with it.
FP32_TOLERANCE = 1e-4


def compare_finals(finals: dict[int, torch.Tensor], expected: dict[int, torch.Tensor], mode: str) -> dict:
    """`mode`: "bit-identical", "fp32" (max abs diff <= 1e-4 x max(1, max |reference|)) or "half"
    (allclose 2e-2). Missing samples fail."""
    max_abs_diff = 0.0
    mismatched = []
    for index, reference in sorted(expected.items()):
        got = finals.get(index)
        if got is None or got.shape != reference.shape:
            mismatched.append(index)
            continue
        got = got.to(reference.dtype)
        diff = (got.float() - reference.float()).abs().max().item()
        max_abs_diff = max(max_abs_diff, diff)
        if mode == "bit-identical":
            ok = torch.equal(got, reference)
        elif mode == "fp32":
            ok = diff <= FP32_TOLERANCE * max(1.0, reference.abs().max().item())
        else:
            ok = torch.allclose(got.float(), reference.float(), HALF_TOLERANCE, HALF_TOLERANCE)
        if not ok:
            mismatched.append(index)
    return {
        "verified": not mismatched,
        "verify_mode": {
            "bit-identical": "bit-identical",
            "fp32": f"max abs diff <= {FP32_TOLERANCE:g} x max(1, max |reference|)",
            "half": f"allclose(rtol={HALF_TOLERANCE:g}, atol={HALF_TOLERANCE:g})",
        }[mode],
        "verify_max_abs_diff": max_abs_diff,
        "mismatched_samples": mismatched,
    }
