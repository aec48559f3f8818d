"""Qwen3.5's linear-attention layer (Gated DeltaNet): a fixed-size state per row instead of a KV cache.

Per token ``t`` of a row, after the layer's input norm ``x_t``::

    c_t = silu(depthwise causal conv over the last K values of in_proj_qkv(x))    # queries, keys, values
    q_t, k_t = l2norm per head of c_t's query and key parts (q_t also · d_k^-½); v_t its value part
    beta_t = sigmoid(in_proj_b(x_t)),  g_t = −exp(A_log) · softplus(in_proj_a(x_t) + dt_bias)   # per value head
    S_t = exp(g_t) · (I − beta_t k_t k_tᵀ) S_{t−1} + beta_t k_t v_tᵀ                 # S: [d_k, d_v] per value head
    o_t = S_tᵀ q_t;   out_t = out_proj(rmsnorm(o_t) · w · silu(in_proj_z(x_t)))

(each group of ``value_heads / key_heads`` consecutive value heads shares a query/key head). The
state of a row after its prompt is what decode continues from: the recurrent ``S`` (float32,
``[B, Hv, d_k, d_v]``) and the convolution's window, the last ``K − 1`` inputs of the convolution.

A pruned token is simply absent: each layer's recurrence runs over the tokens that reach it, so a
drop before a linear-attention layer saves its compute, not memory (the state has a fixed size).

Prefill runs the recurrence in chunks (:func:`chunked_delta_rule`, the WY form: within a chunk the
corrections of the delta rule are one triangular solve, across chunks one state update each);
decode runs one step on the state in place (:func:`delta_rule_step`, :func:`conv_step`), fixed
shapes and addresses for the static decode step. :func:`recurrent_delta_rule` is the definition,
token by token, that the tests check both against. Rows are left-padded ``[B, S, ...]``: padding
enters as zeros with no decay (``g = 0``, ``beta = 0``), so it leaves the state and window at zero.

Memory traffic of a prefill layer: the projections read ``x`` once and write ``[S, 2·Hk·dk + 2·Hv·dv
+ 2·Hv]``; the chunked rule reads q, k, v once and writes the output, plus three ``[C, C]`` matrices
(decays, the triangular system, the chunk's attention) per chunk and head. A decode step reads and writes the state once (``4·Hv·dk·dv`` bytes per row).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import LinearAttentionConfig, TextConfig

CHUNK = 64  # tokens per chunk of the prefill's chunked rule


class GatedDeltaNet(nn.Module):
    """The layer's weights under ``transformers``' names (``layers.N.linear_attn.*``)."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        lin, d = cfg.linear, cfg.hidden_size
        self.in_proj_qkv = nn.Linear(d, lin.conv_dim, bias=False)
        self.in_proj_z = nn.Linear(d, lin.value_dim, bias=False)
        self.in_proj_b = nn.Linear(d, lin.value_heads, bias=False)
        self.in_proj_a = nn.Linear(d, lin.value_heads, bias=False)
        # the weight only (transformers' name and shape): causal_conv / conv_step compute with it
        self.conv1d = nn.Conv1d(lin.conv_dim, lin.conv_dim, lin.conv_kernel, groups=lin.conv_dim, bias=False)
        self.dt_bias = nn.Parameter(torch.ones(lin.value_heads))
        self.A_log = nn.Parameter(torch.zeros(lin.value_heads))
        self.norm = GatedNorm(lin.value_head_dim, cfg.rms_norm_eps)
        self.out_proj = nn.Linear(lin.value_dim, d, bias=False)


class GatedNorm(nn.Module):
    """``rmsnorm(x) · weight · silu(z)`` (a plain weight, not zero-centred)."""

    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.variance_epsilon = eps


class Mixer(NamedTuple):
    """A linear-attention layer's own weights: ``proj`` the input projections to queries / keys /
    values, z, b, a (one fused linear, or the four separate ones), ``conv [C, K]``, ``dt_bias``,
    ``A_log [Hv]``, the gated norm's ``norm`` weight; the output projection is the layer's ``o``."""

    proj: tuple
    conv: Tensor
    dt_bias: Tensor
    A_log: Tensor
    norm: Tensor
    shape: LinearAttentionConfig


def mixer_weights(module: nn.Module, cfg: LinearAttentionConfig, proj: tuple) -> Mixer:
    """The :class:`Mixer` of a ``linear_attn`` module (the package's or ``transformers``'), read only,
    with its input projections ``proj`` as :func:`~v2drop_kernels.models.llama.layer_weights` groups them."""
    return Mixer(proj, module.conv1d.weight.squeeze(1), module.dt_bias, module.A_log, module.norm.weight, cfg)


