"""What every vision-language model of this package shares, written once: the language model, LM
head, RoPE and decoder; the prefill tokens of a batch of prompts in both layouts (left-padded or
packed), with the visual features written over their tokens; the prefill logits; greedy generation
(:class:`~v2drop_kernels.models.generation.GenerativeModel`).

An architecture is a subclass holding only what differs (``llava.py``, ``qwen_vl.py``):

- its vision modules, built in ``__init__`` before :meth:`VisionLanguageModel._build_language`;
- :meth:`visual_inputs`: the token each kind of visual input fills and the argument carrying it;
- ``inputs(prompts, layout, <its visual inputs, under transformers' names>)``: the encoder (pixels →
  features per kind, in prompt order) and the position ids of a prompt (``None``: ``0 .. n-1``;
  M-RoPE: ``[3, n]`` planes), handed to :meth:`VisionLanguageModel._prefill_tokens`;
- ``v2drop_schedule``, its default V²Drop schedule (and ``pdrop_layers``, ``fastv_k`` where the
  published PyramidDrop and FastV layers do not fit it); and, in ``loading.py``, its checkpoint key
  map and a line of the ``model_type`` registry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor, nn

from .config import TextConfig
from .decoder import Decoder
from .generation import Generation, GenerativeModel
from .llama import LlamaModel, Rotary
from .policies import Policy
from .pruning import PruningContext
from .tokens import Tokens, cu_seqlens, resolve_layout


@dataclass(frozen=True)
class VisualInput:
    """One kind of visual input: the token id its features fill, its name, the argument of
    ``generate`` / ``forward`` that carries its pixels."""

    token_id: int
    name: str  # "image", "video"
    argument: str  # "pixel_values", "pixel_values_videos"


class VisionLanguageModel(GenerativeModel):
    """The shared part of the vision-language models; see the module docstring for what a
    subclass adds."""

    v2drop_schedule: str  # the architecture's default V²Drop schedule (see policies.v2drop)
    pdrop_layers: tuple[int, ...] = (8, 16, 24)  # PyramidDrop's published boundaries
    fastv_k: int = 2  # FastV's published K

    @classmethod
    def default_layers(cls, policy: str) -> list[int] | None:
        """The pruning layers of ``policy``'s default schedule on this architecture where it has its
        own (PyramidDrop's, FastV's), else None (the policy's own default; V²Drop's named schedule)."""
        return {"pdrop": list(cls.pdrop_layers), "fastv": [cls.fastv_k]}.get(policy)

    def _build_language(self, text: TextConfig) -> None:
        """The decoder side: language model, LM head (tied when the config says), RoPE, decoder."""
        self.language_model = LlamaModel(text)
        self.lm_head = nn.Linear(text.hidden_size, text.vocab_size, bias=False)
        if text.tie_word_embeddings:
            self.lm_head.weight = self.language_model.embed_tokens.weight
        self.rotary = Rotary(text)
        self.decoder = Decoder(self.language_model, text, self.rotary)
        self._init_generation()

    def visual_inputs(self) -> tuple[VisualInput, ...]:
        raise NotImplementedError

    def inputs(self, prompts: Sequence[Tensor], layout: str, *visual, **named_visual) -> Tokens:
        """The prefill :class:`Tokens` of ``prompts`` and the architecture's visual inputs."""
        raise NotImplementedError

    # -- forward and generation -------------------------------------------------------------------------
    @torch.inference_mode()
    def forward(self, prompts: Sequence[Tensor], *visual, policy: Policy | None = None, layout: str = "padded",
                backend: str | None = None, **named_visual) -> tuple[Tensor, Tokens]:
        """Prefill only: logits of every surviving token (float32) and the final :class:`Tokens`, in
        the prefill's layout: ``padded`` (the default: ``[B, S, vocab]``; rows must hold as many
        visual tokens), ``packed`` (``[T, vocab]``) or ``auto`` (padded when they do, else packed;
        ``tokens.packed`` says which).
        ``visual`` / ``named_visual``: the architecture's visual inputs (its :meth:`inputs`)."""
        tokens = self.inputs(prompts, layout, *visual, **named_visual)
        tokens = self.decoder.prefill(tokens, policy or Policy(), ctx=PruningContext(backend))
        return self.lm_head(tokens.hidden).float(), tokens

    @torch.inference_mode()
    def generate(self, prompts: Sequence[Tensor], *visual, max_new_tokens: int = 16, policy: Policy | None = None,
                 layout: str = "auto", backend: str | None = None, progress: bool = False, cuda_graph: bool | None = None,
                 time_pruning: bool = False, **named_visual) -> Generation:
        """Greedy generation from ``prompts`` (token ids, one tensor a row, as the HF processor gives
        them) and the architecture's visual inputs (``visual`` / ``named_visual``: its :meth:`inputs`,
        under ``transformers``' names, e.g. ``pixel_values``). ``layout="auto"`` packs only when
        rows hold different numbers of visual tokens. ``cuda_graph``, ``time_pruning``: see
        :meth:`~v2drop_kernels.models.generation.GenerativeModel.run_generation`."""
        return self.run_generation(lambda: self.inputs(prompts, layout, *visual, **named_visual),
                                   max_new_tokens=max_new_tokens, policy=policy, backend=backend, progress=progress,
                                   cuda_graph=cuda_graph, time_pruning=time_pruning)

    # -- prefill tokens ---------------------------------------------------------------------------------
    @staticmethod
    def _host_prompts(prompts: Sequence[Tensor]) -> list[Tensor]:
        """The prompts as flat int64 CPU tensors (every count a shape depends on is taken from them)."""
        host = [torch.as_tensor(p, dtype=torch.long).flatten().cpu() for p in prompts]
        if not host or min(p.numel() for p in host) < 1:
            raise ValueError("every prompt needs at least one token")
        return host

    def _prefill_tokens(self, host: list[Tensor], layout: str, features: Sequence[Tensor | None],
                        positions: list[Tensor] | None = None, deepstack: Sequence[Tensor | None] | None = None) -> Tokens:
        """The prefill :class:`Tokens` of the prompts ``host`` (:meth:`_host_prompts`): ``padded``
        (left padding at position 0, the same visual count per row), ``packed``, or ``auto``.
        ``features``: one entry per :meth:`visual_inputs` kind (``[tokens, hidden]`` or more leading
        dims, in prompt order across the batch; ``None`` when absent); ``positions``: per prompt,
        host ``[n]`` or ``[3, n]`` position ids (``None``: ``0 .. n-1``); ``deepstack``: per kind,
        its DeepStack features ``[levels, tokens, hidden]`` (Qwen3-VL) or ``None``, given for every
        kind whose features are (the architecture checks it: :meth:`QwenVL.tokens
        <v2drop_kernels.models.qwen_vl.QwenVL.tokens>`)."""
        device = self.lm_head.weight.device
        kinds = self.visual_inputs()
        lengths = [p.numel() for p in host]
        visual = [sum(int((p == kind.token_id).sum()) for kind in kinds) for p in host]
        what = f"{kinds[0].name} tokens" if len(kinds) == 1 else "visual tokens"
        layout = resolve_layout(layout, visual, what)
        positions = positions if positions is not None else [torch.arange(n) for n in lengths]
        if deepstack is not None and all(d is None for d in deepstack):
            deepstack = None
        stack = None if deepstack is None else torch.cat([d for d in deepstack if d is not None], 1)
        if layout == "packed":
            hidden, vis, feature_rows = self._embed(torch.cat(host).to(device), features, deepstack)
            index = torch.cat([torch.arange(n) for n in lengths]).to(device)
            pos = torch.cat(positions, dim=-1).to(device)
            return Tokens(hidden, pos, index, vis, visual, cu_seqlens=cu_seqlens(lengths, device), lengths=lengths,
                          deepstack=stack, visual_row=feature_rows)
        width, rows = max(lengths), len(host)
        ids = torch.full((rows, width), self.cfg.text.pad_token_id or 0, dtype=torch.long)
        pos = torch.zeros(*positions[0].shape[:-1], rows, width, dtype=torch.long)  # left padding at position 0
        index = torch.full((rows, width), -1, dtype=torch.long)  # index in the row's own prompt; -1 on padding
        for row, (p, plane) in enumerate(zip(host, positions)):
            ids[row, width - p.numel():] = p
            pos[..., row, width - p.numel():] = plane
            index[row, width - p.numel():] = torch.arange(p.numel())
        hidden, vis, feature_rows = self._embed(ids.to(device), features, deepstack)
        valid = None if min(lengths) == width else (index >= 0).to(device)
        return Tokens(hidden, pos.to(device), index.to(device), vis, visual, valid=valid, deepstack=stack,
                      visual_row=feature_rows)

    def _embed(self, ids: Tensor, features: Sequence[Tensor | None],
               deepstack: Sequence[Tensor | None] | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
        """Token embeddings with each kind's features written over its tokens (in order), the visual
        mask, and, with ``deepstack``, each token's row of the kinds' DeepStack features concatenated
        (0 on text tokens; else None)."""
        hidden = self.language_model.embed_tokens(ids)
        vis = torch.zeros_like(ids, dtype=torch.bool)
        rows = None if deepstack is None else torch.zeros_like(ids)
        offset = 0
        for i, (kind, feats) in enumerate(zip(self.visual_inputs(), features)):
            mask = ids == kind.token_id
            if feats is None:
                if bool(mask.any()):
                    raise ValueError(f"the prompts hold {kind.name} tokens but no {kind.argument} were given")
            else:
                flat = feats.reshape(-1, feats.shape[-1])
                count = int(mask.sum())
                if count != flat.shape[0]:
                    raise ValueError(f"the prompts hold {count} {kind.name} tokens but the {kind.name} inputs give "
                                     f"{flat.shape[0]} features")
                hidden = hidden.masked_scatter(mask.unsqueeze(-1), flat.to(hidden.dtype))
                if rows is not None and deepstack[i] is not None:
                    rows = rows.masked_scatter(mask, torch.arange(offset, offset + count, device=ids.device))
                    offset += count
            vis = vis | mask
        return hidden, vis, rows
