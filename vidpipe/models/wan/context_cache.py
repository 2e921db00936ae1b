"""What a Wan transformer call computes from its context alone, kept for the steps of one block.

Within a block of steps the text and image context of a sample do not change, yet every call of the transformer
projects them again: the text embedder (512 tokens), the image embedder (257 CLIP tokens on Wan 2.1) and, in every
block's cross-attention, the keys and values of all 769 context tokens. `ContextCache` computes these once per
context (the conditional and the unconditional one) and gives the same tensors back to the later steps.

It is exact: the kept tensors are the ones the recomputation would produce (the same operations on the same
inputs). What it saves matters most under `sp`: each rank of the group has only its share of the video's tokens
but the whole context, so the context's projections are work every rank repeats (about 8 % of a step of
wan-small on each rank of sp2; a larger share, the higher the degree). What it costs: per context and block, the
keys and values of the context tokens (Wan 2.1 14B: 40 blocks x 769 tokens x 5120 x 2 in bf16, 630 MB per
context), held for the block of steps only and freed when it ends (`sizes.kept_context_bytes`, which `auto`
and the server's admission count).

Which context a call uses is known by identity: the block passes the same prompt-embedding tensor to every step
(`denoise_block`), and the cache keeps a reference to it, so the identity cannot be reused by another tensor while
the entry lives; an entry also records the tensor's version, so an in-place change is a miss, not a stale hit.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.transformers.transformer_wan import _get_added_kv_projections

from vidpipe.models.wan.sizes import TEXT_TOKENS

#: Contexts a block alternates between: the conditional and the unconditional prompt.
SLOTS = 2


@dataclass
class _Entry:
    inputs: tuple[torch.Tensor | None, ...]  # the transformer's context inputs, held so their identity stays theirs
    versions: tuple[int | None, ...]
    embedded: dict[str, torch.Tensor] = field(default_factory=dict)  # "text", "image" -> the embedders' outputs
    keys_values: dict[int, tuple] = field(default_factory=dict)  # block index -> cross-attention K, V (+ image's)

    def holds(self, inputs: tuple) -> bool:
        return all(a is b for a, b in zip(self.inputs, inputs, strict=True)) and self.versions == _versions(inputs)


def _versions(inputs: tuple) -> tuple[int | None, ...]:
    # NOTE: autograd's in-place counter (an inference-mode tensor has none: it cannot change outside that mode).
    return tuple(None if t is None or t.is_inference() else t._version for t in inputs)  # noqa: SLF001


class ContextCache:
    """The context projections of one transformer, kept while `kept()` is open (one block of steps)."""

    def __init__(self):
        self.open = False
        self.entries: list[_Entry] = []
        self.current: _Entry | None = None

    @contextmanager
    def kept(self):
        """Keep projections for the duration of the `with` body; drop them (and their memory) at its end."""
        self.open = True
        try:
            yield self
        finally:
            self.open, self.entries, self.current = False, [], None

    def select(self, encoder_hidden_states: torch.Tensor, encoder_hidden_states_image: torch.Tensor | None):
        """Called before each transformer call: the entry of this call's context (a new one on a miss)."""
        if not self.open:
            self.current = None
            return
        inputs = (encoder_hidden_states, encoder_hidden_states_image)
        entry = next((e for e in self.entries if e.holds(inputs)), None)
        if entry is None:
            entry = _Entry(inputs, _versions(inputs))
            self.entries = [*self.entries[-(SLOTS - 1):], entry]
        self.current = entry


def _embedder_kept(cache: ContextCache, name: str, module: torch.nn.Module) -> None:
    """`module`'s forward, answered from the current entry when it has run for this context already."""
    compute = module.forward

    def forward(x):
        entry = cache.current
        if entry is None:
            return compute(x)
        if name not in entry.embedded:
            entry.embedded[name] = compute(x)
        return entry.embedded[name]

    module.forward = forward