# -- the dense maths before and after the recurrence (compilable: no sequence loop) -----------------
def project(x: Tensor, m: Mixer, groups_project) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``x [..., D]`` (normed) → the convolution's input ``[..., C]``, ``z [..., Hv·dv]`` and, per value
    head, ``beta`` and ``g`` (float32)."""
    s = m.shape
    mixed, z, b, a = groups_project(x, m.proj).split([s.conv_dim, s.value_dim, s.value_heads, s.value_heads], dim=-1)
    beta = b.sigmoid().float()
    g = -m.A_log.float().exp() * F.softplus(a.float() + m.dt_bias.float())
    return mixed, z, beta, g


def split_heads(c: Tensor, m: Mixer) -> tuple[Tensor, Tensor, Tensor]:
    """The convolution's output ``[..., C]`` → float32 ``q, k [..., Hv, dk]`` (L2-normalised per head,
    q scaled by ``dk^-½``, each key head repeated for its value heads) and ``v [..., Hv, dv]``."""
    s = m.shape
    q, k, v = c.float().split([s.key_dim, s.key_dim, s.value_dim], dim=-1)
    rep = s.value_heads // s.key_heads
    q = _l2norm(q.unflatten(-1, (s.key_heads, s.key_head_dim))).repeat_interleave(rep, dim=-2) * s.key_head_dim ** -0.5
    k = _l2norm(k.unflatten(-1, (s.key_heads, s.key_head_dim))).repeat_interleave(rep, dim=-2)
    return q, k, v.unflatten(-1, (s.value_heads, s.value_head_dim))


def _l2norm(x: Tensor, eps: float = 1e-6) -> Tensor:
    return x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) + eps)


def gated_norm(o: Tensor, z: Tensor, m: Mixer, eps: float) -> Tensor:
    """``o [..., Hv, dv]`` (float32) → ``[..., Hv·dv]`` in ``z``'s dtype: per head ``rmsnorm(o) · w ·
    silu(z)``."""
    o = o.to(z.dtype).float()  # the rule's output in the model's dtype first, as transformers rounds it
    normed = (o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + eps)).to(z.dtype)
    zh = z.unflatten(-1, o.shape[-2:])
    return (m.norm * normed * F.silu(zh.float())).to(z.dtype).flatten(-2)


# -- the short convolution ----------------------------------------------------------------------------
def causal_conv(mixed: Tensor, weight: Tensor) -> Tensor:
    """``silu`` of the depthwise causal convolution of rows ``mixed [B, S, C]`` (zeros before the
    first column) with taps ``weight [C, K]``."""
    k = weight.shape[-1]
    out = F.conv1d(mixed.transpose(1, 2).to(weight.dtype), weight.unsqueeze(1), padding=k - 1, groups=weight.shape[0])
    return F.silu(out[..., : mixed.shape[1]]).transpose(1, 2).to(mixed.dtype)


def conv_window(mixed: Tensor, width: int) -> Tensor:
    """The last ``width`` columns of rows ``mixed [B, S, C]`` as ``[B, C, width]`` (zeros on the
    left when a row is shorter): the convolution's state after the prompt."""
    window = mixed.new_zeros(mixed.shape[0], mixed.shape[2], width)
    n = min(width, mixed.shape[1])
    if n:
        window[..., width - n:] = mixed[:, mixed.shape[1] - n:].transpose(1, 2)
    return window


def conv_step(x: Tensor, window: Tensor, weight: Tensor) -> Tensor:
    """One decode step: ``x [B, C]`` enters the window ``[B, C, W]`` (``W >= K − 1``, updated in
    place); returns ``silu`` of the convolution over the last ``K`` inputs, ``[B, C]``."""
    k = weight.shape[-1]
    full = torch.cat([window, x.unsqueeze(-1).to(window.dtype)], dim=-1)
    window.copy_(full[..., 1:])
    # the prefill's convolution on the last K inputs (accumulated as F.conv1d does, so bf16 rounds alike)
    out = F.conv1d(full[..., -k:].to(weight.dtype), weight.unsqueeze(1), groups=weight.shape[0])[..., 0]
    return F.silu(out).to(x.dtype)


# -- one layer's prefill and decode step -------------------------------------------------------------
def prefill(mixed: Tensor, z: Tensor, beta: Tensor, g: Tensor, valid: Tensor | None, m: Mixer, eps: float,
            chunk: int = CHUNK) -> tuple[Tensor, Tensor, Tensor]:
    """Left-padded rows (``valid bool [B, S]`` marks real tokens; None: all are) of :func:`project`'s
    outputs → ``(y [B, S, Hv·dv]`` for ``out_proj``, the convolution window ``[B, C, K − 1]``, the
    recurrent state ``[B, Hv, dk, dv]`` float32)``. Padding enters as zeros without decay."""
    if valid is not None:
        keep = valid[..., None]
        mixed, beta, g = (torch.where(keep, x, x.new_zeros(())) for x in (mixed, beta, g))
    q, k, v = split_heads(causal_conv(mixed, m.conv), m)
    o, state = chunked_delta_rule(q, k, v, g, beta, chunk=chunk)
    return gated_norm(o, z, m, eps), conv_window(mixed, m.conv.shape[-1] - 1), state


def decode_step(mixed: Tensor, z: Tensor, beta: Tensor, g: Tensor, window: Tensor, state: Tensor, m: Mixer,
                eps: float) -> Tensor:
    """One token per row (:func:`project`'s outputs ``[B, 1, ...]``) on the row's ``window`` and
    ``state``, both updated in place → ``y [B, 1, Hv·dv]``."""
    q, k, v = split_heads(conv_step(mixed[:, 0], window, m.conv), m)
    return gated_norm(delta_rule_step(q, k, v, g[:, 0], beta[:, 0], state), z[:, 0], m, eps)[:, None]


