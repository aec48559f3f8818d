"""Pruning inside ``transformers``' own vision-language models, so that their ``generate`` prunes.

    from v2drop_kernels.integrations.transformers import enable_pruning
    handle = enable_pruning(hf_model, V2Drop())      # hf_model.generate(...) now drops visual tokens
    handle.disable()                                 # back to the stock forward

Supported: ``LlavaForConditionalGeneration`` and ``LlavaNextForConditionalGeneration`` (Llama
decoder), ``LlavaOnevisionForConditionalGeneration`` (Qwen2 decoder; images and videos),
``Qwen2VLForConditionalGeneration`` and ``Qwen2_5_VLForConditionalGeneration`` (images and
videos; M-RoPE position ids), ``Qwen3VLForConditionalGeneration`` (images and videos; DeepStack: the
features transformers hands its language model are added to the surviving visual tokens here),
``Qwen3_5ForConditionalGeneration`` (images and videos; its linear-attention layers keep their
states in transformers' hybrid cache, through its conv / recurrent state API).

How: the language model's ``forward`` is replaced (on this instance only) by the package's decoder
loop (:class:`~v2drop_kernels.models.decoder.Decoder`) running on the model's own modules and
weights, and the multimodal model's ``forward`` is wrapped to note which prompt tokens are image or
video tokens. Only documented interfaces are used: the language model's call (inputs embeddings,
2D attention mask, position ids), the ``Cache`` API (``update``, ``get_seq_length``) and the modules'
weights; masks, positions and RoPE tables are computed here, not taken from ``transformers``' helpers.

The cache carries the keys and values of the tokens that reached each layer, so its layers have
different lengths after a drop. ``get_seq_length()`` reads the first attention layer (layer 0, or a
hybrid decoder's first full-attention layer), which must count every prompt column, as ``generate``
expects: layer 0 is never pruned, and a hybrid decoder's first attention layer, when a drop came
before it, keeps its entries at full width with holes where the dropped tokens were. For each
layer the handle keeps the attention-mask column of every cached entry (``-1``: a hole) and so
masks padding itself.

Batches: left-padded rows (what ``generate`` takes). Rows whose visual-token counts differ (Qwen's
images of different sizes) are pruned in the packed layout, then laid back into the cache row by
row, shorter rows leaving masked holes.
"""

from __future__ import annotations

import contextvars
import dataclasses
import types

import torch
from torch import Tensor

from ..models.config import TextConfig
from ..models.cache import row_positions
from ..models.decoder import Decoder
from ..models.policies import Policy
from ..models.pruning import PrefillTrace, PruningContext
from ..models.tokens import Tokens, pack_left_padded, packed_coordinates, unpack_left_padded

# The prompt's token ids while the wrapped multimodal forward runs (the language model's call inside
# it gets embeddings only): set and reset around that call, so nothing outlives it.
_PROMPT_IDS: contextvars.ContextVar[Tensor | None] = contextvars.ContextVar("v2drop_prompt_ids", default=None)

# model_type -> (text model types, tokens that are visual)
_SUPPORTED = {
    "llava": (("llama",), ("image_token_id",)),
    "llava_next": (("llama",), ("image_token_id",)),
    "llava_onevision": (("qwen2",), ("image_token_id", "video_token_id")),
    "qwen2_vl": (("qwen2_vl_text", "qwen2_vl"), ("image_token_id", "video_token_id")),
    "qwen2_5_vl": (("qwen2_5_vl_text", "qwen2_5_vl"), ("image_token_id", "video_token_id")),
    "qwen3_vl": (("qwen3_vl_text",), ("image_token_id", "video_token_id")),
    "qwen3_5": (("qwen3_5_text",), ("image_token_id", "video_token_id")),
}


