"""Apply a plan's model-level axes (cfg, sp, fsdp) to one rank's model: each family says in its own
`models/<family>/parallelize.py` which of its layers each axis touches (SVD: halo convs, split GroupNorm,
pixel-split temporal attention; Wan: sequence-split attention); this module only picks the family."""

from __future__ import annotations

from vidpipe.parallel.layout import Layout


def parallelize(model, layout: Layout) -> None:
    """Give `model` this rank's part of the plan (nothing to do for pp/dp alone)."""
    from vidpipe.models.registry import family_module

    family_module(getattr(model, "family", "svd"), "parallelize").parallelize(model, layout)
