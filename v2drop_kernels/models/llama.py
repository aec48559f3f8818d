"""Llama decoder modules: RMSNorm, RoPE, grouped-query attention projections, SwiGLU.

The same modules hold a Qwen2 decoder (Qwen2-VL, Qwen2.5-VL): it differs by its q/k/v biases and,
for the VL models, by multimodal RoPE (:class:`Rotary` with ``mrope_section``); and Qwen3-VL's: no
biases, per-head q/k norms (``self_attn.q_norm``, ``k_norm``), interleaved multimodal RoPE; and
Qwen3.5's hybrid one: Gated DeltaNet layers (``layers.N.linear_attn``,
:mod:`~v2drop_kernels.models.linear_attention`) between attention layers whose ``q_proj`` also
gives a sigmoid output gate, partial rotary, RMSNorms scaling by ``1 + weight``.

Module and parameter names follow ``transformers``' ``LlamaModel`` (``layers.N.self_attn.q_proj``,
``layers.N.mlp.gate_proj``, ``layers.N.input_layernorm``, ...), so an HF state dict loads by name
and :mod:`v2drop_kernels.models.decoder` can run its layer loop on either these modules or
``transformers``' own (the integration does the latter). The modules only hold weights; a layer's
maths is two pure functions of its weights (:func:`pre_attention`, :func:`post_attention`), so one
compiled function serves every layer (the weights are its inputs, not guarded constants).
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import linear_attention
from .config import TextConfig


class RMSNorm(nn.Module):
    """``x / rms(x) * weight``, computed in float32 like the original Llama (and HF);
    ``zero_centred`` (Qwen3.5): ``* (1 + weight)``, the weight starting at zero."""

    def __init__(self, size: int, eps: float, zero_centred: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(size) if zero_centred else torch.ones(size))
        self.variance_epsilon = eps
        self.zero_centred = zero_centred

    def forward(self, x: Tensor) -> Tensor:
        return rms_norm(x, self.weight, self.variance_epsilon, self.zero_centred)


class Rotary(nn.Module):
    """RoPE tables for explicit position ids: kept tokens keep their original positions.

    Multimodal RoPE (``cfg.mrope_section``, Qwen2-VL): position ids come as three planes
    ``[3, ...]`` (temporal, height, width) and frequency ``j`` turns by the plane of the section
    ``j`` falls in (sections taken in turn: temporal, height, width). Interleaved
    (``cfg.mrope_interleaved``, Qwen3-VL): frequency ``j`` turns by height when ``j ≡ 1 (mod 3)`` and
    ``j < 3 · section[1]``, by width when ``j ≡ 2 (mod 3)`` and ``j < 3 · section[2]``, else by time.
    Text tokens have three equal planes, which is plain RoPE. Partial rotary (``cfg.rotary_dim``,
    Qwen3.5): the tables cover the first ``rotary_dim`` channels of a head, the rest are not turned.
    """

    def __init__(self, cfg: TextConfig):
        super().__init__()
        dim = cfg.rotary_dim or cfg.head_dim
        # On the CPU even inside a `torch.device("meta")` block (checkpoint loading builds the model there).
        inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float, device="cpu") / dim))
        # A plain attribute, not a buffer: ``model.to(torch.bfloat16)`` must not round the frequencies.
        self.inv_freq = inv_freq / cfg.rope_linear_factor
        self.plane_of = None if cfg.mrope_section is None else mrope_planes(cfg.mrope_section, cfg.mrope_interleaved)
        self._on_device: dict[torch.device, tuple[Tensor, Tensor | None]] = {}

    def forward(self, position_ids: Tensor, dtype: torch.dtype, planes: bool = False) -> tuple[Tensor, Tensor]:
        """``cos, sin`` of shape ``position_ids.shape + (rotary_dim,)``, computed in float32; with
        ``planes`` (M-RoPE ids ``[3, ...]``) of shape ``position_ids.shape[1:] + (rotary_dim,)``."""
        tables = self._on_device.get(position_ids.device)
        if tables is None:
            plane_of = None if self.plane_of is None else self.plane_of.to(position_ids.device)
            tables = self._on_device[position_ids.device] = (self.inv_freq.to(position_ids.device), plane_of)
        inv_freq, plane_of = tables
        freqs = position_ids[..., None].float() * inv_freq
        if planes:
            if plane_of is None:
                raise ValueError(f"position ids of shape {tuple(position_ids.shape)} have planes, but this model has no mrope_section")
            freqs = freqs.gather(0, plane_of.expand(1, *freqs.shape[1:]))[0]  # frequency j from plane plane_of[j]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)


def mrope_planes(section: Sequence[int], interleaved: bool) -> Tensor:
    """int64 ``[head_dim / 2]``: the plane (0 time, 1 height, 2 width) whose position id turns each
    rotary frequency, for M-RoPE sections ``section`` (contiguous, or interleaved as Qwen3-VL)."""
    if not interleaved:
        planes = [p for p, n in enumerate(section) for _ in range(n)]
    else:
        planes = [p if p and j < 3 * section[p] else 0 for j in range(sum(section)) for p in [j % 3]]
    return torch.tensor(planes, dtype=torch.long, device="cpu")  # on the CPU even under torch.device("meta")


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotates ``x`` (``[..., Dh]``) by the angles whose tables broadcast against it: all of each
    head, or its first ``cos.shape[-1]`` channels (partial rotary)."""
    rot = cos.shape[-1]
    if rot < x.shape[-1]:
        return torch.cat((apply_rope(x[..., :rot], cos, sin), x[..., rot:]), dim=-1)
    half = rot // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class Attention(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        d, hd, bias = cfg.hidden_size, cfg.head_dim, cfg.qkv_bias
        gate = 2 if cfg.attn_output_gate else 1  # Qwen3.5: each head's queries, then its gate values
        self.q_proj = nn.Linear(d, cfg.num_heads * hd * gate, bias=bias)
        self.k_proj = nn.Linear(d, cfg.num_kv_heads * hd, bias=bias)
        self.v_proj = nn.Linear(d, cfg.num_kv_heads * hd, bias=bias)
        self.o_proj = nn.Linear(cfg.num_heads * hd, d, bias=cfg.o_bias)
        if cfg.qk_norm:  # Qwen3: an RMSNorm over each head's queries and keys, before RoPE
            self.q_norm = RMSNorm(hd, cfg.rms_norm_eps, cfg.zero_centred_norms)
            self.k_norm = RMSNorm(hd, cfg.rms_norm_eps, cfg.zero_centred_norms)


