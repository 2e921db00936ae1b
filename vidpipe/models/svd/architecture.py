"""Where SVD's UNet mixes frames, worked out from its config alone (no weights, no torch)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TemporalLayer:
    kind: str  # "resnet" (TemporalResnetBlock) | "attention" (TemporalBasicTransformerBlock)
    channels: int
    level: int  # 0 = latent resolution; each level halves height and width


def temporal_layers(unet_config: dict) -> list[TemporalLayer]:
    """The frame-mixing layers of an SVD UNet, in call order: one temporal res block per spatial res block, one
    temporal transformer block per transformer layer of each cross-attention block."""
    channels = unet_config["block_out_channels"]
    per_block = unet_config["layers_per_block"]
    transformer_layers = unet_config.get("transformer_layers_per_block", 1)

    def attention(level: int) -> list[TemporalLayer]:
        count = transformer_layers[level] if isinstance(transformer_layers, list) else transformer_layers
        return [TemporalLayer("attention", channels[level], level)] * count

    layers = []
    for level, block_type in enumerate(unet_config["down_block_types"]):
        for _ in range(per_block):
            layers.append(TemporalLayer("resnet", channels[level], level))
            if block_type.startswith("CrossAttn"):
                layers += attention(level)
    deepest = len(channels) - 1
    layers += [TemporalLayer("resnet", channels[deepest], deepest), *attention(deepest),
               TemporalLayer("resnet", channels[deepest], deepest)]
    for up, block_type in enumerate(unet_config["up_block_types"]):
        level = deepest - up
        for _ in range(per_block + 1):
            layers.append(TemporalLayer("resnet", channels[level], level))
            if block_type.startswith("CrossAttn"):
                layers += attention(level)
    return layers
