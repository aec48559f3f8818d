"""Qwen3-VL in plain PyTorch: ``transformers``' Qwen3-VL vision tower (with its DeepStack mergers) →
a Qwen3 decoder (no biases, per-head q/k norms, interleaved M-RoPE) to whose visual tokens the
DeepStack features are added after the first layers.

    model = load_model("path/to/Qwen3-VL-8B-Instruct", dtype=torch.bfloat16, device="cuda")
    out = model.generate(prompts, pixel_values=pixels, image_grid_thw=grids, policy=V2Drop(schedule="qwen2-vl"))

Inputs are what the HF processor gives, as for :class:`~v2drop_kernels.models.qwen_vl.QwenVL`. What
differs:

- DeepStack: the tower gives, besides the merger's features, one more ``[tokens, hidden]`` per
  ``vision_config.deepstack_visual_indexes`` entry; after decoder layer ``i`` (``i`` below their
  count) every visual token still present gains its row of level ``i``. A drop before or inside one
  of those layers drops the matching rows with the tokens (their rows travel with them,
  ``Tokens.visual_row``), and V²Drop's score before layer ``l`` compares layer inputs that include
  what DeepStack added after layer ``l − 1``.
- positions: the processor writes a timestamp (text) before each frame of a video, so each grid
  step of ``video_grid_thw`` is its own span of video tokens with grid ``(1, h, w)``: the temporal
  ids do not step within a span, and the text after a span continues from ``p + max(h, w) / merge``
  (``transformers``' ``get_rope_index``). Text, images: as Qwen2-VL.
- RoPE: interleaved sections (:class:`~v2drop_kernels.models.llama.Rotary`).

No V²Drop schedule is published for Qwen3-VL; ``v2drop_schedule`` is the official Qwen2-VL port's
(``"qwen2-vl"``), a choice of this package. The MoE variants (``qwen3_vl_moe``) are refused.
"""

from __future__ import annotations

import torch

from .qwen_vl import QwenVL


class Qwen3VL(QwenVL):
    """Qwen3-VL: :class:`~v2drop_kernels.models.qwen_vl.QwenVL` with the DeepStack features (the
    tower's, through :meth:`~v2drop_kernels.models.qwen_vl.QwenVL.encode`) and a span per video frame."""

    v2drop_schedule = "qwen2-vl"  # no published Qwen3-VL schedule: the Qwen2-VL port's (see the module docstring)

    def _video_grids(self, video_grid_thw, second_per_grid_ts) -> tuple[list, None]:
        """One span per grid step of each video (a timestamp separates the frames): ``(1, h, w)``."""
        if second_per_grid_ts is not None:
            raise ValueError("second_per_grid_ts is a Qwen2.5-VL input; Qwen3-VL writes timestamps into the prompt")
        grids = [] if video_grid_thw is None else torch.as_tensor(video_grid_thw).tolist()
        return [[1, h, w] for t, h, w in grids for _ in range(int(t))], None