class KeptCrossAttention:
    """`attn2`'s processor: WanAttnProcessor's cross-attention, with the context's keys and values (text, and image
    on Wan 2.1) computed once per context while the cache is open. Queries are per call (they are the video's)."""

    def __init__(self, cache: ContextCache, block: int):
        self.cache = cache
        self.block = block

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        entry = self.cache.current
        kept = None if entry is None else entry.keys_values.get(self.block)
        if kept is None:
            kept = _context_keys_values(attn, encoder_hidden_states)
            if entry is not None:
                entry.keys_values[self.block] = kept
        key, value, key_img, value_img = kept
        query = attn.norm_q(attn.to_q(hidden_states)).unflatten(2, (attn.heads, -1))

        hidden_states_img = None
        if key_img is not None:
            hidden_states_img = dispatch_attention_fn(query, key_img, value_img, attn_mask=None, dropout_p=0.0,
                                                      is_causal=False)
            hidden_states_img = hidden_states_img.flatten(2, 3).type_as(query)
        hidden_states = dispatch_attention_fn(query, key, value, attn_mask=attention_mask, dropout_p=0.0,
                                              is_causal=False)
        hidden_states = hidden_states.flatten(2, 3).type_as(query)
        if hidden_states_img is not None:
            hidden_states = hidden_states + hidden_states_img
        return attn.to_out[1](attn.to_out[0](hidden_states))


def _context_keys_values(attn, encoder_hidden_states: torch.Tensor) -> tuple:
    """WanAttnProcessor's keys and values of the context, as its `_get_qkv_projections` and
    `_get_added_kv_projections` compute them: the image tokens (everything before the last 512, when the attention
    has image projections) split off first."""
    key_img = value_img = None
    if attn.add_k_proj is not None:
        image_context_length = encoder_hidden_states.shape[1] - TEXT_TOKENS
        key_img, value_img = _get_added_kv_projections(attn, encoder_hidden_states[:, :image_context_length])
        key_img = attn.norm_added_k(key_img).unflatten(2, (attn.heads, -1))
        value_img = value_img.unflatten(2, (attn.heads, -1))
        encoder_hidden_states = encoder_hidden_states[:, image_context_length:]
    if attn.fused_projections:
        key, value = attn.to_kv(encoder_hidden_states).chunk(2, dim=-1)
    else:
        key, value = attn.to_k(encoder_hidden_states), attn.to_v(encoder_hidden_states)
    key = attn.norm_k(key).unflatten(2, (attn.heads, -1))
    return key, value.unflatten(2, (attn.heads, -1)), key_img, value_img


def install(transformer: torch.nn.Module) -> ContextCache | None:
    """Give `transformer` (a WanTransformer3DModel) a context cache; None for a module without Wan's context path
    (the simulator's stand-in)."""
    embedder = getattr(transformer, "condition_embedder", None)
    if embedder is None:
        return None
    cache = ContextCache()

    def select(_module, args, kwargs):
        cache.select(kwargs.get("encoder_hidden_states", args[2] if len(args) > 2 else None),
                     kwargs.get("encoder_hidden_states_image", args[3] if len(args) > 3 else None))

    transformer.register_forward_pre_hook(select, with_kwargs=True)
    _embedder_kept(cache, "text", embedder.text_embedder)
    if embedder.image_embedder is not None:
        _embedder_kept(cache, "image", embedder.image_embedder)
    for index, block in enumerate(transformer.blocks):
        block.attn2.set_processor(KeptCrossAttention(cache, index))
    transformer.context_cache = cache
    return cache


@contextmanager
def kept_for(denoisers):
    """Open the context cache of each of `denoisers` (those that have one) for the `with` body."""
    with ExitStack() as stack:
        for denoiser in denoisers:
            cache = getattr(denoiser, "context_cache", None)
            if cache is not None:
                stack.enter_context(cache.kept())
        yield