class _CacheAdapter:
    """The decoder's cache interface (``store``/``append``) over a ``transformers`` ``Cache``."""

    def __init__(self, hf_cache, num_layers: int, pad: Tensor, width: int, length_layer: int = 0):
        self.hf = hf_cache
        self.pad = pad  # int64 [B]: left padding of each row in the prompt
        self.width = width  # the prompt's columns: the length layer holds that many entries
        self.length_layer = length_layer  # the layer whose length get_seq_length() reports (its first attention layer)
        self.columns: list[Tensor | None] = [None] * num_layers  # attention-mask column of each entry (-1: hole)
        self.mask: Tensor | None = None  # the step's 2D attention mask (None: no padding)
        self.mask_width = 0  # columns of that mask: the new token's column is mask_width - 1
        self.holes = False  # whether some prefill entries are holes (packed rows of different lengths)

    def store(self, layer: int, k: Tensor, v: Tensor, tokens: Tokens) -> None:
        if tokens.packed:  # row r's entries go to columns [0, lengths[r]); the rest are holes
            b, (h, d) = tokens.batch, k.shape[1:]
            width = self.width if layer == self.length_layer else tokens.max_len  # every row may be padded (pad_to_multiple_of)
            keys, values = k.new_zeros(b, h, width, d), v.new_zeros(b, h, width, d)
            cols = torch.full((b, width), -1, dtype=torch.long, device=k.device)
            rows, at = packed_coordinates(tokens.lengths, k.device)
            keys[rows, :, at], values[rows, :, at] = k, v
            cols[rows, at] = tokens.orig_pos + self.pad[rows]
            k, v = keys, values
            self.holes = self.holes or min(tokens.lengths) < width
        else:
            cols = torch.where(tokens.orig_pos >= 0, tokens.orig_pos + self.pad[:, None], -1)
            short = self.width - k.shape[2] if layer == self.length_layer else 0
            if short:  # tokens were dropped before the length layer: holes up to the prompt's width
                k, v = (torch.nn.functional.pad(x, (0, 0, 0, short)) for x in (k, v))
                cols = torch.nn.functional.pad(cols, (0, short), value=-1)
                self.holes = True
        self.hf.update(k, v, layer)
        self.columns[layer] = cols

    def store_state(self, layer: int, window: Tensor, state: Tensor, tokens: Tokens) -> None:
        """A linear-attention layer's state after prefill, into transformers' cache (its convolution
        state holds the last ``K`` inputs, one more than the package's window); its columns: the
        attention-mask column of each token the layer saw (-1: none), for :meth:`PruningHandle.layer_columns`."""
        self.hf.update_conv_state(torch.nn.functional.pad(window, (1, 0)), layer, conv_kernel_size=window.shape[-1] + 1)
        self.hf.update_recurrent_state(state, layer)
        orig = row_positions(tokens)
        self.columns[layer] = torch.where(orig >= 0, orig + self.pad[:, None], -1)

    def linear_state(self, layer: int) -> tuple[Tensor, Tensor]:
        """The cache's own state tensors of a linear-attention layer, which a decode step updates in place."""
        return self.hf.get_conv_state(layer), self.hf.get_recurrent_state(layer)

    def append(self, layer: int, k: Tensor, v: Tensor):
        keys, values = self.hf.update(k, v, layer)
        cols = self.columns[layer]
        new = torch.full((cols.shape[0], 1), self.mask_width - 1, dtype=cols.dtype, device=cols.device)
        self.columns[layer] = cols = torch.cat([cols, new], dim=1)
        if self.mask is None and not self.holes:
            return keys, values, None
        valid = cols >= 0
        if self.mask is not None:
            valid = valid & self.mask.bool().gather(1, cols.clamp_min(0))
        return keys, values, valid


