"""Which parts of Wan each model-level axis touches (the family's `parallelize.py`, as torchtitan's models have).

- `cfg`: the pipeline makes two transformer calls per step (conditional, unconditional); on a pair of ranks each
  makes one and one all-gather brings both predictions to both ranks (`SplitGuidance`).
- `sp`: Ulysses sequence parallelism over the DiT's tokens. Attention is global over all tokens, so the sequence
  is split, not the frames: after the patch embedding each rank keeps its share of the tokens (and of the rotary
  embedding, computed on the whole grid, so positions stay global); in every self-attention an all-to-all turns
  token-split q/k/v into head-split ones, attention runs unchanged on all tokens of this rank's heads, and a second
  all-to-all turns the output back; `proj_out`'s output is all-gathered. Cross-attention (local queries, the full
  text and image context), the norms, the feed-forward and the modulation are per token and run on local tokens
  unchanged; TI2V's per-token timesteps are cut to the local tokens before the time embedding. Tokens and heads
  split unevenly (3 heads on sp2: 2 and 1; a rank may get none).
- `fsdp`: FSDP2 per transformer block, for each expert.

Why our own Ulysses and not diffusers' `enable_parallelism`: a check of it (diffusers 0.42, gloo, CPU) found that it
divides by the accelerator count on a CPU-only host, takes a mesh only with dims named `ring` and `ulysses`, fails
on uneven token counts at its final gather and needs padding for uneven heads; see docs/wan.md.
"""

from __future__ import annotations

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.transformers.transformer_wan import _get_qkv_projections

from vidpipe.parallel.comm import Group, all_to_all, gather_along
from vidpipe.parallel.plan import frame_split


class SplitGuidance:
    """`cfg` for Wan: rank 0 of the pair makes the conditional call, rank 1 the unconditional one, and one
    all-gather of the prediction gives both ranks both, then the same guidance formula as the pipeline."""

    def __init__(self, group: Group):
        if group.size != 2:
            raise ValueError(f"cfg splits the two guidance calls, not {group.size}")
        self.group = group

    def __call__(self, denoiser, latent_input, timestep, cond, uncond, image_embeds, scale: float | None):
        if scale is None:  # guidance off: one call, the same on both ranks
            return denoiser(hidden_states=latent_input, timestep=timestep, encoder_hidden_states=cond,
                            encoder_hidden_states_image=image_embeds, return_dict=False)[0]
        context = cond if self.group.rank == 0 else uncond
        mine = denoiser(hidden_states=latent_input, timestep=timestep, encoder_hidden_states=context,
                        encoder_hidden_states_image=image_embeds, return_dict=False)[0]
        both = gather_along(mine, 0, [mine.shape[0]] * 2, self.group)
        noise_pred, noise_uncond = both.chunk(2)
        return noise_uncond + scale * (noise_pred - noise_uncond)


class TokenSplit:
    """The split of the current call's tokens over the sp group (set when the rotary embedding is computed)."""

    def __init__(self, group: Group):
        self.group = group
        self.sizes: list[int] = []
        self.start = 0

    def set_tokens(self, tokens: int) -> None:
        if sum(self.sizes) != tokens:
            if tokens < self.group.size:
                raise ValueError(f"sp{self.group.size} splits the tokens, but this video has only {tokens}")
            self.sizes = frame_split(tokens, self.group.size)
            self.start = sum(self.sizes[: self.group.rank])

    @property
    def mine(self) -> slice:
        return slice(self.start, self.start + self.sizes[self.group.rank])


class LocalRotaryEmbedding(torch.nn.Module):
    """The rotary embedding of the whole token grid, cut to this rank's tokens (global positions)."""

    def __init__(self, rope: torch.nn.Module, split: TokenSplit):
        super().__init__()
        self.rope = rope
        self.split = split

    def forward(self, hidden_states: torch.Tensor):
        freqs_cos, freqs_sin = self.rope(hidden_states)  # [1, tokens, 1, head_dim]
        self.split.set_tokens(freqs_cos.shape[1])
        return freqs_cos[:, self.split.mine], freqs_sin[:, self.split.mine]


def _apply_rotary_emb(hidden_states: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor,
                      out: torch.Tensor) -> None:
    # As WanAttnProcessor's own (a closure there, so it cannot be imported), written into `out` (of
    # `hidden_states`' shape and dtype): Ulysses' send buffer, so that q and k are not copied into it again.
    x1, x2 = hidden_states.unflatten(-1, (-1, 2)).unbind(-1)
    cos = freqs_cos[..., 0::2]
    sin = freqs_sin[..., 1::2]
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos


class UlyssesSelfAttention:
    """`attn1`'s processor under sp: WanAttnProcessor's self-attention on local tokens, with Ulysses' two
    all-to-alls around the attention kernel (q, k and v travel together: one all-to-all, not three)."""

    holds_collectives = True  # `--compile` leaves the block that holds it eager

    def __init__(self, split: TokenSplit):
        self.split = split

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        query, key, value = _get_qkv_projections(attn, hidden_states, None)
        query, key = attn.norm_q(query), attn.norm_k(key)
        query, key, value = (x.unflatten(2, (attn.heads, -1)) for x in (query, key, value))
        qkv = query.new_empty((3, *query.shape))  # [3, B, local tokens, H, d]
        if rotary_emb is not None:
            _apply_rotary_emb(query, *rotary_emb, out=qkv[0])
            _apply_rotary_emb(key, *rotary_emb, out=qkv[1])
        else:
            qkv[0], qkv[1] = query, key
        qkv[2] = value

        # 1. Tokens -> heads: send rank j this rank's tokens of j's heads; get all tokens of this rank's heads.
        group, tokens = self.split.group, self.split.sizes
        heads = frame_split(attn.heads, group.size)
        head_starts = [sum(heads[:j]) for j in range(group.size)]
        batch, head_dim = qkv.shape[1], qkv.shape[-1]
        mine = heads[group.rank]
        parts = all_to_all([qkv[:, :, :, s : s + n] for s, n in zip(head_starts, heads, strict=True)],
                           [3 * batch * t * mine * head_dim for t in tokens], group)
        qkv = torch.cat([p.view(3, batch, t, mine, head_dim) for p, t in zip(parts, tokens, strict=True)], 2)

        # 2. Attention over every token, for this rank's heads, as the unsplit processor computes it.
        if mine > 0:
            out = dispatch_attention_fn(qkv[0], qkv[1], qkv[2], attn_mask=attention_mask, dropout_p=0.0,
                                        is_causal=False)
        else:  # more ranks than heads: this rank only relays tokens
            out = qkv[0]

        # 3. Heads -> tokens: send rank i its tokens of this rank's heads; get this rank's tokens of every head.
        token_starts = [sum(tokens[:i]) for i in range(group.size)]
        local = tokens[group.rank]
        parts = all_to_all([out[:, s : s + n] for s, n in zip(token_starts, tokens, strict=True)],
                           [batch * local * h * head_dim for h in heads], group)
        out = torch.cat([p.view(batch, local, h, head_dim) for p, h in zip(parts, heads, strict=True)], 2)
        out = out.flatten(2, 3).type_as(qkv)
        return attn.to_out[1](attn.to_out[0](out))


def apply_sp(transformer: torch.nn.Module, group: Group) -> None:
    """Split `transformer`'s tokens over `group` (in place): local rotary embedding, local tokens from the first
    block on, Ulysses in every self-attention, the output gathered after `proj_out`."""
    split = TokenSplit(group)
    transformer.rope = LocalRotaryEmbedding(transformer.rope, split)

    def keep_local_tokens(_module, args):
        hidden_states, *rest = args
        return (hidden_states[:, split.mine], *rest)

    def keep_local_timesteps(_module, args, kwargs):
        # TI2V's per-token timesteps (flattened [batch x tokens]): this rank's tokens', so that the blocks'
        # modulation and the output norm see the same tokens as the hidden states.
        tokens = kwargs.get("timestep_seq_len")
        if tokens is None:
            return None
        timestep = args[0].unflatten(0, (-1, tokens))[:, split.mine].flatten()
        return (timestep, *args[1:]), {**kwargs, "timestep_seq_len": split.sizes[group.rank]}

    def gather_tokens(_module, _args, output):
        return gather_along(output, 1, split.sizes, group)

    if hasattr(transformer, "condition_embedder"):  # the simulator's stand-in has none (one timestep per call)
        transformer.condition_embedder.register_forward_pre_hook(keep_local_timesteps, with_kwargs=True)
    transformer.blocks[0].register_forward_pre_hook(keep_local_tokens)
    transformer.proj_out.register_forward_hook(gather_tokens)
    for block in transformer.blocks:
        block.attn1.set_processor(UlyssesSelfAttention(split))


def parallelize(model, layout) -> None:
    """Apply the plan's model-level axes to this rank's Wan model: sp to every loaded expert, then fsdp (which
    shards the patched blocks), then cfg around the guidance calls."""
    from vidpipe.parallel.fsdp import apply_fsdp

    plan = layout.plan
    if plan.sp > 1:
        group = Group.of(layout.submesh("sp"), layout.comm)
        for expert in model.denoisers():
            apply_sp(expert, group)
    group_mesh = layout.group_mesh()
    if plan.fsdp and group_mesh is not None:
        for expert in model.denoisers():
            apply_fsdp(expert, group_mesh, model.dtype)
    if plan.cfg > 1:
        model.guide = SplitGuidance(Group.of(layout.submesh("cfg"), layout.comm))
