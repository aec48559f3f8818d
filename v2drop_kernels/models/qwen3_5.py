"""Qwen3.5 in plain PyTorch: ``transformers``' Qwen3.5 vision tower → a hybrid decoder, three Gated
DeltaNet (linear-attention) layers to one gated full-attention layer.

    model = load_model("path/to/Qwen3.5-9B", dtype=torch.bfloat16, device="cuda")
    out = model.generate(prompts, pixel_values=pixels, image_grid_thw=grids, policy=V2Drop(schedule="qwen2-vl"))

Inputs and positions are Qwen3-VL's (:class:`~v2drop_kernels.models.qwen3_vl.Qwen3VL`: timestamped
video frames, one span per grid step, interleaved M-RoPE), without DeepStack. The decoder
(:class:`~v2drop_kernels.models.config.TextConfig` with ``layer_types``):

- linear-attention layers (:mod:`~v2drop_kernels.models.linear_attention`) run their recurrence over
  the tokens that reach them; a drop before one saves its compute, but no memory: its state has a
  fixed size. The full-attention layers keep fewer KV entries, as in any other model;
- full-attention layers: per-head q/k norms, partial rotary (a quarter of each head by default),
  a sigmoid gate on the attention output from ``q_proj``;
- RMSNorms scale by ``1 + weight``.

Pruning: V²Drop scores by hidden states and so works before any layer; PyramidDrop and FastV rank by
a layer's attention scores, which only the full-attention layers have (the policies refuse a
schedule that asks a linear-attention layer for them). No schedule is published for Qwen3.5:
``v2drop_schedule`` is the official Qwen2-VL port's (``"qwen2-vl"``: before layers 3, 16, 22);
for 32 layers whose every fourth is full attention (3, 7, 11, ...), this package's choices for the
other two are ``pdrop_layers`` (7, 15, 23: the full-attention layers nearest PyramidDrop's 8, 16,
24) and ``fastv_k`` 4 (ranked by layer 3, the first full-attention layer). They are fixed layer
numbers, chosen for 32 layers: for another depth or layer pattern pass the layers (``Policy.check``
refuses any that name a linear-attention layer's scores). The MoE variants (``qwen3_5_moe``) are
refused.
"""

from __future__ import annotations

from .qwen3_vl import Qwen3VL


class Qwen3_5(Qwen3VL):
    """Qwen3.5: :class:`~v2drop_kernels.models.qwen3_vl.Qwen3VL`'s inputs (no DeepStack: its tower has
    none) on the hybrid decoder the config describes."""

    v2drop_schedule = "qwen2-vl"  # no published Qwen3.5 schedule: the Qwen2-VL port's (see the module docstring)
    pdrop_layers = (7, 15, 23)  # full-attention layers of the 32-layer models (see the module docstring)
    fastv_k = 4
