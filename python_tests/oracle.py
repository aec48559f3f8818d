"""Plain-torch oracle of visual-token pruning (V²Drop, PyramidDrop, FastV) on HF vision-language models.

Models: Qwen2-VL / Qwen2.5-VL (M-RoPE), Qwen3-VL (q/k RMSNorm, interleaved M-RoPE, DeepStack), Qwen3.5
(hybrid decoder, below) and the LLaVA family (``LlavaForConditionalGeneration``,
``LlavaNextForConditionalGeneration``, ``LlavaOnevisionForConditionalGeneration``: Llama or Qwen2 decoders, plain
1-D RoPE, which is M-RoPE with three equal position planes ``0 .. S-1``).

Batch size 1, float32: :func:`oracle_prefill`, and :func:`oracle_generate` (greedy, by recomputation). Only the
vision side (the model's own ``get_image_features`` /
``get_video_features``, written over the placeholder tokens as transformers' ``forward`` does, and on
Qwen3-VL their ``deepstack_features``), the
embedding table and Qwen's ``get_rope_index`` come from ``transformers``; the decoder is recomputed here
from the layers' weights, so that the pruning can be written exactly as published:

* ``v2drop``: before each layer ``l`` in ``layers`` the visual tokens still present are ranked by
  ``||h_l - h_{l-1}||_2`` (inputs of layers ``l`` and ``l-1``, before any norm) and the top
  ``k = max(1, int(left * ratio))`` survive.
* ``pdrop``: inside each layer ``l`` in ``layers`` the visual tokens are ranked by the attention of the
  last token (softmax of ``q_last . k / sqrt(d)`` over all current keys, mean over heads), then that
  layer's attention and everything after run on the survivors.
* ``fastv``: ``layers=[K]``, ``keep=[1 - R]``: ranked by the last token's attention in layer ``K - 1``,
  pruned before layer ``K``.

Survivors keep their original order and their original positions (the 3 M-RoPE planes; for plain RoPE
the prompt index); text is never dropped. Nothing here calls the ``v2drop_kernels`` package.

Qwen3-VL's DeepStack: the vision tower's ``deepstack_features`` (one level per ``deepstack_visual_indexes``
block) are added, after decoder layer ``i`` (``i`` < number of levels), to the hidden state of each visual
token still present, its own row (that of its prompt position); tokens pruned before or inside layer ``i``
get nothing. The add is part of layer ``i``'s output, so V²Drop's ``h_l - h_{l-1}`` at ``l = i + 1``
compares layer inputs with the add in ``h_l``.

Qwen3.5: zero-centred RMSNorms (``x / rms(x) * (1 + w)``, q/k norms too); ``layer_types`` mixes full attention
(``q_proj`` gives queries and an output gate per head, ``* sigmoid(gate)`` before ``o_proj``; partial rotary:
the first ``head_dim * partial_rotary_factor`` channels of a head rotate, interleaved M-RoPE over half as many
frequencies) with Gated DeltaNet linear attention (:class:`_LinearLayer`, a per-token recurrence). A linear
layer runs over the tokens present at it only, survivors of earlier drops; ``pdrop`` (and ``fastv``'s layer
``K - 1``) must be full-attention layers. ``OracleResult.linear_states`` holds each linear layer's conv window
and recurrent state after the prefill.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

POLICIES = ("none", "v2drop", "pdrop", "fastv")
HYBRID_TEXT_MODELS = ("qwen3_5_text",)  # zero-centred norms, gated full attention, Gated DeltaNet layers
FULL, LINEAR = "full_attention", "linear_attention"


@dataclass
class OracleResult:
    """Per decoder layer: visual prompt indices and positions of what its attention sees."""

    kept: list[torch.Tensor]  # per layer: ascending int64 prompt indices of the visual tokens it sees
    positions: list[torch.Tensor]  # per layer: [3, n] position ids of all the tokens it sees (plain RoPE: 3 equal)
    seen: list[torch.Tensor]  # per layer: ascending int64 prompt indices of all the tokens it sees
    last_logits: torch.Tensor  # float32 [vocab], logits of the last prompt token
    # Qwen3.5: per linear-attention layer index, (conv window [C, K-1]: the last K-1 pre-conv ``in_proj_qkv``
    # outputs of the tokens it saw, zeros on the left if fewer; recurrent state [Hv, dk, dv] float32) after the
    # prefill. None on decoders without linear attention.
    linear_states: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None


def keep_count(left: int, ratio: float) -> int:
    """Visual tokens kept out of ``left`` at ``ratio`` (at least one)."""
    return max(1, int(left * ratio))


def _rms_norm(x: torch.Tensor, norm: torch.nn.Module, centred: bool = False) -> torch.Tensor:
    """RMSNorm in float32: ``x / rms(x) * w``; ``centred`` (Qwen3.5): ``* (1 + w)``."""
    x = x.float()
    eps = norm.variance_epsilon if hasattr(norm, "variance_epsilon") else norm.eps
    weight = norm.weight.float() + 1.0 if centred else norm.weight.float()
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _linear(x: torch.Tensor, lin: torch.nn.Linear) -> torch.Tensor:
    y = x @ lin.weight.float().T
    return y + lin.bias.float() if lin.bias is not None else y


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotates the first ``cos.shape[-1]`` channels of each head (rotate-half within them); the rest pass."""
    r = cos.shape[-1]
    rot = x[..., :r]
    return torch.cat((rot * cos + _rotate_half(rot) * sin, x[..., r:]), dim=-1)