class MLP(nn.Module):
    """SwiGLU: ``down(silu(gate(x)) * up(x))``."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        d, f, bias = cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias
        self.gate_proj = nn.Linear(d, f, bias=bias)
        self.up_proj = nn.Linear(d, f, bias=bias)
        self.down_proj = nn.Linear(f, d, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    """Attention (``self_attn``) or, for a linear-attention layer of a hybrid decoder, Gated DeltaNet
    (``linear_attn``), then the MLP."""

    def __init__(self, cfg: TextConfig, index: int = 0):
        super().__init__()
        if cfg.is_linear(index):
            self.linear_attn = linear_attention.GatedDeltaNet(cfg)
        else:
            self.self_attn = Attention(cfg)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.zero_centred_norms)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.zero_centred_norms)


class LlamaModel(nn.Module):
    """Embeddings, decoder layers and final norm (HF ``LlamaModel``'s parameter names)."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.zero_centred_norms)


# -- a layer's maths, as functions of its weights ---------------------------------------------------------

Linear = tuple[Tensor, Tensor | None]  # (weight [out, in], bias [out] or None)


class LayerWeights(NamedTuple):
    """One decoder layer's weights. ``qkv`` and ``gate_up`` are projection groups whose outputs are
    concatenated: one fused linear (``[Hq·Dh + 2·Hkv·Dh, D]``, ``[2F, D]``) or the three / two
    separate ones of a model that must not be touched (transformers' own, in the integration).
    ``q_norm``, ``k_norm``: the per-head query and key norms (Qwen3), or None; ``gate``: ``q_proj``
    also gives the output gate (Qwen3.5); ``zero_centred``: the norms scale by ``1 + weight``.
    A linear-attention layer has no ``qkv``: ``mixer`` holds its own weights and ``o`` is its
    ``out_proj``."""

    input_norm: Tensor
    qkv: tuple[Linear, ...]
    o: Linear
    post_norm: Tensor
    gate_up: tuple[Linear, ...]
    down: Linear
    eps: float
    q_norm: Tensor | None = None
    k_norm: Tensor | None = None
    gate: bool = False
    zero_centred: bool = False
    mixer: "linear_attention.Mixer | None" = None


def rms_norm(x: Tensor, weight: Tensor, eps: float, zero_centred: bool = False) -> Tensor:
    """``x / rms(x) * weight`` computed in float32, as Llama (and HF) do; ``zero_centred``:
    ``* (1 + weight)``, the product in float32 too (Qwen3.5's order of rounding)."""
    xf = x.float()
    normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    if zero_centred:
        return (normed * (1.0 + weight.float())).to(x.dtype)
    return weight * normed.to(x.dtype)


def _project(x: Tensor, groups: Sequence[Linear]) -> Tensor:
    if len(groups) == 1:
        return F.linear(x, *groups[0])
    return torch.cat([F.linear(x, w, b) for w, b in groups], dim=-1)


def pre_attention(x: Tensor, w: LayerWeights, cos: Tensor, sin: Tensor, heads: int, kv_heads: int, head_dim: int):
    """Input norm, q/k/v projections (and the per-head q/k norms where the layer has them), RoPE:
    ``q [..., Hq, Dh]``, ``k, v [..., Hkv, Dh]`` for tokens ``x [..., D]`` whose RoPE tables
    ``cos, sin [..., rotary_dim]`` are given, and the output gate ``[..., Hq·Dh]`` (None without)."""
    qkv = _project(rms_norm(x, w.input_norm, w.eps, w.zero_centred), w.qkv)
    width = heads * head_dim * (2 if w.gate else 1)
    q, k, v = qkv.split([width, kv_heads * head_dim, kv_heads * head_dim], dim=-1)
    q, k, v = q.unflatten(-1, (heads, -1)), k.unflatten(-1, (kv_heads, head_dim)), v.unflatten(-1, (kv_heads, head_dim))
    gate = None
    if w.gate:  # per head: head_dim queries, then head_dim gate values
        q, gate = q.split(head_dim, dim=-1)
        gate = gate.flatten(-2)
    if w.q_norm is not None:
        q, k = rms_norm(q, w.q_norm, w.eps, w.zero_centred), rms_norm(k, w.k_norm, w.eps, w.zero_centred)
    cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)  # broadcast over heads
    return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v, gate


