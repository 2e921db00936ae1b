"""Wan's model-level axes on gloo ranks: the sequence-split transformer (Ulysses, uneven tokens and heads) against
the whole one."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from vidpipe.parallel.plan import parse_plan
from vidpipe.runtime.launch import LaunchSpec, launch


@dataclass(frozen=True)
class WanSplitJob:
    """One forward of the tiny Wan 2.1 transformer (3 heads, image embedding), whole on every rank and split by
    `plan_text`, compared on rank 0."""

    plan_text: str

    def run(self, ctx, events):
        from diffusers import WanTransformer3DModel

        from vidpipe.jobs.diffusion import build_layout
        from vidpipe.models.wan import parallelize as wan_parallelize
        from vidpipe.models.wan.tiny import flavor_dir

        torch.set_num_threads(1)
        config = WanTransformer3DModel.load_config(flavor_dir("wan-tiny") / "transformer")
        with torch.random.fork_rng():
            torch.manual_seed(0)
            transformer = WanTransformer3DModel.from_config(config).eval()
            generator = torch.Generator().manual_seed(1)
            latents = torch.randn(1, 36, 3, 4, 6, generator=generator)  # 3 x 2 x 3 = 18 tokens
            text = torch.randn(1, 512, config["text_dim"], generator=generator)
            image = torch.randn(1, 5, config["image_dim"], generator=generator)
        layout = build_layout(ctx, parse_plan(self.plan_text).resolve(ctx.world_size))
        call = {"hidden_states": latents, "timestep": torch.tensor([700]), "encoder_hidden_states": text,
                "encoder_hidden_states_image": image, "return_dict": False}
        with torch.no_grad():
            whole = transformer(**call)[0] if ctx.rank == 0 else None  # only rank 0 compares

            class Holder:  # the adapter surface `parallelize` needs
                dtype = torch.float32
                guide = None

                def denoisers(self):
                    return [transformer]

            wan_parallelize.parallelize(Holder(), layout)
            split = transformer(**call)[0]
        if ctx.rank != 0:
            return None
        return {"diff": (split - whole).abs().max().item(), "scale": whole.abs().max().item()}


@pytest.mark.parametrize(("plan_text", "ranks"), [("sp2", 2), ("sp3", 3), ("sp4", 4)])
def test_sequence_split_transformer_equals_the_whole_one(plan_text, ranks):
    """3 heads: 2 + 1 on sp2, one each on sp3, and on sp4 one rank holds no head and only relays its tokens;
    18 tokens split 9/9, 6/6/6, 5/5/4/4. Nothing but float rounding changes."""
    result = launch(WanSplitJob(plan_text), LaunchSpec(ranks, "cpu", "gloo", 120.0), lambda e: None)
    assert result["diff"] <= 1e-5 * max(1.0, result["scale"]), result
