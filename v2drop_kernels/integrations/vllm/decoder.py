"""vLLM's decoder loop with the package's pruning policy between its layers.

vLLM's language models (``Qwen2Model`` in Qwen2-VL / Qwen2.5-VL, ``LlamaModel`` in LLaVA) run the
step's requests flattened: ``hidden [T, D]`` with the positions ``[T]`` (M-RoPE: ``[3, T]``), each
layer returning ``(hidden, residual)`` whose sum is the residual stream. :class:`PrunedDecoder`
replaces that model's ``forward`` (on the instance). In a step where some request drops visual tokens
it runs the layers itself, as the package's decoder does
(:meth:`~v2drop_kernels.models.decoder.Decoder.prefill`), calling the policy's hooks on the step's
requests as packed rows (:class:`~v2drop_kernels.models.tokens.Tokens`: ``cu_seqlens`` is vLLM's
``query_start_loc``), so the same policy objects and ops decide what is kept:

- before layer ``i`` the layer's input ``x = hidden + residual`` goes to ``policy.before_layer``
  (V²Drop's fused ``variation_drop_varlen``; FastV's selection), with what ``policy.needs(i)``
  asked for: an earlier layer's input (V²Drop) or last-token attention (FastV);
- where the policy ranks by attention (``policy.needs_qk(i)``: PyramidDrop at its layers, FastV
  at ``K - 1``), layer ``i``'s own input norm, q/k projections and RoPE give ``q, k`` of every
  token (computed once more here; the layer computes its own for the survivors);
- a hook's drop decision is applied by the package (``apply_drop``); the survivors continue as
  ``(x, None)`` with their original positions.

Every other step (decode, text, a prefill chunk before its window) runs vLLM's own ``forward``.
The layers' attention reads the pruned stage's metadata (its tokens, slots and lengths) that the
model runner built for the step. The output goes back to the step's ``[T, D]`` rows (the dropped
rows zero), each request's last row holding its last survivor's state: what vLLM samples from.
"""

from __future__ import annotations

import json
import os
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn

from ...models.dropping import apply_drop
from ...models.policies.base import Handover
from ...models.pruning import PruningContext
from ...models.tokens import Tokens
from .plan import PruningSchedule, StepPlan

_LAYER_PARTS = ("input_layernorm", "self_attn")
_ATTENTION_PARTS = ("qkv_proj", "rotary_emb", "q_size", "kv_size", "num_heads", "num_kv_heads", "head_dim")


class DeviceStep:
    """A step's plan with the device tensors the decoder needs: which of the step's tokens are
    visual, and the step's ``query_start_loc`` (int32 ``[B + 1]``)."""

    def __init__(self, plan: StepPlan, vis_mask: Tensor, cu_seqlens: Tensor):
        self.plan, self.vis_mask, self.cu_seqlens = plan, vis_mask, cu_seqlens


class KeptTrace:
    """Writes, per drop, the prompt index of every visual token each request kept (one JSON line per
    request and drop layer) to ``<folder>/rank<rank>.jsonl``. Reads them back from the device."""

    def __init__(self, folder: str, rank: int):
        os.makedirs(folder, exist_ok=True)
        self.path = os.path.join(folder, f"rank{rank}.jsonl")

    def record(self, layer: int, tokens: Tokens, step: StepPlan) -> None:
        index = tokens.orig_pos.cpu().numpy()
        visual = tokens.vis_mask.cpu().numpy()
        starts = np.concatenate([[0], np.cumsum(step.lengths)])
        with open(self.path, "a") as out:
            for row, (start, end) in enumerate(zip(tokens.bounds[:-1], tokens.bounds[1:])):
                if step.num_visual[row]:
                    kept = index[start:end][visual[start:end]] - starts[row] + step.computed[row]
                    out.write(json.dumps({"request": step.req_ids[row], "layer": layer, "kept": kept.tolist()}) + "\n")


