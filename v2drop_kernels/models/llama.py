"""Llama decoder modules: RMSNorm, RoPE, grouped-query attention projections, SwiGLU.

The same modules hold a Qwen2 decoder (Qwen2-VL, Qwen2.5-VL): it differs by its q/k/v biases and,
for the VL models, by multimodal RoPE (:class:`Rotary` with ``mrope_section``); and Qwen3-VL's: no
biases, per-head q/k norms (``self_attn.q_norm``, ``k_norm``), interleaved multimodal RoPE.

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

from .config import TextConfig


class RMSNorm(nn.Module):
    """``x / rms(x) * weight``, computed in float32 like the original Llama (and HF)."""

    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.variance_epsilon = eps

    def forward(self, x: Tensor) -> Tensor:
        return rms_norm(x, self.weight, self.variance_epsilon)


class Rotary(nn.Module):
    """RoPE tables for explicit position ids: kept tokens keep their original positions.

    Multimodal RoPE (``cfg.mrope_section``, Qwen2-VL): position ids come as three planes
    ``[3, ...]`` (temporal, height, width) and frequency ``j`` turns by the plane of the section
    ``j`` falls in (sections taken in turn: temporal, height, width). Interleaved
    (``cfg.mrope_interleaved``, Qwen3-VL): frequency ``j`` turns by height when ``j ≡ 1 (mod 3)`` and
    ``j < 3 · section[1]``, by width when ``j ≡ 2 (mod 3)`` and ``j < 3 · section[2]``, else by time.
    Text tokens have three equal planes, which is plain RoPE.
    """

    def __init__(self, cfg: TextConfig):
        super().__init__()
        dim = cfg.head_dim
        # On the CPU even inside a `torch.device("meta")` block (checkpoint loading builds the model there).
        inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float, device="cpu") / dim))
        # A plain attribute, not a buffer: ``model.to(torch.bfloat16)`` must not round the frequencies.
        self.inv_freq = inv_freq / cfg.rope_linear_factor
        self.plane_of = None if cfg.mrope_section is None else mrope_planes(cfg.mrope_section, cfg.mrope_interleaved)
        self._on_device: dict[torch.device, tuple[Tensor, Tensor | None]] = {}

    def forward(self, position_ids: Tensor, dtype: torch.dtype, planes: bool = False) -> tuple[Tensor, Tensor]:
        """``cos, sin`` of shape ``position_ids.shape + (head_dim,)``, computed in float32; with
        ``planes`` (M-RoPE ids ``[3, ...]``) of shape ``position_ids.shape[1:] + (head_dim,)``."""
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
    """Rotates ``x`` (``[..., Dh]``) by the angles whose tables broadcast against it."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class Attention(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        d, hd, bias = cfg.hidden_size, cfg.head_dim, cfg.qkv_bias
        self.q_proj = nn.Linear(d, cfg.num_heads * hd, bias=bias)
        self.k_proj = nn.Linear(d, cfg.num_kv_heads * hd, bias=bias)
        self.v_proj = nn.Linear(d, cfg.num_kv_heads * hd, bias=bias)
        self.o_proj = nn.Linear(cfg.num_heads * hd, d, bias=cfg.o_bias)
        if cfg.qk_norm:  # Qwen3: an RMSNorm over each head's queries and keys, before RoPE
            self.q_norm = RMSNorm(hd, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(hd, cfg.rms_norm_eps)


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
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.self_attn = Attention(cfg)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class LlamaModel(nn.Module):
    """Embeddings, decoder layers and final norm (HF ``LlamaModel``'s parameter names)."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


# -- a layer's maths, as functions of its weights ---------------------------------------------------------

Linear = tuple[Tensor, Tensor | None]  # (weight [out, in], bias [out] or None)


class LayerWeights(NamedTuple):
    """One decoder layer's weights. ``qkv`` and ``gate_up`` are projection groups whose outputs are
    concatenated: one fused linear (``[Hq·Dh + 2·Hkv·Dh, D]``, ``[2F, D]``) or the three / two
    separate ones of a model that must not be touched (transformers' own, in the integration).
    ``q_norm``, ``k_norm``: the per-head query and key norms (Qwen3), or None."""

    input_norm: Tensor
    qkv: tuple[Linear, ...]
    o: Linear
    post_norm: Tensor
    gate_up: tuple[Linear, ...]
    down: Linear
    eps: float
    q_norm: Tensor | None = None
    k_norm: Tensor | None = None


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """``x / rms(x) * weight`` computed in float32, as Llama (and HF) do."""
    xf = x.float()
    return weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def _project(x: Tensor, groups: Sequence[Linear]) -> Tensor:
    if len(groups) == 1:
        return F.linear(x, *groups[0])
    return torch.cat([F.linear(x, w, b) for w, b in groups], dim=-1)


def pre_attention(x: Tensor, w: LayerWeights, cos: Tensor, sin: Tensor, heads: int, kv_heads: int, head_dim: int):
    """Input norm, q/k/v projections (and the per-head q/k norms where the layer has them), RoPE:
    ``q [..., Hq, Dh]``, ``k, v [..., Hkv, Dh]`` for tokens ``x [..., D]`` whose RoPE tables
    ``cos, sin [..., Dh]`` are given."""
    qkv = _project(rms_norm(x, w.input_norm, w.eps), w.qkv)
    q, k, v = qkv.split([heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], dim=-1)
    q, k, v = q.unflatten(-1, (heads, head_dim)), k.unflatten(-1, (kv_heads, head_dim)), v.unflatten(-1, (kv_heads, head_dim))
    if w.q_norm is not None:
        q, k = rms_norm(q, w.q_norm, w.eps), rms_norm(k, w.k_norm, w.eps)
    cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)  # broadcast over heads
    return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v


def post_attention(residual: Tensor, attn: Tensor, w: LayerWeights) -> Tensor:
    """Output projection and residual, then the SwiGLU MLP with its norm and residual."""
    hidden = residual + F.linear(attn, *w.o)
    gate, up = _project(rms_norm(hidden, w.post_norm, w.eps), w.gate_up).chunk(2, dim=-1)
    return hidden + F.linear(F.silu(gate) * up, *w.down)


def _linear(module: nn.Linear) -> Linear:
    return module.weight, module.bias


def fuse_projections(layer: nn.Module) -> None:
    """Joins the q/k/v and the gate/up projections of a layer with HF Llama names into one linear
    each: the modules' weights (and biases) become views of the fused ones, so there is no second
    copy, and loading and ``state_dict`` still see the modules' own names; ``requires_grad`` is kept.
    Called once at load time (the models' ``fuse_projections``); :func:`layer_weights` only reads."""
    attn, mlp = layer.self_attn, layer.mlp
    for modules in ((attn.q_proj, attn.k_proj, attn.v_proj), (mlp.gate_proj, mlp.up_proj)):
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


def layer_weights(layer: nn.Module, eps: float) -> LayerWeights:
    """The weights of a layer with HF Llama names, read only: q/k/v and gate/up as one linear each
    where :func:`fuse_projections` joined them (and they are still joined), else one per module."""
    attn, mlp = layer.self_attn, layer.mlp
    qkv = (attn.q_proj, attn.k_proj, attn.v_proj)
    gate_up = (mlp.gate_proj, mlp.up_proj)
    fused_qkv, fused_gate_up = _fused(qkv), _fused(gate_up)
    return LayerWeights(
        input_norm=layer.input_layernorm.weight,
        qkv=(fused_qkv,) if fused_qkv else tuple(_linear(m) for m in qkv),
        o=_linear(attn.o_proj),
        post_norm=layer.post_attention_layernorm.weight,
        gate_up=(fused_gate_up,) if fused_gate_up else tuple(_linear(m) for m in gate_up),
        down=_linear(mlp.down_proj),
        eps=eps,
        q_norm=attn.q_norm.weight if hasattr(attn, "q_norm") else None,
        k_norm=attn.k_norm.weight if hasattr(attn, "k_norm") else None,
    )