# -- the gated delta rule ---------------------------------------------------------------------------------
def recurrent_delta_rule(q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor,
                         state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The definition, token by token: ``q, k [B, S, H, dk]``, ``v [B, S, H, dv]``, ``g, beta [B, S, H]``
    (float32; q already scaled) → ``(o [B, S, H, dv], final state [B, H, dk, dv])``."""
    b, s, h, dk = k.shape
    state = q.new_zeros(b, h, dk, v.shape[-1]) if state is None else state.clone()
    out = []
    for t in range(s):
        state = state * g[:, t].exp()[..., None, None]
        kt = k[:, t]
        delta = beta[:, t, :, None] * (v[:, t] - (state * kt[..., None]).sum(-2))
        state = state + kt[..., None] * delta[..., None, :]
        out.append((state * q[:, t, :, :, None]).sum(-2))
    return torch.stack(out, dim=1), state


def delta_rule_step(q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, state: Tensor) -> Tensor:
    """One decode step on ``state [B, H, dk, dv]`` (float32, updated in place): ``q, k [B, H, dk]``,
    ``v [B, H, dv]``, ``g, beta [B, H]`` → ``o [B, H, dv]``."""
    state.mul_(g.exp()[..., None, None])
    delta = beta[..., None] * (v - (state * k[..., None]).sum(-2))
    state.add_(k[..., None] * delta[..., None, :])
    return (state * q[..., None]).sum(-2)


def chunked_delta_rule(q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, state: Tensor | None = None,
                       chunk: int = CHUNK) -> tuple[Tensor, Tensor]:
    """:func:`recurrent_delta_rule` in chunks of ``chunk`` tokens (same arguments and results).

    Within a chunk starting from state ``S₀``, with ``γ_i`` the decay accumulated from the chunk's start
    through token ``i``, the state after token ``i`` is ``γ_i S₀ + Σ_{j≤i} (γ_i/γ_j) k_j u_jᵀ`` where
    the corrected values ``u`` solve the unit lower-triangular system
    ``u_i + β_i Σ_{j<i} (γ_i/γ_j)(k_iᵀk_j) u_j = β_i v_i − β_i γ_i S₀ᵀ k_i``; so ``u = W − Y S₀`` with
    ``W, Y`` from one solve per chunk (no dependence on ``S₀``), and each chunk's outputs and final
    state are a few matmuls with ``S₀``.
    """
    b, s, h, dk = k.shape
    dv = v.shape[-1]
    pad = (-s) % chunk
    n = (s + pad) // chunk

    def chunks(x: Tensor) -> Tensor:  # [B, S, H, ...] → [B, H, n, chunk, ...], zero-padded at the end
        x = x.transpose(1, 2)
        x = F.pad(x, (0, 0) * (x.dim() - 3) + (0, pad))
        return x.reshape(b, h, n, chunk, *x.shape[3:])

    qc, kc, vc = chunks(q), chunks(k), chunks(v)
    gc, bc = chunks(g.unsqueeze(-1)).squeeze(-1), chunks(beta.unsqueeze(-1)).squeeze(-1)  # [B, H, n, chunk]
    cum = gc.cumsum(-1)  # log γ
    lower = torch.ones(chunk, chunk, dtype=torch.bool, device=q.device).tril()
    ratio = (cum[..., :, None] - cum[..., None, :]).masked_fill(~lower, float("-inf")).exp()  # γ_i / γ_j, j <= i
    eye = torch.eye(chunk, dtype=q.dtype, device=q.device)
    system = eye + (bc[..., None] * (kc @ kc.transpose(-1, -2)) * ratio).masked_fill(lower.logical_not() | eye.bool(), 0)
    w = torch.linalg.solve_triangular(system, bc[..., None] * vc, upper=False, unitriangular=True)
    y = torch.linalg.solve_triangular(system, (bc * cum.exp())[..., None] * kc, upper=False, unitriangular=True)
    attn = (qc @ kc.transpose(-1, -2)) * ratio  # [.., i, j]: (γ_i/γ_j) q_iᵀ k_j, j <= i
    q_decayed = qc * cum.exp()[..., None]  # γ_i q_i
    k_to_end = kc * (cum[..., -1:] - cum).exp()[..., None]  # (γ_C/γ_j) k_j
    state = q.new_zeros(b, h, dk, dv) if state is None else state.to(q.dtype)
    out = q.new_empty(b, h, n, chunk, dv)
    for c in range(n):
        u = w[:, :, c] - y[:, :, c] @ state
        out[:, :, c] = q_decayed[:, :, c] @ state + attn[:, :, c] @ u
        state = state * cum[:, :, c, -1].exp()[..., None, None] + k_to_end[:, :, c].transpose(-1, -2) @ u
    return out.reshape(b, h, n * chunk, dv)[:, :, :s].transpose(1, 2), state
