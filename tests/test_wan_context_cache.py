"""The context cache of a Wan transformer: within a block of steps the context's projections are computed once per
context and the outputs are exactly those of the transformer without it."""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers import WanTransformer3DModel

from vidpipe.models.wan import context_cache
from vidpipe.models.wan.tiny import flavor_dir


def _transformer(flavor: str) -> WanTransformer3DModel:
    config = WanTransformer3DModel.load_config(flavor_dir(flavor) / "transformer")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return WanTransformer3DModel.from_config(config).eval()


def _calls(transformer: WanTransformer3DModel) -> list[dict]:
    """Four calls of two steps, each conditional then unconditional, as `denoise_block` makes them: the same
    context tensors every step, new latents and timesteps."""
    config = transformer.config
    generator = torch.Generator().manual_seed(1)
    cond, uncond = (torch.randn(1, 512, config.text_dim, generator=generator) for _ in range(2))
    image = None if config.image_dim is None else torch.randn(1, 5, config.image_dim, generator=generator)
    calls = []
    for t in (900, 700):
        latents = torch.randn(1, config.in_channels, 3, 4, 6, generator=generator)
        for context in (cond, uncond):
            calls.append({"hidden_states": latents, "timestep": torch.tensor([t]), "encoder_hidden_states": context,
                          "encoder_hidden_states_image": image, "return_dict": False})
    return calls


def _count_key_projections(transformer: WanTransformer3DModel) -> list[int]:
    counts = [0]

    def count(_module, _args, _output):
        counts[0] += 1

    transformer.blocks[0].attn2.to_k.register_forward_hook(count)
    return counts


@pytest.mark.parametrize("flavor", ["wan-tiny", "wan2.2-tiny"])  # with a CLIP image context, and without
def test_kept_context_projections_change_no_output_and_are_computed_once_per_context(flavor):
    plain = _transformer(flavor)
    kept = copy.deepcopy(plain)
    cache = context_cache.install(kept)
    computed = _count_key_projections(kept)
    calls = _calls(plain)
    with torch.no_grad():
        expected = [plain(**call)[0] for call in calls]
        with cache.kept():
            got = [kept(**call)[0] for call in calls]
            assert len(cache.entries) == 2
        assert computed[0] == 2  # once for the conditional context, once for the unconditional one, not 4 times
        assert cache.entries == [] and cache.current is None  # the block ended: the projections are freed
        for want, have in zip(expected, got, strict=True):
            assert torch.equal(want, have)

        # Outside a block nothing is kept: every call projects its context, as the stock processor does.
        assert torch.equal(kept(**calls[0])[0], expected[0]) and computed[0] == 3


def test_a_context_changed_in_place_is_projected_again():
    transformer = _transformer("wan-tiny")
    cache = context_cache.install(transformer)
    computed = _count_key_projections(transformer)
    call = _calls(transformer)[0]
    with torch.no_grad(), cache.kept():
        first = transformer(**call)[0]
        call["encoder_hidden_states"].mul_(2)  # the same tensor object, new values: a miss, not a stale hit
        second = transformer(**call)[0]
    assert computed[0] == 2 and not torch.equal(first, second)