def pre_linear(x: Tensor, w: LayerWeights):
    """A linear-attention layer's input norm and projections:
    :func:`~v2drop_kernels.models.linear_attention.project`'s ``(mixed, z, beta, g)``."""
    return linear_attention.project(rms_norm(x, w.input_norm, w.eps, w.zero_centred), w.mixer, _project)


def post_attention(residual: Tensor, attn: Tensor, w: LayerWeights, gate: Tensor | None = None) -> Tensor:
    """The output gate (``attn · sigmoid(gate)``, where the layer has one), output projection and
    residual, then the SwiGLU MLP with its norm and residual."""
    if gate is not None:
        attn = attn * torch.sigmoid(gate)
    hidden = residual + F.linear(attn, *w.o)
    mlp_gate, up = _project(rms_norm(hidden, w.post_norm, w.eps, w.zero_centred), w.gate_up).chunk(2, dim=-1)
    return hidden + F.linear(F.silu(mlp_gate) * up, *w.down)


def _linear(module: nn.Linear) -> Linear:
    return module.weight, module.bias


def fuse_projections(layer: nn.Module) -> None:
    """Joins the q/k/v and the gate/up projections of a layer with HF Llama names into one linear
    each: the modules' weights (and biases) become views of the fused ones, so there is no second
    copy, and loading and ``state_dict`` still see the modules' own names; ``requires_grad`` is kept.
    Called once at load time (the models' ``fuse_projections``); :func:`layer_weights` only reads."""
    for modules in (_input_projections(layer), (layer.mlp.gate_proj, layer.mlp.up_proj)):
        with torch.inference_mode(False), torch.no_grad():  # ordinary tensors, even under inference mode
            fused_w = torch.cat([m.weight for m in modules])
            biases = [m.bias for m in modules]
            fused_b = None if biases[0] is None else torch.cat(biases)
            start = 0
            for m in modules:
                rows = m.weight.shape[0]
                m.weight = nn.Parameter(fused_w[start : start + rows], requires_grad=m.weight.requires_grad)
                if fused_b is not None:
                    m.bias = nn.Parameter(fused_b[start : start + rows], requires_grad=m.bias.requires_grad)
                start += rows
        modules[0]._v2drop_fused = (fused_w, fused_b)