def _l2_normalize(x: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) + 1e-6)


def mrope_planes(head_dim: int, section: list[int], interleaved: bool = False) -> torch.Tensor:
    """``[head_dim // 2]``: the position plane (0 temporal, 1 height, 2 width) of each rotary frequency ``j``.

    Contiguous (Qwen2-VL / 2.5-VL): 0 for the first ``section[0]`` frequencies, 1 for the next ``section[1]``,
    then 2. Interleaved (Qwen3-VL, Qwen3.5: ``mrope_interleaved``): 1 for ``j % 3 == 1`` and ``j < 3 * section[1]``,
    2 for ``j % 3 == 2`` and ``j < 3 * section[2]``, else 0. (Partial rotary: ``head_dim`` is the rotary dim.)
    """
    if interleaved:
        j = torch.arange(head_dim // 2)
        plane = torch.zeros_like(j)
        plane[(j % 3 == 1) & (j < 3 * section[1])] = 1
        plane[(j % 3 == 2) & (j < 3 * section[2])] = 2
        return plane
    plane = torch.repeat_interleave(torch.arange(len(section)), torch.tensor(section)) % 3
    assert plane.numel() == head_dim // 2, (section, head_dim)
    return plane


def mrope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float, section: list[int],
                  interleaved: bool = False):
    """cos/sin ``[n, head_dim]``: frequency ``j`` rotates by the position of plane ``plane(j)``
    (:func:`mrope_planes`); both halves of the head use the same angles (``rotate_half`` layout).
    Plain RoPE: ``section = [head_dim // 2]`` (every frequency on plane 0; the three planes are equal).
    Partial rotary (Qwen3.5): pass the rotary dim as ``head_dim``; the frequencies are ``theta ** (-2j / rotary_dim)``.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim))
    plane = mrope_planes(head_dim, section, interleaved)
    angles = positions[plane].float().T * inv_freq  # [n, head_dim / 2]: positions[plane[j], i] * inv_freq[j]
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos(), angles.sin()


def _mlp(m: torch.nn.Module, h: torch.Tensor, centred: bool) -> torch.Tensor:
    """``h`` plus the SwiGLU MLP of ``post_attention_layernorm(h)``."""
    mlp = m.mlp
    x = _rms_norm(h, m.post_attention_layernorm, centred)
    gate = torch.nn.functional.silu(_linear(x, mlp.gate_proj))
    return h + _linear(gate * _linear(x, mlp.up_proj), mlp.down_proj)


class _Layer:
    """One (full-attention) decoder layer, recomputed from the module's weights (float32). ``hybrid``
    (Qwen3.5): zero-centred norms, ``q_proj`` gives per head ``head_dim`` queries then ``head_dim`` gates, and the
    attention output is multiplied by ``sigmoid(gate)`` before ``o_proj``."""

    def __init__(self, layer: torch.nn.Module, heads: int, kv_heads: int, head_dim: int, hybrid: bool = False):
        self.m, self.heads, self.kv_heads, self.head_dim = layer, heads, kv_heads, head_dim
        self.hybrid = hybrid

    def qkv(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """Normed input, then q ``[H, n, d]``, k, v ``[KV, n, d]`` with RoPE applied to q and k (Qwen3 / 3.5: after
        ``q_norm`` / ``k_norm``, RMSNorm over each head's ``d``; partial rotary: the first ``cos.shape[-1]``
        channels only), and the output gate ``[n, H d]`` (None unless hybrid)."""
        att = self.m.self_attn
        x = _rms_norm(h, self.m.input_layernorm, self.hybrid)
        n = x.shape[0]
        gate = None
        if self.hybrid:
            q, gate = _linear(x, att.q_proj).view(n, self.heads, 2 * self.head_dim).split(self.head_dim, dim=-1)
            gate = gate.reshape(n, self.heads * self.head_dim)
        else:
            q = _linear(x, att.q_proj).view(n, self.heads, self.head_dim)
        k = _linear(x, att.k_proj).view(n, self.kv_heads, self.head_dim)
        if getattr(att, "q_norm", None) is not None:
            q = _rms_norm(q, att.q_norm, self.hybrid)
        if getattr(att, "k_norm", None) is not None:
            k = _rms_norm(k, att.k_norm, self.hybrid)
        q, k = q.transpose(0, 1), k.transpose(0, 1)
        v = _linear(x, att.v_proj).view(n, self.kv_heads, self.head_dim).transpose(0, 1)
        return _rope(q, cos, sin), _rope(k, cos, sin), v, gate

    def last_token_attention(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """``[n]``: softmax of the last query over all keys, mean over heads (float32)."""
        k = k.repeat_interleave(self.heads // self.kv_heads, dim=0)
        logits = (q[:, -1:, :] @ k.transpose(1, 2)).squeeze(1) / math.sqrt(self.head_dim)  # [H, n]
        return torch.softmax(logits.float(), dim=-1).mean(0)

    def finish(self, h: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               gate: torch.Tensor | None = None) -> torch.Tensor:
        """Causal grouped-query attention, output gate (hybrid), o_proj, residual, SwiGLU MLP, residual."""
        n = h.shape[0]
        rep = self.heads // self.kv_heads
        k, v = k.repeat_interleave(rep, dim=0), v.repeat_interleave(rep, dim=0)
        scores = q @ k.transpose(1, 2) / math.sqrt(self.head_dim)
        causal = torch.ones(n, n, dtype=torch.bool).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
        out = torch.softmax(scores, dim=-1) @ v  # [H, n, d]
        out = out.transpose(0, 1).reshape(n, self.heads * self.head_dim)
        if gate is not None:
            out = out * torch.sigmoid(gate)
        h = h + _linear(out, self.m.self_attn.o_proj)
        return _mlp(self.m, h, self.hybrid)


class _LinearLayer:
    """One Qwen3.5 Gated DeltaNet decoder layer (float32), over the tokens given only, from the equations.

    ``x = norm(h)``; ``in_proj_qkv(x)`` -> depthwise causal conv1d (kernel ``K``, zeros on the left) -> SiLU ->
    q, k ``[n, Hk, dk]``, v ``[n, Hv, dv]``; q, k L2-normalised per head, q scaled by ``dk ** -0.5``; value head
    ``j`` reads key head ``j // (Hv / Hk)``; ``beta = sigmoid(in_proj_b x)``, ``g = -exp(A_log) softplus(in_proj_a x
    + dt_bias)``; per token and value head, with ``S [dk, dv]`` from 0: ``S = exp(g) S``, ``S += k (beta (v - S^T
    k))^T``, ``o = S^T q``; ``o / rms(o) * w * silu(in_proj_z x)`` per value head, ``out_proj``, residual, MLP.
    """

    def __init__(self, layer: torch.nn.Module, tcfg):
        self.m = layer
        self.hk, self.hv = tcfg.linear_num_key_heads, tcfg.linear_num_value_heads
        self.dk, self.dv = tcfg.linear_key_head_dim, tcfg.linear_value_head_dim

    def run(self, h: torch.Tensor):
        """The layer's output and its ``(conv window [C, K-1], recurrent state [Hv, dk, dv])`` after the tokens."""
        la = self.m.linear_attn
        hk, hv, dk, dv = self.hk, self.hv, self.dk, self.dv
        x = _rms_norm(h, self.m.input_layernorm, centred=True)
        n = x.shape[0]
        mixed = _linear(x, la.in_proj_qkv)  # [n, C], before the conv
        w = la.conv1d.weight.float()[:, 0, :]  # [C, K]: w[:, K-1] multiplies the current token
        kernel = w.shape[1]
        padded = torch.cat((mixed.new_zeros(kernel - 1, mixed.shape[1]), mixed))
        conv = sum(w[:, j] * padded[j:j + n] for j in range(kernel))
        if la.conv1d.bias is not None:
            conv = conv + la.conv1d.bias.float()
        q, k, v = torch.nn.functional.silu(conv).split([hk * dk, hk * dk, hv * dv], dim=-1)
        rep = hv // hk
        q = (_l2_normalize(q.reshape(n, hk, dk)) * dk ** -0.5).repeat_interleave(rep, dim=1)  # [n, Hv, dk]
        k = _l2_normalize(k.reshape(n, hk, dk)).repeat_interleave(rep, dim=1)
        v = v.reshape(n, hv, dv)
        beta = torch.sigmoid(_linear(x, la.in_proj_b))  # [n, Hv]
        g = -la.A_log.float().exp() * torch.nn.functional.softplus(_linear(x, la.in_proj_a) + la.dt_bias.float())
        state = torch.zeros(hv, dk, dv)
        out = []
        for t in range(n):
            state = state * g[t].exp()[:, None, None]
            delta = beta[t][:, None] * (v[t] - torch.einsum("hkv,hk->hv", state, k[t]))
            state = state + k[t][:, :, None] * delta[:, None, :]
            out.append(torch.einsum("hkv,hk->hv", state, q[t]))
        o = torch.stack(out) if out else v.new_zeros(0, hv, dv)  # [n, Hv, dv]
        z = _linear(x, la.in_proj_z).reshape(n, hv, dv)
        o = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + la.norm.variance_epsilon)
        o = o * la.norm.weight.float() * torch.nn.functional.silu(z)
        h = h + _linear(o.reshape(n, hv * dv), la.out_proj)
        return _mlp(self.m, h, centred=True), (padded[-(kernel - 1):].T.contiguous(), state)