class PruningHandle:
    """Returned by :func:`enable_pruning`; ``disable()`` restores the model."""

    def __init__(self, model, policy: Policy, backend: str | None):
        from transformers import DynamicCache

        self.model, self.policy, self.backend = model, policy, backend
        self.lm = model.model.language_model
        self.cfg = TextConfig.from_hf(model.config.text_config.to_dict())
        self.visual_ids = [getattr(model.config, name) for name in _SUPPORTED[model.config.model_type][1]]
        self.decoder = Decoder(self.lm, self.cfg)  # unfused: transformers' modules stay as they are
        self.trace: PrefillTrace | None = None  # of the last prefill
        self._dynamic_cache = DynamicCache
        from transformers.modeling_outputs import BaseModelOutputWithPast

        # transformers >= 5.24 passes and returns the cache as `cache`, earlier releases as `past_key_values`
        fields = {f.name for f in dataclasses.fields(BaseModelOutputWithPast)}
        self._cache_field = "cache" if "cache" in fields else "past_key_values"
        self._last: _CacheAdapter | None = None  # the last prefill's cache adapter (layer_columns)

    # the wrapped multimodal forward: the prompt's token ids, for the language model's call inside it
    # (which gets only embeddings), for the duration of that call only
    def _outer_forward(self, original):
        def forward(*args, input_ids=None, **kwargs):
            if input_ids is None and args:  # passed positionally (LLaVA-NeXT's outer forward does): the first parameter
                input_ids, args = args[0], args[1:]
            scope = _PROMPT_IDS.set(input_ids)
            try:
                return original(*args, input_ids=input_ids, **kwargs)
            finally:
                _PROMPT_IDS.reset(scope)

        return forward

    def _planes(self, position_ids: Tensor | None, b: int, s: int, start: int, device) -> Tensor:
        """Position ids as the decoder takes them: ``[B, S]``, or ``[3, B, S]`` for M-RoPE (Qwen's
        ``[4, B, S]`` carries text positions first; they only build masks, which we do ourselves)."""
        if position_ids is None:
            position_ids = torch.arange(start, start + s, device=device).expand(b, -1)
        if self.cfg.mrope_section is None:
            return position_ids.expand(b, -1)
        if position_ids.ndim == 3 and position_ids.shape[0] == 4:
            position_ids = position_ids[1:]
        if position_ids.ndim == 2:
            position_ids = position_ids.expand(3, b, -1)
        return position_ids.expand(3, b, -1)

    def _prefill_tokens(self, hidden: Tensor, position_ids: Tensor, attention_mask: Tensor | None,
                        deepstack: list[Tensor] | None = None, deepstack_mask: Tensor | None = None) -> tuple[Tokens, Tensor]:
        """The prefill's :class:`Tokens` (padded, or packed when rows differ in visual tokens) and
        each row's left padding. ``deepstack``: Qwen3-VL's DeepStack features as its language model
        gets them (one ``[visual tokens, hidden]`` per level, the visual tokens in row-major order, which
        ``deepstack_mask`` marks)."""
        b, s, _ = hidden.shape
        input_ids = _PROMPT_IDS.get()
        if input_ids is None or input_ids.shape != (b, s):
            raise NotImplementedError("v2drop pruning needs input_ids (not inputs_embeds) in the prefill call")
        vis = torch.isin(input_ids, torch.tensor(self.visual_ids, device=hidden.device))
        real = torch.ones(b, s, dtype=torch.bool, device=hidden.device) if attention_mask is None else attention_mask.bool()
        if not bool((real[:, 1:].int() >= real[:, :-1].int()).all()):  # 0…0 1…1 in every row
            raise NotImplementedError("v2drop pruning needs left padding (padding_side='left')")
        counts = (vis & real).sum(1).tolist()
        lengths = real.sum(1).tolist()
        pad = s - real.sum(1)
        index = real.long().cumsum(1) - 1  # index in the row's own prompt; -1 on padding
        valid = None if attention_mask is None or bool(real.all()) else real
        stack = rows = None
        if deepstack is not None:  # row r of level l belongs to the r-th visual token, row-major
            stack = torch.stack(list(deepstack))
            rows = (vis.flatten().long().cumsum(0) - 1).clamp_min(0).view(b, s)
            if deepstack_mask is None or not torch.equal(deepstack_mask.to(vis.device).bool(), vis):
                raise RuntimeError("v2drop pruning: the DeepStack features are not those of this prompt's visual tokens")
        tokens = Tokens(hidden, position_ids, index, vis, counts, valid=valid, deepstack=stack, visual_row=rows)
        return (tokens if len(set(counts)) == 1 else pack_left_padded(tokens, lengths)), pad

    def _lm_forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                    inputs_embeds=None, use_cache=None, cache=None, visual_pos_masks=None, deepstack_visual_embeds=None,
                    **kwargs):
        from transformers.modeling_outputs import BaseModelOutputWithPast

        if cache is not None:  # transformers >= 5.24's name
            past_key_values = cache

        if inputs_embeds is None:
            inputs_embeds = self.lm.embed_tokens(input_ids)
        if past_key_values is None:
            past_key_values = self._dynamic_cache(config=self.model.config.text_config)
        if isinstance(attention_mask, dict) or (attention_mask is not None and attention_mask.ndim != 2):
            raise NotImplementedError("v2drop pruning needs a 2D attention mask (no static/compiled cache)")
        b, s, _ = inputs_embeds.shape
        device = inputs_embeds.device
        past = past_key_values.get_seq_length()
        position_ids = self._planes(position_ids, b, s, past, device)
        if attention_mask is not None and attention_mask.shape[1] != past + s:
            raise RuntimeError(f"v2drop pruning: an attention mask of {attention_mask.shape[1]} columns for {past} cached "
                               f"+ {s} new tokens (was the cache passed under a name this integration does not know?)")
        if past == 0:  # prefill: prune here
            tokens, pad = self._prefill_tokens(inputs_embeds, position_ids, attention_mask, deepstack_visual_embeds,
                                               visual_pos_masks)
            adapter = _CacheAdapter(past_key_values, len(self.lm.layers), pad, s, self.cfg.attention_layers[0])
            past_key_values._v2drop_adapter = self._last = adapter  # the decode steps find it on their cache
            ctx = PruningContext(self.backend)
            self.trace = ctx.trace
            out = self.decoder.prefill(tokens, self.policy, adapter, ctx)
            hidden = out.hidden if not out.packed else unpack_left_padded(out)
        else:
            if s != 1:
                raise NotImplementedError("v2drop pruning decodes one token per step (no assisted/speculative decoding)")
            adapter = getattr(past_key_values, "_v2drop_adapter", None)
            if adapter is None or adapter is not self._last:
                raise RuntimeError("this cache was not filled by a pruned prefill; call generate again")
            adapter.mask_width = attention_mask.shape[1] if attention_mask is not None else past + 1
            adapter.mask = None if attention_mask is None or bool(attention_mask.all()) else attention_mask
            hidden = self.decoder.decode(inputs_embeds, position_ids, adapter, planes=position_ids.ndim == 3)
        return BaseModelOutputWithPast(last_hidden_state=hidden, **{self._cache_field: past_key_values})

    def layer_columns(self) -> list[Tensor]:
        """Per layer, the attention-mask column of every entry in the last generation's cache (-1: a hole;
        a linear-attention layer: of every prompt token it saw)."""
        return list(self._last.columns)

    def disable(self) -> None:
        for module in (self.lm, self.model.model):
            module.__dict__.pop("forward", None)
        self.model._v2drop_handle = None


