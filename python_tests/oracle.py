"""Plain-torch oracle of visual-token pruning (V²Drop, PyramidDrop, FastV) on HF vision-language models.

Models: Qwen2-VL / Qwen2.5-VL (M-RoPE), Qwen3-VL (q/k RMSNorm, interleaved M-RoPE, DeepStack) and the
LLaVA family (``LlavaForConditionalGeneration``, ``LlavaNextForConditionalGeneration``,
``LlavaOnevisionForConditionalGeneration``: Llama or Qwen2 decoders, plain 1-D RoPE, which is M-RoPE with
three equal position planes ``0 .. S-1``).

Batch size 1, prefill only, float32. Only the vision side (the model's own ``get_image_features`` /
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
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

POLICIES = ("none", "v2drop", "pdrop", "fastv")


@dataclass
class OracleResult:
    """Per decoder layer: visual prompt indices and positions of what its attention sees."""

    kept: list[torch.Tensor]  # per layer: ascending int64 prompt indices of the visual tokens it sees
    positions: list[torch.Tensor]  # per layer: [3, n] position ids of all the tokens it sees (plain RoPE: 3 equal)
    seen: list[torch.Tensor]  # per layer: ascending int64 prompt indices of all the tokens it sees
    last_logits: torch.Tensor  # float32 [vocab], logits of the last prompt token


def keep_count(left: int, ratio: float) -> int:
    """Visual tokens kept out of ``left`` at ``ratio`` (at least one)."""
    return max(1, int(left * ratio))


def _rms_norm(x: torch.Tensor, norm: torch.nn.Module) -> torch.Tensor:
    x = x.float()
    return norm.weight.float() * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon))


def _linear(x: torch.Tensor, lin: torch.nn.Linear) -> torch.Tensor:
    y = x @ lin.weight.float().T
    return y + lin.bias.float() if lin.bias is not None else y


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def mrope_planes(head_dim: int, section: list[int], interleaved: bool = False) -> torch.Tensor:
    """``[head_dim // 2]``: the position plane (0 temporal, 1 height, 2 width) of each rotary frequency ``j``.

    Contiguous (Qwen2-VL / 2.5-VL): 0 for the first ``section[0]`` frequencies, 1 for the next ``section[1]``,
    then 2. Interleaved (Qwen3-VL, ``mrope_interleaved``): 1 for ``j % 3 == 1`` and ``j < 3 * section[1]``,
    2 for ``j % 3 == 2`` and ``j < 3 * section[2]``, else 0.
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
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim))
    plane = mrope_planes(head_dim, section, interleaved)
    angles = positions[plane].float().T * inv_freq  # [n, head_dim / 2]: positions[plane[j], i] * inv_freq[j]
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos(), angles.sin()