def _top_visual(scores: torch.Tensor, visual: torch.Tensor, ratio: float) -> torch.Tensor:
    """Boolean mask over the current tokens: text plus the top ``keep_count`` visual tokens by ``scores``."""
    where = visual.nonzero().squeeze(1)
    keep = torch.ones_like(visual)
    if where.numel() == 0:
        return keep
    top = torch.topk(scores[where].float(), keep_count(where.numel(), ratio)).indices.sort().values
    keep[where] = False
    keep[where[top]] = True
    return keep


# Per kind of visual input: the placeholder token's config field, the pixels' argument, the other
# arguments transformers' ``forward`` hands the encoder when given (Qwen: grids; LLaVA-NeXT / OneVision:
# ``image_sizes``; OneVision: ``batch_num_images``), and the encoder. The encoder reads
# ``vision_feature_layer`` / ``vision_feature_select_strategy`` / ``vision_aspect_ratio`` from the config,
# as in ``forward``; OneVision's video features come pooled, with the newline appended.
VISUAL_KINDS = (
    ("image_token_id", "pixel_values", ("image_grid_thw", "image_sizes", "batch_num_images"), "get_image_features"),
    ("video_token_id", "pixel_values_videos", ("video_grid_thw",), "get_video_features"),
)


def _features(output) -> torch.Tensor:
    """``pooler_output`` (a tensor per image, or ``[N, n, d]``) as ``[sum n, d]`` float32, in order."""
    return torch.cat([f.reshape(-1, f.shape[-1]) for f in output.pooler_output], dim=0).float()