def query_key(layer: nn.Module, x: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
    """Layer ``layer``'s ``q [T, H, Dh]`` and ``k [T, Hkv, Dh]`` (this rank's heads, RoPE applied) for
    its input ``x [T, D]``: its input norm, q/k projections and rotary embedding, as its attention
    computes them."""
    attn = layer.self_attn
    qkv, _ = attn.qkv_proj(layer.input_layernorm(x))
    q, k, _ = qkv.split([attn.q_size, attn.kv_size, attn.kv_size], dim=-1)
    q, k = attn.rotary_emb(positions, q, k)
    return q.reshape(-1, attn.num_heads, attn.head_dim), k.reshape(-1, attn.num_kv_heads, attn.head_dim)


class PrunedDecoder:
    """Installs itself as ``decoder.forward``. ``current_step()`` gives the running step
    (``None`` in vLLM's dummy runs); ``all_ranks_mean`` averages attention scores over the
    tensor-parallel ranks (``None`` without tensor parallelism)."""

    def __init__(self, decoder: nn.Module, schedule: PruningSchedule, current_step: Callable[[], DeviceStep | None],
                 all_ranks_mean: Callable[[Tensor], Tensor] | None = None, trace: KeptTrace | None = None):
        missing = [name for name in ("layers", "norm", "embed_input_ids") if not hasattr(decoder, name)]
        for layer in getattr(decoder, "layers", []):
            missing += [name for name in _LAYER_PARTS if not hasattr(layer, name)]
            missing += [f"self_attn.{name}" for name in _ATTENTION_PARTS if not hasattr(getattr(layer, "self_attn", None), name)]
            attn = getattr(layer, "self_attn", None)
            if getattr(attn, "qk_norm", False) or hasattr(attn, "q_norm"):  # Qwen3's per-head q/k norms
                missing.append("a decoder without q/k norms")
        if missing:
            raise NotImplementedError(f"v2drop: {type(decoder).__name__} lacks {sorted(set(missing))}, which pruning uses")
        if len(decoder.layers) != schedule.num_layers:
            raise ValueError(f"v2drop: the decoder has {len(decoder.layers)} layers, its config {schedule.num_layers}")
        self.decoder, self.schedule, self.current_step = decoder, schedule, current_step
        self.all_ranks_mean, self.trace = all_ranks_mean, trace
        self.stock_forward = decoder.forward
        decoder.forward = self.forward

    def forward(self, input_ids: Tensor | None, positions: Tensor, intermediate_tensors=None,
                inputs_embeds: Tensor | None = None, **kwargs):
        step = self.current_step()
        if step is None or not step.plan.drops:
            return self.stock_forward(input_ids, positions, intermediate_tensors, inputs_embeds, **kwargs)
        if intermediate_tensors is not None or kwargs:
            raise NotImplementedError("v2drop: pruning runs the whole decoder in one rank (no pipeline stages, "
                                      "no auxiliary hidden states)")
        decoder, policy = self.decoder, self.schedule.policy
        hidden = inputs_embeds if inputs_embeds is not None else decoder.embed_input_ids(input_ids)
        residual = None
        ctx = PruningContext(all_ranks_mean=self.all_ranks_mean)
        tokens = Tokens(hidden, positions, torch.arange(hidden.shape[0], device=hidden.device), step.vis_mask,
                        list(step.plan.num_visual), cu_seqlens=step.cu_seqlens, lengths=list(step.plan.lengths))
        handover = Handover(policy)
        for i, layer in enumerate(decoder.layers):
            if policy.keeps_input(i) or i in policy.layers or policy.needs_qk(i):
                tokens.hidden = hidden if residual is None else hidden + residual  # the layer's input
                before = tokens
                drop = handover.before_layer(i, tokens, ctx)
                if drop is not None:
                    tokens = apply_drop(tokens, drop)[0]
                if policy.needs_qk(i):
                    q, k = query_key(layer, tokens.hidden, tokens.position_ids)
                    drop = handover.inside_attention(i, tokens, q, k, ctx)
                    if drop is not None:
                        tokens = apply_drop(tokens, drop)[0]
                if tokens is not before:  # a drop: the survivors go on as the residual stream
                    hidden, residual = tokens.hidden, None
                    if self.trace is not None:
                        self.trace.record(i, tokens, step.plan)
                if policy.keeps_input(i):  # vLLM's fused add-norm may update the layer's input in place (CUDA)
                    handover.keep_input(i, tokens.hidden.clone() if residual is None else tokens.hidden)
            hidden, residual = layer(tokens.position_ids, hidden, residual)
        hidden, _ = decoder.norm(hidden, residual)
        return self._step_rows(hidden, tokens, step)

    @staticmethod
    def _step_rows(hidden: Tensor, tokens: Tokens, step: DeviceStep) -> Tensor:
        """The survivors' final states at their rows of the step (``[T, D]``), and each request's last
        survivor's at the request's last row."""
        out = hidden.new_zeros(step.vis_mask.shape[0], hidden.shape[-1])
        out.index_copy_(0, tokens.orig_pos, hidden)
        out.index_copy_(0, step.cu_seqlens[1:].long() - 1, hidden.index_select(0, tokens.last_index()))
        return out
