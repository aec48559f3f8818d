"""The decoder loop: prefill with a pruning policy between (and inside) layers, then decode steps.

It runs on any module tree with ``transformers``' Llama names (``layers[i].self_attn.q_proj``,
``layers[i].mlp``, ``layers[i].input_layernorm``, ...): this package's
:class:`~v2drop_kernels.models.llama.LlamaModel` or ``transformers``' own ``LlamaModel`` (see
:mod:`v2drop_kernels.integrations.transformers`).

Per prefill layer ``i``::

    tokens = policy.before_layer(i, tokens)          # V²Drop and FastV drop here
    q, k, v = rope(qkv(input_layernorm(hidden)))
    sel = policy.inside_attention(i, tokens, q, k)  # PyramidDrop drops here, reusing this layer's K/V
    tokens, (q, k, v) = tokens.compact(sel, q, k, v)
    hidden = hidden + o_proj(attention(q, k, v)); hidden = hidden + mlp(post_attention_layernorm(hidden))

The cache of layer ``i`` keeps the ``k, v`` of the tokens that reached it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn

from .attention import padded_attention, varlen_attention
from .cache import KVCache
from .config import TextConfig
from .llama import Rotary, apply_rope
from .tokens import Tokens


@dataclass
class PrefillTrace:
    """What pruning did during one prefill (visual tokens per row that each layer's attention saw)."""

    visual_per_layer: list[list[int]] = field(default_factory=list)
    tokens_per_layer: list[int] = field(default_factory=list)  # sequence length (padded) / total tokens (packed)
    scores: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict)  # layer -> (scores, orig_pos) of a drop


class Decoder:
    """Runs ``model.layers`` with a policy; ``model`` has ``layers`` and ``norm`` (HF Llama names)."""

    def __init__(self, model: nn.Module, cfg: TextConfig, rotary: Rotary | None = None):
        self.model, self.cfg = model, cfg
        self.rotary = rotary if rotary is not None else Rotary(cfg)

    # -- per-token maths shared by prefill and decode -------------------------------------------
    def _qkv(self, attn: nn.Module, x: Tensor, position_ids: Tensor, packed: bool):
        """``q [B, H, S, Dh]``, ``k, v [B, Hkv, S, Dh]`` (packed: ``[T, H, Dh]``), RoPE applied."""
        hd = self.cfg.head_dim
        cos, sin = self.rotary(position_ids, x.dtype)
        cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)  # broadcast over heads
        q, k, v = (proj(x).unflatten(-1, (-1, hd)) for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if packed:
            return q, k, v
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)

    @staticmethod
    def _finish(layer: nn.Module, residual: Tensor, attn_out: Tensor) -> Tensor:
        hidden = residual + layer.self_attn.o_proj(attn_out)
        return hidden + layer.mlp(layer.post_attention_layernorm(hidden))

    # -- prefill ------------------------------------------------------------------------------------
    def prefill(self, tokens: Tokens, policy, cache: KVCache | None = None, trace: PrefillTrace | None = None) -> Tokens:
        """Runs every layer on ``tokens`` (pruning as ``policy`` says); returns the final, normed tokens."""
        layers = self.model.layers
        policy.check(len(layers))
        for i, layer in enumerate(layers):
            tokens = policy.before_layer(i, tokens)
            x = layer.input_layernorm(tokens.hidden)
            q, k, v = self._qkv(layer.self_attn, x, tokens.position_ids, tokens.packed)
            sel = policy.inside_attention(i, tokens, q, k)
            if sel is not None:
                tokens, (q, k, v) = tokens.compact(sel, q, k, v)
            if trace is not None:  # what this layer's attention and KV cache see
                trace.visual_per_layer.append(list(tokens.num_visual))
                trace.tokens_per_layer.append(tokens.hidden.shape[-2])
            # V²Drop before layer i + 1 scores against this layer's input; otherwise let it go.
            tokens.prev = tokens.hidden if policy.keeps_prev(i) else None
            if tokens.packed:
                out = varlen_attention(q, k, v, tokens.cu_seqlens, tokens.max_len).flatten(-2)
            else:
                out = padded_attention(q, k, v, tokens.valid, causal=True).transpose(1, 2).flatten(-2)
            if cache is not None:
                cache.store(i, k, v, tokens)
            tokens.hidden = self._finish(layer, tokens.hidden, out)
        tokens.hidden = self.model.norm(tokens.hidden)
        tokens.prev = None
        return tokens

    # -- decode -------------------------------------------------------------------------------------
    def decode(self, hidden: Tensor, position_ids: Tensor, cache: KVCache) -> Tensor:
        """One step for ``hidden [B, 1, D]`` at ``position_ids [B, 1]``; returns the normed output."""
        for i, layer in enumerate(self.model.layers):
            x = layer.input_layernorm(hidden)
            q, k, v = self._qkv(layer.self_attn, x, position_ids, packed=False)
            keys, values, valid = cache.append(i, k, v)
            out = padded_attention(q, keys, values, valid, causal=False).transpose(1, 2).flatten(-2)
            hidden = self._finish(layer, hidden, out)
        return self.model.norm(hidden)