class _Layer:
    """One decoder layer, recomputed from the module's weights (float32)."""

    def __init__(self, layer: torch.nn.Module, heads: int, kv_heads: int, head_dim: int):
        self.m, self.heads, self.kv_heads, self.head_dim = layer, heads, kv_heads, head_dim

    def qkv(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """Normed input, then q ``[H, n, d]``, k, v ``[KV, n, d]`` with RoPE applied to q and k (Qwen3: after
        ``q_norm`` / ``k_norm``, RMSNorm over each head's ``d``)."""
        att = self.m.self_attn
        x = _rms_norm(h, self.m.input_layernorm)
        n = x.shape[0]
        q = _linear(x, att.q_proj).view(n, self.heads, self.head_dim)
        k = _linear(x, att.k_proj).view(n, self.kv_heads, self.head_dim)
        if getattr(att, "q_norm", None) is not None:
            q = _rms_norm(q, att.q_norm)
        if getattr(att, "k_norm", None) is not None:
            k = _rms_norm(k, att.k_norm)
        q, k = q.transpose(0, 1), k.transpose(0, 1)
        v = _linear(x, att.v_proj).view(n, self.kv_heads, self.head_dim).transpose(0, 1)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        return q, k, v

    def last_token_attention(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """``[n]``: softmax of the last query over all keys, mean over heads (float32)."""
        k = k.repeat_interleave(self.heads // self.kv_heads, dim=0)
        logits = (q[:, -1:, :] @ k.transpose(1, 2)).squeeze(1) / math.sqrt(self.head_dim)  # [H, n]
        return torch.softmax(logits.float(), dim=-1).mean(0)

    def finish(self, h: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Causal grouped-query attention, o_proj, residual, SwiGLU MLP, residual."""
        n = h.shape[0]
        rep = self.heads // self.kv_heads
        k, v = k.repeat_interleave(rep, dim=0), v.repeat_interleave(rep, dim=0)
        scores = q @ k.transpose(1, 2) / math.sqrt(self.head_dim)
        causal = torch.ones(n, n, dtype=torch.bool).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
        out = torch.softmax(scores, dim=-1) @ v  # [H, n, d]
        out = out.transpose(0, 1).reshape(n, self.heads * self.head_dim)
        h = h + _linear(out, self.m.self_attn.o_proj)
        mlp = self.m.mlp
        x = _rms_norm(h, self.m.post_attention_layernorm)
        gate = torch.nn.functional.silu(_linear(x, mlp.gate_proj))
        return h + _linear(gate * _linear(x, mlp.up_proj), mlp.down_proj)


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
    one section of all ``head_dim // 2`` frequencies. Interleaved or not: :func:`mrope_interleaved`."""
    rope = tcfg.rope_parameters
    if rope.get("rope_type", "default") not in ("default", "mrope"):
        raise NotImplementedError(f"the oracle knows unscaled RoPE only, not {rope['rope_type']!r}")
    if rope.get("partial_rotary_factor", 1.0) != 1.0:
        raise NotImplementedError("the oracle rotates the whole head")
    return float(rope["rope_theta"]), list(rope.get("mrope_section") or [head_dim // 2])


def mrope_interleaved(tcfg) -> bool:
    """Qwen3-VL: ``rope_parameters["mrope_interleaved"]`` (the planes' frequencies interleaved T H W T H W ...)."""
    return bool(tcfg.rope_parameters.get("mrope_interleaved", False))


@torch.no_grad()
def oracle_prefill(model, inputs: dict, policy: str, layers: list[int], keep: list[float]) -> OracleResult:
    """Prefill of one prompt with ``policy`` pruning at ``layers`` (keep ratio ``keep[i]`` at ``layers[i]``)."""
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}")
    layers, keep = list(layers), list(keep)
    if len(layers) != len(keep):
        raise ValueError("layers and keep must have the same length")
    if policy == "none":
        layers, keep = [], []
    if policy == "fastv" and len(layers) != 1:
        raise ValueError("fastv prunes once: layers=[K]")
    if policy in ("v2drop", "fastv") and any(layer < 1 for layer in layers):
        raise ValueError(f"{policy} needs the layer before the pruning layer")
    ratio_at = dict(zip(layers, keep))

    tcfg = model.config.text_config
    heads, kv_heads = tcfg.num_attention_heads, tcfg.num_key_value_heads
    head_dim = getattr(tcfg, "head_dim", None) or tcfg.hidden_size // heads
    theta, section = rope_of(tcfg, head_dim)
    interleaved = mrope_interleaved(tcfg)
    if getattr(tcfg, "hidden_act", "silu") != "silu" or getattr(tcfg, "use_sliding_window", False):
        raise NotImplementedError("the oracle runs SwiGLU decoders with full attention")
    lm = model.model.language_model

    h, pos, visual, cols, deepstack = embed_and_positions(model, inputs)
    if visual[-1]:
        raise ValueError("the last prompt token must be text")
    idx = torch.arange(h.shape[0])  # prompt index (in the unpadded prompt) of each current token
    prev_h = None  # input of the previous layer, same tokens as h
    fastv_scores = None
    kept, positions, seen = [], [], []

    for li, module in enumerate(lm.layers):
        layer = _Layer(module, heads, kv_heads, head_dim)
        survive = None
        if policy == "v2drop" and li in ratio_at:
            survive = _top_visual((h - prev_h).float().norm(dim=-1), visual, ratio_at[li])
        if policy == "fastv" and li in ratio_at:
            survive = _top_visual(fastv_scores, visual, ratio_at[li])
        if survive is not None:
            h, pos, visual, idx = h[survive], pos[:, survive], visual[survive], idx[survive]
        prev_h = h

        cos, sin = mrope_cos_sin(pos, head_dim, theta, section, interleaved)
        q, k, v = layer.qkv(h, cos, sin)
        if policy == "pdrop" and li in ratio_at:
            survive = _top_visual(layer.last_token_attention(q, k), visual, ratio_at[li])
            h, pos, visual, idx = h[survive], pos[:, survive], visual[survive], idx[survive]
            q, k, v = q[:, survive], k[:, survive], v[:, survive]
        if policy == "fastv" and li + 1 in ratio_at:
            fastv_scores = layer.last_token_attention(q, k)

        kept.append(cols[idx[visual]])
        seen.append(cols[idx])
        positions.append(pos.clone())
        h = layer.finish(h, q, k, v)
        if li < deepstack.shape[0]:  # DeepStack: each surviving visual token gets its own row
            h[visual] += deepstack[li, idx[visual]]

    h_last = _rms_norm(h[-1:], lm.norm)
    logits = (h_last @ model.lm_head.weight.float().T)[0]
    return OracleResult(kept=kept, positions=positions, seen=seen, last_logits=logits)
