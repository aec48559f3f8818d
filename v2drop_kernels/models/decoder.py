"""The decoder loop: prefill with a pruning policy between (and inside) layers, then decode steps.

It runs on any module tree with ``transformers``' Llama names (``layers[i].self_attn.q_proj``,
``layers[i].mlp``, ``layers[i].input_layernorm``, ...): this package's
:class:`~v2drop_kernels.models.llama.LlamaModel` or ``transformers``' own ``LlamaModel`` (see
:mod:`v2drop_kernels.integrations.transformers`).

Per prefill layer ``i`` (``need = policy.needs(i)``: what the policy asked to be handed, which a
:class:`~v2drop_kernels.models.policies.base.Handover` keeps and hands over)::

    drop = policy.before_layer(i, tokens, ctx, prev=input of layer need.input_of,     # V²Drop and
                               scores=last-token attention at layer need.attention_of) # FastV drop here
    tokens = apply_drop(tokens, drop)
    q, k, v = pre_attention(hidden, weights[i], rope)   # norm, fused q/k/v projection, RoPE
    drop = policy.inside_attention(i, tokens, q, k, ctx) # PyramidDrop drops here, reusing this layer's K/V
    tokens, (q, k, v) = apply_drop(tokens, drop, q, k, v)
    hidden = post_attention(hidden, attention(q, k, v), weights[i])   # o_proj, residual, norm, SwiGLU

A linear-attention layer of a hybrid decoder (Qwen3.5's Gated DeltaNet,
:mod:`~v2drop_kernels.models.linear_attention`) runs its recurrence over the tokens that reach it
instead (no ``inside_attention``: it has no attention scores), each row on its own: packed rows are
laid out left-padded for it. Its cache entry is the row's fixed-size state (``store_state``).

The cache of layer ``i`` keeps the ``k, v`` of the tokens that reached it. Nothing in prefill or
decode reads the device back: every shape follows from host counts (``Tokens``). The dense maths
(:func:`~v2drop_kernels.models.llama.pre_attention`, :func:`~v2drop_kernels.models.llama.post_attention`)
can run compiled (:meth:`Decoder.compile`): one graph for every layer, since the weights are inputs,
with a dynamic sequence length in prefill (pruned lengths do not recompile) and static shapes in
decode. Attention and the pruning ops run between the compiled pieces.

Decode has two entry points: :meth:`Decoder.decode_step`, the static step of
:meth:`Llava.generate <v2drop_kernels.models.llava.Llava.generate>` (fixed shapes and addresses over a
:class:`~v2drop_kernels.models.cache.KVCache`, capturable in a CUDA graph), and :meth:`Decoder.decode`,
one step over any cache that grows (``append``), which the transformers integration uses with
transformers' own cache.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn

from . import linear_attention
from .attention import padded_attention, sdpa, varlen_attention
from .config import TextConfig
from .dropping import apply_drop
from .llama import LayerWeights, Rotary, fuse_projections, layer_weights, post_attention, pre_attention, pre_linear
from .policies.base import Handover
from .pruning import PruningContext
from .tokens import Tokens, packed_coordinates, unpack_left_padded


# Dynamo compiles a function once per specialisation, and its cache belongs to the function's code,
# shared by every decoder in the process: each model shape, bias layout and decode batch size is one
# more entry. Its default limit (8) would end a process that serves a few models or batch sizes
# (with fullgraph=True, as a hard error). A compiled decoder raises it to this, only while it runs
# (the process's setting is left as it is).
RECOMPILE_LIMIT = 64


def _compile_scope(compiled: bool):
    """Dynamo's recompile limit raised to :data:`RECOMPILE_LIMIT` for the calls inside (nothing when
    the decoder is not compiled)."""
    if not compiled:
        return contextlib.nullcontext()
    import torch._dynamo.config as dynamo_config

    name = "recompile_limit" if hasattr(dynamo_config, "recompile_limit") else "cache_size_limit"
    return dynamo_config.patch(**{name: max(getattr(dynamo_config, name), RECOMPILE_LIMIT)})


class Decoder:
    """Runs ``model.layers`` with a policy; ``model`` has ``layers`` and ``norm`` (HF Llama names).

    The layers' projections are read as they are: joined where :meth:`fuse_projections` joined them
    (the package's models do at load time), one linear per module otherwise (transformers' own
    modules in the integration, which stay as they are).
    """

    def __init__(self, model: nn.Module, cfg: TextConfig, rotary: Rotary | None = None):
        self.model, self.cfg = model, cfg
        self.rotary = rotary if rotary is not None else Rotary(cfg)
        self.compile(False)

    def compile(self, enabled: bool = True) -> "Decoder":
        """Runs the dense per-layer maths through ``torch.compile`` (``fullgraph``): dynamic sequence
        length for prefill, static shapes for the decode step. The first calls compile; the policy's
        ops, attention and the linear-attention recurrence stay outside the compiled functions."""
        self.compiled = enabled
        dense = (pre_attention, pre_linear, post_attention)
        if enabled:
            self._pre, self._pre_linear, self._post = (torch.compile(f, dynamic=True, fullgraph=True) for f in dense)
            self._pre_step, self._pre_linear_step, self._post_step = (torch.compile(f, dynamic=False, fullgraph=True)
                                                                      for f in dense)
        else:
            self._pre, self._pre_linear, self._post = self._pre_step, self._pre_linear_step, self._post_step = dense
        return self

    def fuse_projections(self) -> "Decoder":
        """Joins every layer's q/k/v and gate/up projections into one linear each, in place (the
        modules' weights become views of the joined ones: :func:`~v2drop_kernels.models.llama.fuse_projections`)."""
        for layer in self.model.layers:
            fuse_projections(layer)
        return self

    def weights(self) -> list[LayerWeights]:
        """Every layer's weights, as they are (nothing is fused or changed here)."""
        return [layer_weights(layer, self.cfg) for layer in self.model.layers]

    def weights_key(self) -> tuple[int, ...]:
        """The address of each layer's first input projection (q/k/v, or a linear-attention layer's):
        a captured decode graph read the weights at these addresses."""
        return tuple((w.qkv or w.mixer.proj)[0][0].data_ptr() for w in self.weights())

    def _qkv(self, pre, x: Tensor, w: LayerWeights, cos: Tensor, sin: Tensor, packed: bool):
        """``q [B, H, S, Dh]``, ``k, v [B, Hkv, S, Dh]`` (packed: ``[T, H, Dh]``), RoPE applied, and
        the output gate (None without)."""
        q, k, v, gate = pre(x, w, cos, sin, self.cfg.num_heads, self.cfg.num_kv_heads, self.cfg.head_dim)
        if packed:
            return q, k, v, gate
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), gate

    def _linear_prefill(self, tokens: Tokens, w: LayerWeights) -> tuple[Tensor, Tensor, Tensor]:
        """A linear-attention layer on the prefill tokens: ``(y`` for its output projection, in the
        tokens' layout, the rows' convolution windows and recurrent states``)``."""
        mixed, z, beta, g = self._pre_linear(tokens.hidden, w)
        if not tokens.packed:
            return linear_attention.prefill(mixed, z, beta, g, tokens.valid, w.mixer, self.cfg.rms_norm_eps)
        # packed rows laid out left-padded, one row each, and the output gathered back
        rows, cols = at = packed_coordinates(tokens.lengths, mixed.device, width=tokens.max_len)
        valid = unpack_left_padded(tokens, torch.ones_like(beta[:, 0], dtype=torch.bool), at)
        inputs = (unpack_left_padded(tokens, x, at) for x in (mixed, z, beta, g))
        y, window, state = linear_attention.prefill(*inputs, valid, w.mixer, self.cfg.rms_norm_eps)
        return y[rows, cols], window, state

    # -- prefill ------------------------------------------------------------------------------------
    def prefill(self, tokens: Tokens, policy, cache=None, ctx: PruningContext | None = None) -> Tokens:
        """Runs every layer on ``tokens`` (pruning as ``policy`` says, recording into ``ctx``);
        returns the final, normed tokens."""
        with _compile_scope(self.compiled):
            return self._prefill(tokens, policy, cache, ctx if ctx is not None else PruningContext())

    def _prefill(self, tokens: Tokens, policy, cache, ctx: PruningContext) -> Tokens:
        weights = self.weights()
        policy.check(len(weights), self.cfg.attention_layers)
        handover = Handover(policy)
        device = tokens.hidden.device
        rope_of, cos, sin = None, None, None
        for i, w in enumerate(weights):
            with ctx.hook(device):
                drop = handover.before_layer(i, tokens, ctx)
                if drop is not None:
                    tokens = apply_drop(tokens, drop, backend=ctx.backend)[0]
            if w.mixer is not None:  # linear attention: its recurrence over the tokens that reach it
                ctx.record_layer(tokens.num_visual, tokens.hidden.shape[-2])
                if policy.keeps_input(i):
                    handover.keep_input(i, tokens.hidden)
                y, window, state = self._linear_prefill(tokens, w)
                if cache is not None:
                    cache.store_state(i, window, state, tokens)
                tokens.hidden = self._post(tokens.hidden, y, w)
            else:  # attention, with the drop inside it
                if rope_of is not tokens.position_ids:  # RoPE tables once per token set, not per layer
                    rope_of = tokens.position_ids
                    cos, sin = self.rotary(tokens.position_ids, tokens.hidden.dtype, planes=tokens.planes)
                q, k, v, gate = self._qkv(self._pre, tokens.hidden, w, cos, sin, tokens.packed)
                with ctx.hook(device):
                    drop = handover.inside_attention(i, tokens, q, k, ctx)
                    if drop is not None:
                        if gate is None:
                            tokens, (q, k, v) = apply_drop(tokens, drop, q, k, v, backend=ctx.backend)
                        else:  # the gate: one more per-token tensor to compact (a head axis of one, as the hidden states)
                            tokens, (q, k, v, gate) = apply_drop(tokens, drop, q, k, v, gate.unsqueeze(1),
                                                                 backend=ctx.backend)
                            gate = gate.squeeze(1)
                ctx.record_layer(tokens.num_visual, tokens.hidden.shape[-2])  # what this layer's attention and cache see
                if policy.keeps_input(i):  # e.g. V²Drop before layer i + 1 scores against this layer's input
                    handover.keep_input(i, tokens.hidden)
                if tokens.packed:
                    out = varlen_attention(q, k, v, tokens.cu_seqlens, tokens.bounds).flatten(-2)
                else:
                    out = padded_attention(q, k, v, tokens.valid, causal=True).transpose(1, 2).flatten(-2)
                if cache is not None:
                    cache.store(i, k, v, tokens)
                tokens.hidden = self._post(tokens.hidden, out, w, gate)
            if tokens.deepstack is not None and i < tokens.deepstack.shape[0]:
                tokens = _add_deepstack(tokens, i)
        tokens.hidden = self.model.norm(tokens.hidden)
        return tokens

    # -- decode -------------------------------------------------------------------------------------
    def decode_step(self, hidden: Tensor, position_ids: Tensor, step: Tensor, cache, planes: bool = False) -> Tensor:
        """One static decode step: ``hidden [B, 1, D]`` at ``position_ids [B, 1]`` (``planes``: M-RoPE
        ids ``[3, B, 1]``); ``step`` (an int64 device scalar) is the number of steps done before, so
        layer ``l`` writes column ``length_l + step`` of its
        :class:`~v2drop_kernels.models.cache.KVCache`. Shapes and addresses are the same at every
        step. Returns the normed output."""
        def attend(i: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            cache.write_step(i, k, v, step)
            return sdpa(q, cache.k[i], cache.v[i], attn_mask=cache.step_mask(i, step))

        return self._decode_layers(hidden, position_ids, planes, attend, cache)

    def decode(self, hidden: Tensor, position_ids: Tensor, cache, planes: bool = False) -> Tensor:
        """One step over a cache that grows: ``cache.append(layer, k, v)`` returns the layer's keys,
        values and validity (the transformers integration's adapter over transformers' cache).
        ``planes``: ``position_ids`` are M-RoPE planes ``[3, B, 1]``."""
        def attend(i: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            keys, values, valid = cache.append(i, k, v)
            return padded_attention(q, keys, values, valid, causal=False)

        return self._decode_layers(hidden, position_ids, planes, attend, cache)

    def _decode_layers(self, hidden: Tensor, position_ids: Tensor, planes: bool, attend, cache) -> Tensor:
        """The one decode loop: every layer on one new token per row; ``attend(layer, q, k, v)``
        stores the step's K/V in the cache and returns the attention output ``[B, H, 1, Dh]``; a
        linear-attention layer updates ``cache.linear_state(layer)`` in place."""
        cos, sin = self.rotary(position_ids, hidden.dtype, planes=planes)  # once per step, for every layer
        with _compile_scope(self.compiled):
            for i, w in enumerate(self.weights()):
                if w.mixer is not None:  # linear attention: one step of its recurrence, on its state in place
                    mixed, z, beta, g = self._pre_linear_step(hidden, w)
                    y = linear_attention.decode_step(mixed, z, beta, g, *cache.linear_state(i), w.mixer,
                                                     self.cfg.rms_norm_eps)
                    hidden = self._post_step(hidden, y, w)
                    continue
                q, k, v, gate = self._qkv(self._pre_step, hidden, w, cos, sin, packed=False)
                out = attend(i, q, k, v).transpose(1, 2).flatten(-2)
                hidden = self._post_step(hidden, out, w, gate)
        return self.model.norm(hidden)


def _add_deepstack(tokens: Tokens, level: int) -> Tokens:
    """DeepStack (Qwen3-VL): after layer ``level``, each visual token still present gains its own row
    of ``tokens.deepstack[level]`` (text tokens nothing); the features are let go after the last
    level. One gather of ``[tokens, D]`` rows; a new hidden tensor (a kept layer input is not touched)."""
    rows = tokens.deepstack[level].index_select(0, tokens.visual_row.flatten()).view_as(tokens.hidden)
    tokens.hidden = torch.where(tokens.vis_mask.unsqueeze(-1), tokens.hidden + rows.to(tokens.hidden.dtype), tokens.hidden)
    if level == tokens.deepstack.shape[0] - 1:
        tokens.deepstack = tokens.visual_row = None
    return tokens