def enable_pruning(model, policy: Policy, backend: str | None = None) -> PruningHandle:
    """Makes ``model`` prune visual tokens with ``policy`` in every forward and ``generate`` call:
    a ``transformers`` ``LlavaForConditionalGeneration`` or ``LlavaNextForConditionalGeneration``
    with a Llama decoder, ``LlavaOnevisionForConditionalGeneration`` with a Qwen2 decoder,
    ``Qwen2VLForConditionalGeneration``, ``Qwen2_5_VLForConditionalGeneration``,
    ``Qwen3VLForConditionalGeneration`` or ``Qwen3_5ForConditionalGeneration``.

    ``backend`` picks the ops' backend (``None``: the fastest for the model's device). Calling it
    again replaces the policy. Returns a handle whose ``disable()`` restores the stock forward.
    """
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in _SUPPORTED:
        raise NotImplementedError(f"pruning is implemented for {sorted(_SUPPORTED)} models, not {type(model).__name__} "
                                  f"(model_type {model_type!r})")
    text_type = model.config.text_config.model_type
    if text_type not in _SUPPORTED[model_type][0]:
        raise NotImplementedError(f"pruning in {model_type} is implemented for {list(_SUPPORTED[model_type][0])} "
                                  f"decoders, not {text_type!r}")
    if getattr(model, "_v2drop_handle", None) is not None:
        model._v2drop_handle.disable()
    handle = PruningHandle(model, policy, backend)
    policy.check(len(handle.lm.layers), handle.cfg.attention_layers)  # layers 1 .. L-1 (see _CacheAdapter.length_layer)
    model.model.forward = handle._outer_forward(type(model.model).forward.__get__(model.model))
    handle.lm.forward = types.MethodType(lambda _self, *a, **kw: handle._lm_forward(*a, **kw), handle.lm)
    model._v2drop_handle = handle
    return handle