def _fused(modules: Sequence[nn.Linear]) -> Linear | None:
    """The fused linear of ``modules`` while every weight and bias is still its view (not after
    ``model.to(...)`` or a new weight assigned), else None."""
    fused = getattr(modules[0], "_v2drop_fused", None)
    if fused is None:
        return None
    fused_w, fused_b = fused
    start = 0
    for m in modules:
        rows = m.weight.shape[0]
        if m.weight.dtype != fused_w.dtype or m.weight.device != fused_w.device or not _is_view(m.weight, fused_w, start):
            return None
        if fused_b is not None and (m.bias is None or not _is_view(m.bias, fused_b, start)):
            return None
        start += rows
    return fused_w, fused_b


def _is_view(part: Tensor, whole: Tensor, row: int) -> bool:
    return part.data_ptr() == whole.data_ptr() + row * whole.stride(0) * whole.element_size()


def _input_projections(layer: nn.Module) -> tuple[nn.Linear, ...]:
    """The linears that read a layer's normed input: q/k/v, or a linear-attention layer's qkv/z/b/a."""
    if hasattr(layer, "linear_attn"):
        mix = layer.linear_attn
        return mix.in_proj_qkv, mix.in_proj_z, mix.in_proj_b, mix.in_proj_a
    return layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj


def _group(modules: Sequence[nn.Linear]) -> tuple[Linear, ...]:
    fused = _fused(modules)
    return (fused,) if fused else tuple(_linear(m) for m in modules)


def layer_weights(layer: nn.Module, cfg: TextConfig) -> LayerWeights:
    """The weights of a layer with HF Llama names (Qwen3.5's too), read only: q/k/v (or a linear-
    attention layer's input projections) and gate/up as one linear each where
    :func:`fuse_projections` joined them (and they are still joined), else one per module."""
    mlp = layer.mlp
    common = dict(input_norm=layer.input_layernorm.weight, post_norm=layer.post_attention_layernorm.weight,
                  gate_up=_group((mlp.gate_proj, mlp.up_proj)), down=_linear(mlp.down_proj), eps=cfg.rms_norm_eps,
                  zero_centred=cfg.zero_centred_norms)
    if hasattr(layer, "linear_attn"):
        mix = layer.linear_attn
        mixer = linear_attention.mixer_weights(mix, cfg.linear, _group(_input_projections(layer)))
        return LayerWeights(qkv=(), o=_linear(mix.out_proj), mixer=mixer, **common)
    attn = layer.self_attn
    return LayerWeights(
        qkv=_group(_input_projections(layer)),
        o=_linear(attn.o_proj),
        q_norm=attn.q_norm.weight if hasattr(attn, "q_norm") else None,
        k_norm=attn.k_norm.weight if hasattr(attn, "k_norm") else None,
        gate=cfg.attn_output_gate,
        **common,
    )
