"""The `compare-latents` check: each plan's (or dtype's) latents against a reference's."""

from __future__ import annotations

from pathlib import Path

from ..context import REPO
from .common import write_check


def _latent_files(path: Path) -> dict[str, Path]:
    if path.is_dir():
        return {file.name: file for file in sorted(path.glob("*.latents.safetensors"))}
    return {path.name: path} if path.is_file() else {}


def command_compare_latents(args) -> int:
    """Each NAME=PATH's latents (files, or the .latents.safetensors in a folder) against the reference's of the
    same names: the max abs difference, scaled by the reference's magnitude above 1 (as vidpipe's own
    verification), and NaN/Inf counts. Fails on NaN/Inf, on a shape mismatch, or beyond --tolerance if given."""
    import torch
    from safetensors.torch import load_file

    def load(file: Path) -> torch.Tensor:
        return load_file(str(file))["latents"].float()

    reference = _latent_files(REPO / args.reference)
    result = {"reference": args.reference, "reference_files": len(reference), "tolerance": args.tolerance,
              "compared": {}}
    bad = [] if reference else [f"no latents in {args.reference}"]
    for item in args.items:
        name, _, path = item.partition("=")
        entry = {"path": path, "files": 0, "max_abs_diff": None, "relative_diff": None, "nan": 0, "inf": 0,
                 "missing": []}
        for file_name, ref_file in reference.items():
            other = _latent_files(REPO / path).get(file_name)
            if other is None:
                entry["missing"].append(file_name)
                continue
            expected, actual = load(ref_file), load(other)
            entry["nan"] += int(torch.isnan(actual).sum())
            entry["inf"] += int(torch.isinf(actual).sum())
            if expected.shape != actual.shape:
                bad.append(f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}")
                continue
            diff = float((actual - expected).abs().nan_to_num(float("inf")).max())
            scale = max(1.0, float(expected.abs().max()))
            entry["files"] += 1
            entry["max_abs_diff"] = max(entry["max_abs_diff"] or 0.0, diff)
            entry["relative_diff"] = max(entry["relative_diff"] or 0.0, diff / scale)
        if entry["nan"] or entry["inf"]:
            bad.append(f"{name}: {entry['nan']} NaN, {entry['inf']} Inf")
        if args.tolerance is not None and entry["relative_diff"] is not None:
            entry["within_tolerance"] = entry["relative_diff"] <= args.tolerance
            if not entry["within_tolerance"]:
                bad.append(f"{name}: relative difference {entry['relative_diff']:.3g} > {args.tolerance}")
        result["compared"][name] = entry
    result["reference_nan"] = sum(int(torch.isnan(load(f)).sum()) for f in reference.values())
    if result["reference_nan"]:
        bad.append(f"the reference has {result['reference_nan']} NaN")
    result["problems"] = bad
    return write_check(result, args.json)
