"""Wan's sampling parameters and sizes, from the configs alone (what a parent process needs to check a job, without
importing diffusers): what a model generates by default and which frame counts and pixel sizes it can take.

The causal VAE compresses time 4x after the first frame and space 8x; the transformer patchifies 2x2 in space. So
frames are 4k + 1 and heights and widths multiples of 16 (Wan 2.2 TI2V-5B: 16x VAE, so 32). Read from the
configs, never assumed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from vidpipe.errors import UsageError

#: What the pipeline pads every prompt to (`max_sequence_length`); the transformer's attention takes the image
#: tokens as everything before the last 512 context tokens, so it must be exactly this.
TEXT_TOKENS = 512

@dataclass(frozen=True)
class WanParams:
    """Everything the sampler needs (validated by the caller). None sizes mean the model's defaults."""

    steps: int
    frames: int | None = None
    height: int | None = None
    width: int | None = None
    prompt: str = ""
    negative_prompt: str = ""
    guidance_scale: float = 5.0
    guidance_scale_2: float | None = None  # the low-noise expert's (two-expert models); None: guidance_scale
    fps: int = 16  # the video file's frame rate (Wan was trained at 16 fps; it does not condition the model)
    decode_chunk_size: int = 1  # unused: the causal VAE decodes a video whole (see `decode_units`)
    text_encoder_device: str = "gpu"  # "cpu": UMT5 runs on the CPU (11 GB for the 14B models)
    vae_device: str = "gpu"

    @property
    def guidance(self) -> tuple[float, float]:
        return self.guidance_scale, self.guidance_scale if self.guidance_scale_2 is None else self.guidance_scale_2


#: The pipeline's own defaults (`WanImageToVideoPipeline.__call__`): 81 frames of 480 x 832.
PIPELINE_SIZE = (81, 480, 832)

#: (frames, height, width) by model name, where it differs from the pipeline's: the flavors built here, and the
#: real models' training sizes.
DEFAULT_SIZES = {
    "wan-tiny": (9, 32, 48),
    "wan2.2-tiny": (9, 32, 48),
    "wan2.2-ti2v-tiny": (9, 32, 64),
    # 1,200 tokens against a 769-token context (512 text + 257 image): at 300 tokens (96 x 160) the context's
    # keys and values, which every sp rank computes whole, were as much work as the video's own tokens.
    "wan-small": (17, 192, 320),
    "wan2.1-i2v-14b-480p-random": (81, 480, 832),
    "wan2.1-i2v-14b-720p-random": (81, 720, 1280),
    "wan2.2-i2v-a14b-random": (81, 720, 1280),
    "wan2.2-ti2v-5b-random": (121, 704, 1280),
    "wan2.1-i2v-480p": (81, 480, 832),
    "wan2.1-i2v-720p": (81, 720, 1280),
    "wan2.2-i2v-a14b": (81, 720, 1280),
    "wan2.2-ti2v-5b": (121, 704, 1280),
}


def _config(path: Path, component: str) -> dict:
    return json.loads((path / component / "config.json").read_text())


def denoiser_config(path: Path) -> dict:
    """The transformer's config (either expert's: they share the architecture)."""
    return _config(path, "transformer" if (path / "transformer").is_dir() else "transformer_2")


def size_factors(path: Path) -> tuple[int, int]:
    """(temporal factor, pixel multiple) of the Wan model whose configs are at `path`."""
    vae = _config(path, "vae")
    temporal = 2 ** sum(bool(x) for x in vae.get("temperal_downsample", [False, True, True]))
    spatial = vae.get("scale_factor_spatial") or 2 ** len(vae.get("temperal_downsample", [False, True, True]))
    patch = denoiser_config(path).get("patch_size", [1, 2, 2])
    return temporal, spatial * patch[1]


def default_size(source) -> tuple[int, int, int]:
    return DEFAULT_SIZES.get(source.name, PIPELINE_SIZE)


def check_size(source, frames: int | None, height: int | None, width: int | None) -> None:
    """UsageError, with the nearest valid values, unless the sizes fit the model (None = the default)."""
    temporal, multiple = size_factors(source.path)
    if frames is not None and (frames < 1 or (frames - 1) % temporal):
        below = max(1, (frames - 1) // temporal * temporal + 1)
        above = below + temporal if frames > 1 else 1 + temporal
        suggestion = f"{below} or {above}" if below != frames and below >= 1 and frames > 1 else f"{above}"
        raise UsageError(f"--frames {frames}: Wan takes {temporal}k + 1 frames (its VAE compresses time {temporal}x "
                         f"after the first frame); try {suggestion}")
    for flag, value in (("--height", height), ("--width", width)):
        if value is None or (value > 0 and value % multiple == 0):
            continue
        below, above = value // multiple * multiple, (value // multiple + 1) * multiple
        suggestion = f"{below} or {above}" if below > 0 else f"{above}"
        raise UsageError(f"{flag} {value}: must be a positive multiple of {multiple} (VAE factor x the "
                         f"transformer's 2x2 patches); try {suggestion}")


def resolve_size(source, frames: int | None, height: int | None, width: int | None) -> tuple[int, int, int]:
    """(frames, height, width) to generate: the given sizes, checked, else the model's defaults."""
    check_size(source, frames, height, width)
    default_frames, default_height, default_width = default_size(source)
    return frames or default_frames, height or default_height, width or default_width


def image_token_count(path: Path) -> int | None:
    """Tokens of Wan 2.1's CLIP image embedding (patches + the class token), or None for a model without one."""
    config = path / "image_encoder" / "config.json"
    if not config.is_file():
        return None
    vision = json.loads(config.read_text())
    vision = vision.get("vision_config", vision)
    return (vision["image_size"] // vision["patch_size"]) ** 2 + 1


def kept_context_bytes(config: dict, image_tokens: int | None, dtype_bytes: int) -> int:
    """What one transformer keeps per context during a block of steps (`context_cache.py`): every block's keys and
    values of the context tokens (512 text, and `image_tokens` of CLIP on Wan 2.1) and the embedders' outputs."""
    width = config["num_attention_heads"] * config["attention_head_dim"]
    return (2 * config["num_layers"] + 1) * (TEXT_TOKENS + (image_tokens or 0)) * width * dtype_bytes