def _deepstack_levels(output) -> list[torch.Tensor]:
    """Qwen3-VL's ``deepstack_features`` (per level, a tensor per item) as ``[sum n, d]`` float32 per level;
    ``[]`` for encoders without DeepStack."""
    levels = getattr(output, "deepstack_features", None) or []
    return [torch.cat([f.reshape(-1, f.shape[-1]) for f in level], dim=0).float() for level in levels]


def embed_and_positions(model, inputs: dict):
    """Prompt embeddings (visual features written in), ``[3, S]`` positions, visual mask, valid columns, and
    DeepStack features ``[levels, S, d]`` (row ``s``: what is added to prompt token ``s`` after decoder layer
    ``level``; zero on text; ``levels = 0`` without DeepStack)."""
    ids = inputs["input_ids"]
    if ids.shape[0] != 1:
        raise ValueError("the oracle runs batch size 1")
    cfg = model.config
    valid = inputs.get("attention_mask", torch.ones_like(ids))[0].bool()
    cols = valid.nonzero().squeeze(1)
    ids = ids[:, valid]
    inner = model.model
    emb = inner.get_input_embeddings()(ids)[0].float().clone()
    visual = torch.zeros(ids.shape[1], dtype=torch.bool)
    deepstack = None
    for field, pix, extra, encoder in VISUAL_KINDS:
        token = getattr(cfg, field, None)
        if token is None:
            continue
        where = ids[0] == token
        visual |= where
        if inputs.get(pix) is None:
            assert not where.any(), f"{int(where.sum())} placeholders of {field} but no {pix}"
            continue
        args = {name: inputs[name] for name in extra if inputs.get(name) is not None}
        output = getattr(inner, encoder)(inputs[pix], **args)
        feats = _features(output)
        assert int(where.sum()) == feats.shape[0], (field, int(where.sum()), feats.shape)
        emb[where] = feats
        levels = _deepstack_levels(output)
        if levels:  # images and videos each in prompt order, so jointly in prompt order (as Qwen3VLModel.forward)
            if deepstack is None:
                deepstack = emb.new_zeros(len(levels), *emb.shape)
            assert len(levels) == deepstack.shape[0] and all(f.shape == feats.shape for f in levels), field
            deepstack[:, where] = torch.stack(levels)
    grids = inputs.get("image_grid_thw") is not None or inputs.get("video_grid_thw") is not None
    if grids and hasattr(inner, "get_rope_index"):  # Qwen2-VL / Qwen2.5-VL / Qwen3-VL M-RoPE
        types = inputs.get("mm_token_type_ids")
        types = types[:, valid] if types is not None else (
            (ids == cfg.image_token_id).long() + 2 * (ids == cfg.video_token_id).long())
        extra = {"second_per_grid_ts": inputs["second_per_grid_ts"]} if "second_per_grid_ts" in inputs else {}
        pos, _ = inner.get_rope_index(ids, mm_token_type_ids=types, image_grid_thw=inputs.get("image_grid_thw"),
                                      video_grid_thw=inputs.get("video_grid_thw"), **extra)
        pos = pos[:, 0]
    else:  # text only, or plain RoPE: the prompt index on all three planes
        pos = torch.arange(ids.shape[1]).expand(3, -1)
    if deepstack is None:
        deepstack = emb.new_zeros(0, *emb.shape)
    return emb, pos.long(), visual, cols, deepstack


