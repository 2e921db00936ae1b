"""Random-weight Wan pipelines built from the configs in `configs/`, and the small tokenizer they use.

Flavors (one folder each under `configs/`, sources in its README):
- `wan-tiny`: Wan 2.1 style I2V (CLIP image embedding, 36 input channels), 3 heads, 2 layers; seconds on a CPU.
- `wan2.2-tiny`: Wan 2.2 A14B style: two experts (`transformer`, `transformer_2`), `boundary_ratio` 0.875, no CLIP.
- `wan2.2-ti2v-tiny`: Wan 2.2 TI2V-5B style: one transformer on 48 latent channels, the Wan 2.2 VAE (16x space,
  2x2 patches), `expand_timesteps` (the image's latents as the first frame, per-token timesteps), no CLIP.
- `wan-small`: Wan 2.1 style, 12 heads x 64, 8 layers: one transformer call at its default 17 x 192 x 320 (1,200
  tokens) keeps a CPU thread busy for about 3.5-4.5 s, so CPU measurements of the latency axes measure compute, not
  overhead.
- full-size architectures (configs only, for the meta device): `wan2.1-i2v-14b-480p-random`,
  `wan2.1-i2v-14b-720p-random`, `wan2.2-i2v-a14b-random`, `wan2.2-ti2v-5b-random`.

No file here touches the network: the tokenizer is built locally (a word-level stand-in for UMT5's), the configs
ship in the package. diffusers, transformers and tokenizers are imported where a model is built: resolving a flavor
already built (`build_tiny`) must not import them (a server's parent process never does).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

import torch

from vidpipe.errors import UsageError
from vidpipe.models.source import build_once

CONFIGS_DIR = Path(__file__).parent / "configs"

#: Small enough to build with (random) weights and save; every rank then loads identical weights.
BUILDABLE_FLAVORS = ("wan-tiny", "wan2.2-tiny", "wan2.2-ti2v-tiny", "wan-small")
#: Real architectures, configs only: built on the meta device (counts, memory) or, with weights, in each worker.
FULL_SIZE_FLAVORS = (
    "wan2.1-i2v-14b-480p-random",
    "wan2.1-i2v-14b-720p-random",
    "wan2.2-i2v-a14b-random",
    "wan2.2-ti2v-5b-random",
)

#: One seed per weighted component: the two Wan 2.2 experts must differ, and a component added to a flavor must
#: not change the weights of the others.
COMPONENT_SEEDS = {"transformer": 0, "transformer_2": 1, "vae": 2, "text_encoder": 3, "image_encoder": 4}

TEXT_LENGTH = 512  # UMT5 context the pipeline pads to; WanAttnProcessor counts image tokens from it
PAD, EOS, UNK = "<pad>", "</s>", "<unk>"  # ids 0, 1, 2 as in UMT5's vocabulary

# The tokenizer's vocabulary after the three special tokens: punctuation, digits and words of video prompts (and
# of Wan's usual negative prompt). Any other word maps to <unk>. Changing it changes the tiny models' hash.
_WORDS = """
, . ! ? ' " - : ; ( ) / 0 1 2 3 4 5 6 7 8 9
a an the and or but with without of in on at to from by for over under into onto through across along around
near behind above below between while as is are was were be being has have its it this that these those his
her their they he she we you i one two three four five many few some all each every no not very more most
cat cats dog dogs bird birds fish horse cow sheep lion tiger bear wolf fox rabbit deer elephant monkey panda
dragon butterfly person people man men woman women child children boy girl baby crowd family friend friends
astronaut robot car cars bus train bicycle boat ship airplane rocket truck motorcycle road street bridge city
town village house building tower castle room kitchen window door table chair bed sofa lamp cup book phone
camera guitar piano ball kite umbrella hat glasses sunglasses surfboard skateboard flower flowers tree trees
forest grass garden field mountain mountains hill hills valley river lake sea ocean wave waves beach sand
desert island sky cloud clouds sun moon star stars rain snow wind storm fog fire smoke water ice light shadow
night day morning evening sunset sunrise summer winter spring autumn
walks walking runs running jumps jumping flies flying swims swimming dances dancing sits sitting stands
standing plays playing eats eating drinks drinking looks looking turns turning smiles smiling laughs
laughing rides riding drives driving falls falling moves moving rolls rolling spins spinning waving
holds holding opens opening closes closing climbs climbing surfing cooking reading singing talking
slowly quickly gently softly smoothly suddenly together alone away forward backward up down left right
red orange yellow green blue purple pink brown black white gray grey golden silver colorful bright dark
warm cold soft hard big small tall short long wide tiny huge old young new happy sad calm fluffy furry wet
dry shiny clear blurred blurry sharp detailed realistic cinematic beautiful ugly
close closeup shot view motion pan zoom tracking aerial angle portrait landscape background
foreground scene style video film photo photograph painting animation cartoon anime 3d render
quality high low best worst jpeg compression artifacts noise overexposed underexposed static still frame
frames picture pictures subtitles works paintings images overall deformed disfigured misshapen extra
fingers hands faces limbs fused messy legs backwards poorly drawn incomplete
"""


def _vocabulary() -> dict[str, int]:
    """Token -> id: the special tokens first (UMT5's ids), then `_WORDS` in order, duplicates dropped."""
    tokens = dict.fromkeys([PAD, EOS, UNK, *_WORDS.split()])
    return {token: index for index, token in enumerate(tokens)}


def build_tokenizer(directory: Path) -> Path:
    """Write a small fast tokenizer to `directory` (tokenizer.json + tokenizer_config.json); return it.

    A word-level model over `_vocabulary()` (a few hundred entries, <pad>=0, </s>=1, <unk>=2), NFKC + lowercase,
    split on whitespace and punctuation, "</s>" appended to every sequence, as UMT5's tokenizer does. The files
    are written by this code, not by `save_pretrained`, so they are byte-identical on every call and every
    transformers version; `AutoTokenizer.from_pretrained(directory)` loads them as a fast tokenizer.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer(models.WordLevel(vocab=_vocabulary(), unk_token=UNK))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS}", pair=f"$A {EOS} $B {EOS}", special_tokens=[(EOS, 1)]
    )
    tokenizer.add_special_tokens([PAD, EOS, UNK])  # never split or lowercased, as in UMT5
    tokenizer.save(str(directory / "tokenizer.json"), pretty=True)
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": TEXT_LENGTH,
        "pad_token": PAD,
        "eos_token": EOS,
        "unk_token": UNK,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return directory


def local_tokenizer():
    """`build_tokenizer`'s tokenizer, loaded (for a config folder without one: the full-size flavors, whose UMT5
    tokenizer is on the hub)."""
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as scratch:  # NOTE: a fast tokenizer is read whole at load
        return AutoTokenizer.from_pretrained(build_tokenizer(Path(scratch)))


def flavor_dir(flavor: str) -> Path:
    """The config directory of a flavor; UsageError, listing the flavors, for an unknown name."""
    flavors = BUILDABLE_FLAVORS + FULL_SIZE_FLAVORS
    if flavor not in flavors:
        raise UsageError(f"unknown Wan flavor '{flavor}': use one of {', '.join(flavors)}")
    return CONFIGS_DIR / flavor


def read_model_index(config_dir: Path) -> dict:
    """model_index.json of a config (or model) directory, as a dict."""
    return json.loads((Path(config_dir) / "model_index.json").read_text())


def _declared(index: dict, component: str) -> bool:
    # Absent components are [null, null] in model_index.json (Wan 2.2 has no image encoder, Wan 2.1 no expert 2).
    entry = index.get(component)
    return isinstance(entry, list) and entry[0] is not None


def _wan_transformer(path: Path) -> torch.nn.Module:
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel.from_config(WanTransformer3DModel.load_config(path))


def _wan_vae(path: Path) -> torch.nn.Module:
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan.from_config(AutoencoderKLWan.load_config(path))


def _umt5_encoder(path: Path) -> torch.nn.Module:
    from transformers import UMT5Config, UMT5EncoderModel

    return UMT5EncoderModel(UMT5Config.from_pretrained(path))


def _clip_vision(path: Path) -> torch.nn.Module:
    from transformers import CLIPVisionConfig, CLIPVisionModel

    return CLIPVisionModel(CLIPVisionConfig.from_pretrained(path))


_BUILDERS = {
    "transformer": _wan_transformer,
    "transformer_2": _wan_transformer,
    "vae": _wan_vae,
    "text_encoder": _umt5_encoder,
    "image_encoder": _clip_vision,
}


def _random_module(config_dir: Path, component: str, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """One weighted component with random weights: seeded and built on the CPU, then moved; on `meta`, shapes only.

    NOTE: built on the CPU whatever `device` is, under its own seed (`COMPONENT_SEEDS`) and a forked RNG: every
    rank gets identical weights without any being written to disk, and the caller's RNG stream is untouched.
    """
    build = _BUILDERS[component]
    if device.type == "meta":
        with torch.device("meta"):
            return build(config_dir / component).eval()
    with torch.random.fork_rng(devices=[]), torch.device("cpu"):
        torch.manual_seed(COMPONENT_SEEDS[component])
        module = build(config_dir / component)
    # eval(): models built from a config start in training mode, and UMT5's dropout would perturb every prompt.
    return _place(module, device, dtype).eval()


def _place(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """Move to `device` and cast floating tensors to `dtype` as `from_pretrained(torch_dtype=...)` does: tensors
    under a name in the model's `_keep_in_fp32_modules` (Wan: rope, norms, time embedder, scale_shift_table;
    T5: `wo`) stay float32, cast once from the float32 original."""
    parameter = next(module.parameters())
    if parameter.device == device and parameter.dtype == dtype:
        return module  # a no-op `.to` still walks every tensor, and diffusers warns on every cast
    keep = set(getattr(module, "_keep_in_fp32_modules", None) or ())

    def placed(name: str, tensor: torch.Tensor) -> torch.Tensor:
        floating = tensor.is_floating_point() and not keep.intersection(name.split("."))
        return tensor.to(device, dtype if floating else tensor.dtype)

    for name, param in module.named_parameters():
        param.data = placed(name, param.data)
    for name, buffer in module.named_buffers():
        owner, _, attribute = name.rpartition(".")
        # As nn.Module._apply does; register_buffer would forget whether the buffer is persistent.
        module.get_submodule(owner)._buffers[attribute] = placed(name, buffer)
    return module


def random_components(
    config_dir: Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> dict[str, object]:
    """`WanImageToVideoPipeline(**components)` arguments from a config directory, with random weights.

    Weighted components are identical on every call (see `_random_module`); with `device="meta"` they have
    shapes only (parameter counts, memory estimates of the full-size flavors). The tokenizer is the config's own
    folder if it has one (the buildable flavors), else None (a run of a full-size flavor takes `local_tokenizer`);
    `boundary_ratio` and `expand_timesteps` come from model_index.json.
    """
    from diffusers import UniPCMultistepScheduler
    from transformers import AutoTokenizer, CLIPImageProcessor

    config_dir, device = Path(config_dir), torch.device(device)
    index = read_model_index(config_dir)
    components: dict[str, object] = {
        name: _random_module(config_dir, name, device, dtype) if _declared(index, name) else None
        for name in _BUILDERS
    }
    scheduler_dir = config_dir / "scheduler"
    components["scheduler"] = UniPCMultistepScheduler.from_config(UniPCMultistepScheduler.load_config(scheduler_dir))
    tokenizer_dir = config_dir / "tokenizer"
    components["tokenizer"] = AutoTokenizer.from_pretrained(tokenizer_dir) if tokenizer_dir.is_dir() else None
    components["image_processor"] = (
        CLIPImageProcessor.from_pretrained(config_dir / "image_processor")
        if _declared(index, "image_processor")
        else None
    )
    components["boundary_ratio"] = index.get("boundary_ratio")
    components["expand_timesteps"] = bool(index.get("expand_timesteps", False))
    return components


def parameter_counts(config_dir: Path) -> dict[str, int]:
    """Parameters of each weighted component (transformer(s), vae, text_encoder, image_encoder), counted on the
    meta device from the configs: no memory, no weights. Components a flavor lacks are left out."""
    components = random_components(config_dir, device="meta")
    return {
        name: sum(parameter.numel() for parameter in components[name].parameters())
        for name in _BUILDERS
        if components[name] is not None
    }


def build_random_pipeline_dir(flavor: str, target_dir: Path) -> Path:
    """Save a buildable flavor with seeded random weights as a complete diffusers directory (safetensors and the
    tokenizer) at `target_dir`, which `WanImageToVideoPipeline.from_pretrained(..., local_files_only=True)` loads.

    UsageError for a full-size flavor: tens of GB of random weights are built in each worker, never saved.
    """
    config_dir = flavor_dir(flavor)
    if flavor not in BUILDABLE_FLAVORS:
        raise UsageError(
            f"'{flavor}' is a full-size architecture: it is built on the meta device or in each worker, not "
            f"saved; buildable flavors: {', '.join(BUILDABLE_FLAVORS)}"
        )
    from diffusers import WanImageToVideoPipeline

    pipeline = WanImageToVideoPipeline(**random_components(config_dir))
    pipeline.save_pretrained(target_dir, safe_serialization=True)
    return Path(target_dir)


def config_digest(flavor: str) -> str:
    """Hash of a flavor's config files (names and bytes) and of the seeds: what its built weights depend on."""
    config_dir = flavor_dir(flavor)
    digest = hashlib.sha256(json.dumps(COMPONENT_SEEDS, sort_keys=True).encode())
    for path in sorted(p for p in config_dir.rglob("*") if p.is_file()):
        digest.update(path.relative_to(config_dir).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def build_tiny(flavor: str, cache_dir: Path | None = None) -> Path:
    """Build a buildable flavor once into the vidpipe cache and return its directory; reused after. The directory
    name carries `config_digest`, so editing a config (or a seed) builds a new model."""
    return build_once(f"{flavor}-{config_digest(flavor)[:12]}", cache_dir,
                      lambda directory: build_random_pipeline_dir(flavor, directory))
