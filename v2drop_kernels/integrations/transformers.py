"""Pruning inside ``transformers``' own ``LlavaForConditionalGeneration``, so that its ``generate`` prunes.

    from v2drop_kernels.integrations.transformers import enable_pruning
    handle = enable_pruning(hf_model, V2Drop())      # hf_model.generate(...) now drops visual tokens
    handle.disable()                                 # back to the stock forward

How: the Llama language model's ``forward`` is replaced (on this instance only) by the package's
decoder loop (:class:`~v2drop_kernels.models.decoder.Decoder`) running on the model's own modules
and weights, and ``LlavaModel.forward`` is wrapped to note which prompt tokens are image tokens.
The HF ``DynamicCache`` carries the keys and values, one entry per token that reached each layer,
so its layers have different lengths after a drop; layer 0 is never pruned, so
``get_seq_length()`` still counts every prompt column, which is what ``generate`` expects. For each
layer the handle keeps the attention-mask column of every cached entry, to mask padding.

Supported: Llama decoders with default or linear RoPE, greedy or sampled ``generate`` one token per
step, left-padded batches whose rows hold the same number of image tokens (the padded contract).
"""

from __future__ import annotations

import types

import torch
from torch import Tensor

from ..models.config import TextConfig
from ..models.decoder import Decoder
from ..models.policies import Policy
from ..models.pruning import PrefillTrace, PruningContext
from ..models.tokens import Tokens


class _CacheAdapter:
    """The decoder's cache interface (``store``/``append``) over an HF ``DynamicCache``."""

    def __init__(self, hf_cache, num_layers: int):
        self.hf = hf_cache
        self.columns: list[Tensor | None] = [None] * num_layers  # attention-mask column of each entry
        self.mask: Tensor | None = None  # the step's 2D attention mask (None: no padding)
        self.mask_width = 0  # columns of that mask: the new token's column is mask_width - 1

    def store(self, layer: int, k: Tensor, v: Tensor, tokens: Tokens) -> None:
        self.hf.update(k, v, layer)
        self.columns[layer] = tokens.orig_pos

    def append(self, layer: int, k: Tensor, v: Tensor):
        keys, values = self.hf.update(k, v, layer)
        cols = self.columns[layer]
        new = torch.full((cols.shape[0], 1), self.mask_width - 1, dtype=cols.dtype, device=cols.device)
        self.columns[layer] = cols = torch.cat([cols, new], dim=1)
        valid = None if self.mask is None else self.mask.bool().gather(1, cols)
        return keys, values, valid


class PruningHandle:
    """Returned by :func:`enable_pruning`; ``disable()`` restores the model."""

    def __init__(self, model, policy: Policy, backend: str | None):
        from transformers import DynamicCache

        self.model, self.policy, self.backend = model, policy, backend
        self.lm = model.model.language_model
        self.cfg = TextConfig.from_hf(model.config.text_config.to_dict())
        self.image_token_id = model.config.image_token_id
        self.decoder = Decoder(self.lm, self.cfg, fuse=False)  # transformers' modules stay as they are
        self.trace: PrefillTrace | None = None  # of the last prefill
        self._dynamic_cache = DynamicCache
        self._input_ids: Tensor | None = None
        self._adapters: dict[int, _CacheAdapter] = {}

    # the wrapped LlavaModel.forward: remember which prompt tokens are image tokens
    def _llava_forward(self, original):
        def forward(*args, input_ids=None, **kwargs):
            self._input_ids = input_ids
            return original(*args, input_ids=input_ids, **kwargs)

        return forward

    def _lm_forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                    inputs_embeds=None, use_cache=None, **kwargs):
        from transformers.modeling_outputs import BaseModelOutputWithPast

        if inputs_embeds is None:
            inputs_embeds = self.lm.embed_tokens(input_ids)
        if past_key_values is None:
            past_key_values = self._dynamic_cache(config=self.model.config.text_config)
        if attention_mask is not None and attention_mask.ndim != 2:
            raise NotImplementedError("v2drop pruning needs a 2D attention mask (no static/compiled cache)")
        b, s, _ = inputs_embeds.shape
        device = inputs_embeds.device
        if position_ids is None:
            start = past_key_values.get_seq_length()
            position_ids = torch.arange(start, start + s, device=device).expand(b, -1)
        position_ids = position_ids.expand(b, -1)
        if past_key_values.get_seq_length() == 0:  # prefill: prune here
            if self._input_ids is None or self._input_ids.shape != (b, s):
                raise NotImplementedError("v2drop pruning needs input_ids (not inputs_embeds) in the prefill call")
            vis = self._input_ids == self.image_token_id
            counts = vis.sum(1).tolist()
            if len(set(counts)) > 1:
                raise ValueError(f"v2drop pruning in transformers needs the same number of image tokens per row, got {counts}")
            valid = None if attention_mask is None or bool(attention_mask.all()) else attention_mask.bool()
            cols = torch.arange(s, device=device).expand(b, -1)
            tokens = Tokens(inputs_embeds, position_ids, cols, vis, counts, valid=valid)
            adapter = _CacheAdapter(past_key_values, len(self.lm.layers))
            self._adapters = {id(past_key_values): adapter}
            ctx = PruningContext(self.backend)
            self.trace = ctx.trace
            hidden = self.decoder.prefill(tokens, self.policy, adapter, ctx).hidden
        else:
            if s != 1:
                raise NotImplementedError("v2drop pruning decodes one token per step (no assisted/speculative decoding)")
            adapter = self._adapters.get(id(past_key_values))
            if adapter is None:
                raise RuntimeError("this cache was not filled by a pruned prefill; call generate again")
            adapter.mask_width = attention_mask.shape[1] if attention_mask is not None else adapter.columns[0].shape[1] + 1
            adapter.mask = None if attention_mask is None or bool(attention_mask.all()) else attention_mask
            hidden = self.decoder.decode(inputs_embeds, position_ids, adapter)
        return BaseModelOutputWithPast(last_hidden_state=hidden, past_key_values=past_key_values)

    def layer_columns(self) -> list[Tensor]:
        """Per layer, the attention-mask column of every entry in the last generation's cache."""
        adapter = next(iter(self._adapters.values()))
        return list(adapter.columns)

    def disable(self) -> None:
        for module in (self.lm, self.model.model):
            module.__dict__.pop("forward", None)
        self.model._v2drop_handle = None


def enable_pruning(model, policy: Policy, backend: str | None = None) -> PruningHandle:
    """Makes ``model`` (a ``transformers`` ``LlavaForConditionalGeneration`` with a Llama decoder)
    prune visual tokens with ``policy`` in every forward and ``generate`` call.

    ``backend`` picks the ops' backend (``None``: the fastest for the model's device). Calling it
    again replaces the policy. Returns a handle whose ``disable()`` restores the stock forward.
    """
    if getattr(model, "_v2drop_handle", None) is not None:
        model._v2drop_handle.disable()
    if model.config.text_config.model_type != "llama":
        raise NotImplementedError(f"pruning is implemented for Llama decoders, not {model.config.text_config.model_type!r}")
    handle = PruningHandle(model, policy, backend)
    policy.check(len(handle.lm.layers))
    if any(layer == 0 for layer in policy.layers):
        raise ValueError("layer 0 cannot prune in transformers (the cache length is read from layer 0)")
    model.model.forward = handle._llava_forward(type(model.model).forward.__get__(model.model))
    handle.lm.forward = types.MethodType(lambda _self, *a, **kw: handle._lm_forward(*a, **kw), handle.lm)
    model._v2drop_handle = handle
    return handle