def rope_of(tcfg, head_dim: int) -> tuple[float, list[int]]:
    """``(theta, mrope section)`` of a text config (transformers 5 ``rope_parameters``); plain RoPE:
    one section of all ``rotary_dim // 2`` frequencies. Interleaved or not: :func:`mrope_interleaved`; how many
    channels of a head rotate: :func:`rotary_dim`."""
    rope = tcfg.rope_parameters
    if rope.get("rope_type", "default") not in ("default", "mrope"):
        raise NotImplementedError(f"the oracle knows unscaled RoPE only, not {rope['rope_type']!r}")
    return float(rope["rope_theta"]), list(rope.get("mrope_section") or [rotary_dim(tcfg, head_dim) // 2])


def rotary_dim(tcfg, head_dim: int) -> int:
    """The rotated channels of each head: ``int(head_dim * partial_rotary_factor)`` (Qwen3.5: a fraction; else all)."""
    return int(head_dim * tcfg.rope_parameters.get("partial_rotary_factor", 1.0))


def mrope_interleaved(tcfg) -> bool:
    """Qwen3-VL / Qwen3.5: ``rope_parameters["mrope_interleaved"]`` (the planes' frequencies interleaved T H W ...)."""
    return bool(tcfg.rope_parameters.get("mrope_interleaved", False))


def layer_kinds(tcfg) -> list[str]:
    """Per decoder layer, ``"full_attention"`` or (Qwen3.5) ``"linear_attention"``."""
    if getattr(tcfg, "model_type", None) not in HYBRID_TEXT_MODELS:
        return [FULL] * tcfg.num_hidden_layers
    kinds = list(tcfg.layer_types)
    if other := set(kinds) - {FULL, LINEAR}:
        raise NotImplementedError(f"the oracle runs full and linear attention layers, not {sorted(other)}")
    return kinds


class _Decoder:
    """The text decoder of ``model``, recomputed layer by layer over the tokens each layer is given."""

    def __init__(self, model):
        tcfg = model.config.text_config
        self.tcfg, self.lm, self.lm_head = tcfg, model.model.language_model, model.lm_head
        self.heads, self.kv_heads = tcfg.num_attention_heads, tcfg.num_key_value_heads
        self.head_dim = getattr(tcfg, "head_dim", None) or tcfg.hidden_size // self.heads
        self.theta, self.section = rope_of(tcfg, self.head_dim)
        self.rotary_dim = rotary_dim(tcfg, self.head_dim)
        self.interleaved = mrope_interleaved(tcfg)
        self.hybrid = getattr(tcfg, "model_type", None) in HYBRID_TEXT_MODELS
        self.kinds = layer_kinds(tcfg)
        if getattr(tcfg, "hidden_act", "silu") != "silu" or getattr(tcfg, "use_sliding_window", False):
            raise NotImplementedError("the oracle runs SwiGLU decoders with full (or Qwen3.5 linear) attention")

    def layer(self, li: int):
        module = self.lm.layers[li]
        if self.kinds[li] == LINEAR:
            return _LinearLayer(module, self.tcfg)
        return _Layer(module, self.heads, self.kv_heads, self.head_dim, self.hybrid)

    def logits(self, h_last: torch.Tensor) -> torch.Tensor:
        return (_rms_norm(h_last[None], self.lm.norm, self.hybrid) @ self.lm_head.weight.float().T)[0]

    def run(self, h, pos, visual, deepstack, policy: str = "none", ratio_at: dict | None = None, fixed=None):
        """All layers over ``h [n, d]`` (``pos [3, n]``, ``visual [n]``, ``deepstack [levels, n0, d]`` by index).

        Either prunes by ``policy`` / ``ratio_at``, or (``fixed``: per layer, the ascending indices into ``h`` of
        the tokens it sees) keeps exactly those. Returns the last hidden state ``[n_last, d]`` and, per layer,
        the indices it saw, their ``[3, n]`` positions, and the linear layers' states.
        """
        ratio_at = ratio_at or {}
        idx = torch.arange(h.shape[0])  # index (in the given sequence) of each current token
        prev_h = None  # input of the previous layer, same tokens as h
        fastv_scores = None
        seen, positions, states = [], [], {}
        for li in range(len(self.lm.layers)):
            layer = self.layer(li)
            survive = None
            if fixed is not None:
                survive = torch.isin(idx, fixed[li])
                assert int(survive.sum()) == fixed[li].numel(), f"layer {li} is given tokens the previous one dropped"
            elif policy == "v2drop" and li in ratio_at:
                survive = _top_visual((h - prev_h).float().norm(dim=-1), visual, ratio_at[li])
            elif policy == "fastv" and li in ratio_at:
                survive = _top_visual(fastv_scores, visual, ratio_at[li])
            if survive is not None:
                h, pos, visual, idx = h[survive], pos[:, survive], visual[survive], idx[survive]
            prev_h = h

            if self.kinds[li] == LINEAR:
                seen.append(idx)
                positions.append(pos.clone())
                h, states[li] = layer.run(h)
            else:
                cos, sin = mrope_cos_sin(pos, self.rotary_dim, self.theta, self.section, self.interleaved)
                q, k, v, gate = layer.qkv(h, cos, sin)
                if fixed is None and policy == "pdrop" and li in ratio_at:
                    survive = _top_visual(layer.last_token_attention(q, k), visual, ratio_at[li])
                    h, pos, visual, idx = h[survive], pos[:, survive], visual[survive], idx[survive]
                    q, k, v = q[:, survive], k[:, survive], v[:, survive]
                    gate = gate[survive] if gate is not None else None
                if fixed is None and policy == "fastv" and li + 1 in ratio_at:
                    fastv_scores = layer.last_token_attention(q, k)
                seen.append(idx)
                positions.append(pos.clone())
                h = layer.finish(h, q, k, v, gate)
            if li < deepstack.shape[0]:  # DeepStack: each surviving visual token gets its own row
                h[visual] += deepstack[li, idx[visual]]
        return h, seen, positions, states


def _check_policy(policy: str, layers: list[int], keep: list[float], kinds: list[str]) -> dict:
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}")
    layers, keep = list(layers), list(keep)
    if len(layers) != len(keep):
        raise ValueError("layers and keep must have the same length")
    if policy == "none":
        return {}
    if policy == "fastv" and len(layers) != 1:
        raise ValueError("fastv prunes once: layers=[K]")
    if policy in ("v2drop", "fastv") and any(layer < 1 for layer in layers):
        raise ValueError(f"{policy} needs the layer before the pruning layer")
    # pdrop ranks inside its layers, fastv in the layer before: those must be softmax-attention layers
    scored = layers if policy == "pdrop" else [layer - 1 for layer in layers] if policy == "fastv" else []
    linear = [layer for layer in scored if 0 <= layer < len(kinds) and kinds[layer] == LINEAR]
    if linear:
        raise ValueError(f"{policy} ranks by softmax attention, which linear-attention layers {linear} have not")
    return dict(zip(layers, keep))


@torch.no_grad()
def _prefill(model, inputs: dict, policy: str, layers: list[int], keep: list[float]):
    ratio_at = _check_policy(policy, layers, keep, layer_kinds(model.config.text_config))
    decoder = _Decoder(model)
    h, pos, visual, cols, deepstack = embed_and_positions(model, inputs)
    if visual[-1]:
        raise ValueError("the last prompt token must be text")
    emb = h.clone()
    h, seen, positions, states = decoder.run(h, pos, visual, deepstack, policy, ratio_at)
    result = OracleResult(kept=[cols[i[visual[i]]] for i in seen], positions=positions, seen=[cols[i] for i in seen],
                          last_logits=decoder.logits(h[-1]), linear_states=states if decoder.hybrid else None)
    return result, decoder, (emb, pos, visual, deepstack, seen)


def oracle_prefill(model, inputs: dict, policy: str, layers: list[int], keep: list[float]) -> OracleResult:
    """Prefill of one prompt with ``policy`` pruning at ``layers`` (keep ratio ``keep[i]`` at ``layers[i]``)."""
    return _prefill(model, inputs, policy, layers, keep)[0]


def _eos_ids(model) -> list[int]:
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = getattr(model.config.text_config, "eos_token_id", None)
    return [] if eos is None else list(eos) if isinstance(eos, (list, tuple)) else [eos]


@torch.no_grad()
def oracle_generate(model, inputs: dict, policy: str, layers: list[int], keep: list[float],
                    max_new_tokens: int) -> tuple[list[int], OracleResult]:
    """Greedy decoding of one prompt (stopping after an EOS of ``generation_config``, as transformers' generate),
    by recomputation: every layer sees the prompt tokens :func:`oracle_prefill` left it (fixed) plus all the
    generated tokens (text, positions ``pos[:, -1] + 1 + step`` on all three planes), the whole forward again per
    step, no cache. Returns the new tokens and the prefill's result. Runs on one thread (tiny matmuls gain
    nothing from more, and spin-waiting ones crawl on a loaded machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _generate(model, inputs, policy, layers, keep, max_new_tokens)
    finally:
        torch.set_num_threads(threads)


def _generate(model, inputs: dict, policy: str, layers: list[int], keep: list[float], max_new_tokens: int):
    result, decoder, (emb, pos, visual, deepstack, seen) = _prefill(model, inputs, policy, layers, keep)
    embed = model.model.get_input_embeddings()
    eos = _eos_ids(model)
    tokens = [int(result.last_logits.argmax())]
    n = emb.shape[0]
    while len(tokens) < max_new_tokens and tokens[-1] not in eos:
        new = torch.tensor(tokens)
        h = torch.cat((emb, embed(new).float()))
        steps = torch.arange(len(tokens))
        all_pos = torch.cat((pos, pos[:, -1:] + 1 + steps), dim=1)
        all_visual = torch.cat((visual, torch.zeros(len(tokens), dtype=torch.bool)))
        fixed = [torch.cat((s, n + steps)) for s in seen]
        h, *_ = decoder.run(h, all_pos, all_visual, deepstack, fixed=fixed)
        tokens.append(int(decoder.logits(h[-1]).argmax()))
    return tokens, result
