"""Wan's components from a local diffusers directory (weights) or a config directory (random weights)."""

from __future__ import annotations

import json

import torch

#: Components a rank needs only to encode samples.
ENCODERS = ("text_encoder", "tokenizer", "image_encoder", "image_processor")


def load_components(source, dtype: torch.dtype, encoders: bool, experts: tuple[str, ...]) -> dict[str, object]:
    """`WanImageToVideoPipeline(**components)` arguments; the experts and encoders a rank does not need are None.

    Transformers and encoders in `dtype`, the VAE in fp32 (it encodes the first frame and decodes in fp32), with
    the modules diffusers keeps in fp32 kept so. Nothing is downloaded: the parent resolved the model first.
    """
    if source.kind == "random":
        from vidpipe.models.wan.tiny import local_tokenizer, random_components

        components = random_components(source.path, "cpu", dtype)
        if encoders and components["tokenizer"] is None:  # a full-size flavor ships configs only
            components["tokenizer"] = local_tokenizer()
        if components.get("vae") is not None:
            components["vae"] = components["vae"].float()
    else:
        components = _from_directory(source.path, dtype, encoders, experts)
    for name in ("transformer", "transformer_2"):
        if name not in experts:
            components[name] = None
    if not encoders:
        for name in ENCODERS:
            components[name] = None
    return components


def _from_directory(path, dtype: torch.dtype, encoders: bool, experts: tuple[str, ...]) -> dict[str, object]:
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPVisionModel, UMT5EncoderModel

    index = json.loads((path / "model_index.json").read_text())

    def declared(name: str) -> bool:
        entry = index.get(name)
        return isinstance(entry, list) and entry[0] is not None and (path / name).is_dir()

    common = {"local_files_only": True}
    components: dict[str, object] = {
        "vae": AutoencoderKLWan.from_pretrained(path, subfolder="vae", torch_dtype=torch.float32, **common),
        "scheduler": UniPCMultistepScheduler.from_pretrained(path, subfolder="scheduler", **common),
        "boundary_ratio": index.get("boundary_ratio"),
        "expand_timesteps": bool(index.get("expand_timesteps", False)),
    }
    for name in ("transformer", "transformer_2"):
        components[name] = (WanTransformer3DModel.from_pretrained(path, subfolder=name, torch_dtype=dtype, **common)
                            if name in experts and declared(name) else None)
    wanted = encoders
    components["tokenizer"] = AutoTokenizer.from_pretrained(path / "tokenizer") if wanted else None
    components["text_encoder"] = (UMT5EncoderModel.from_pretrained(path, subfolder="text_encoder", dtype=dtype,
                                                                   **common) if wanted else None)
    clip = wanted and declared("image_encoder")
    components["image_encoder"] = (CLIPVisionModel.from_pretrained(path, subfolder="image_encoder", dtype=dtype,
                                                                   **common) if clip else None)
    components["image_processor"] = (CLIPImageProcessor.from_pretrained(path, subfolder="image_processor", **common)
                                     if clip and declared("image_processor") else None)
    return components
