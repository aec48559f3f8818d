"""A LLaVA-1.5-style model in plain PyTorch: CLIP vision tower → projector → Llama decoder.

    model = load_llava("path/to/llava-1.5-7b-hf", dtype=torch.bfloat16, device="cuda")
    out = model.generate(prompts, pixel_values, max_new_tokens=32, policy=V2Drop())

``prompts`` are token ids in which every image appears as ``tokens_per_image`` copies of the
image token (what the HF processor produces); ``pixel_values`` hold the images in prompt order.
A batch of prompts of different lengths runs either left-padded (``layout="padded"``: SDPA, every
row must hold the same number of images) or packed (``layout="packed"``: varlen attention, any
number of images per row). The vision tower is ``transformers``' ``CLIPVisionModel``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import Tensor, nn

from .cache import BufferPool, KVCache
from .config import LlavaConfig
from .decoder import Decoder
from .llama import LlamaModel, Rotary
from .policies import Policy
from .pruning import PrefillTrace, PruningContext
from .tokens import Tokens


_ACTIVATIONS = {"gelu": nn.GELU, "gelu_pytorch_tanh": lambda: nn.GELU(approximate="tanh"), "relu": nn.ReLU, "silu": nn.SiLU}


class Projector(nn.Module):
    """``linear_2(act(linear_1(features)))``: vision width → text width."""

    def __init__(self, cfg: LlavaConfig):
        super().__init__()
        layers = 1 if isinstance(cfg.vision_feature_layer, int) else len(cfg.vision_feature_layer)
        width = cfg.text.hidden_size
        self.linear_1 = nn.Linear(cfg.vision["hidden_size"] * layers, width, bias=cfg.projector_bias)
        if cfg.projector_hidden_act not in _ACTIVATIONS:
            raise NotImplementedError(f"projector_hidden_act={cfg.projector_hidden_act!r}; known: {sorted(_ACTIVATIONS)}")
        self.act = _ACTIVATIONS[cfg.projector_hidden_act]()
        self.linear_2 = nn.Linear(width, width, bias=cfg.projector_bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear_2(self.act(self.linear_1(x)))


@dataclass
class Generation:
    """Result of :meth:`Llava.generate`."""

    tokens: Tensor  # int64 [B, n] generated ids (after EOS a row repeats the pad id)
    trace: PrefillTrace  # visual tokens per row each layer attended to, scores of each drop
    cache_lengths: list[int]  # KV entries per layer after prefill (columns, padding included)
    layer_positions: list[Tensor]  # per layer int64 [B, L]: prompt index of each KV entry (-1: padding)
    kv_cache_bytes: int  # bytes of the KV entries in use after prefill
    timings_ms: dict[str, float] = field(default_factory=dict)  # vision, prefill, decode
    peak_memory_bytes: int | None = None  # CUDA allocator peak over the call (None on CPU)
    prefill_logits: Tensor | None = None  # [B, vocab] logits of the last prompt token


class Llava(nn.Module):
    """``vision_tower=False`` builds the language side only (no ``transformers`` needed): prompts then
    take precomputed ``image_features`` (the end-to-end benchmark does this)."""

    def __init__(self, cfg: LlavaConfig, vision_tower: bool = True):
        super().__init__()
        self.cfg = cfg
        self.vision_tower = None
        if vision_tower:
            from transformers import CLIPVisionConfig, CLIPVisionModel

            self.vision_tower = CLIPVisionModel(CLIPVisionConfig(**cfg.vision))
        self.multi_modal_projector = Projector(cfg)
        self.language_model = LlamaModel(cfg.text)
        self.lm_head = nn.Linear(cfg.text.hidden_size, cfg.text.vocab_size, bias=False)
        if cfg.text.tie_word_embeddings:
            self.lm_head.weight = self.language_model.embed_tokens.weight
        self.rotary = Rotary(cfg.text)
        self.decoder = Decoder(self.language_model, cfg.text, self.rotary)
        self._pool = BufferPool()  # decode buffers kept for the next call (CUDA graphs replay over them)
        self._graphs: dict = {}

    # -- inputs -------------------------------------------------------------------------------------
    def image_features(self, pixel_values: Tensor) -> Tensor:
        """``[N, 3, H, W]`` → ``[N, tokens_per_image, hidden]`` in the decoder's dtype."""
        if self.vision_tower is None:
            raise RuntimeError("this model was built without a vision tower: pass image_features")
        dtype = self.multi_modal_projector.linear_1.weight.dtype
        out = self.vision_tower(pixel_values.to(dtype), output_hidden_states=True)
        layers = self.cfg.vision_feature_layer
        picked = [out.hidden_states[i] for i in ([layers] if isinstance(layers, int) else layers)]
        if self.cfg.vision_feature_select_strategy == "default":
            picked = [h[:, 1:] for h in picked]  # drop CLS
        return self.multi_modal_projector(torch.cat(picked, dim=-1))

    def _embed(self, ids: Tensor, features: Tensor | None) -> tuple[Tensor, Tensor]:
        """Token embeddings with the image features written over the image tokens (in order)."""
        hidden = self.language_model.embed_tokens(ids)
        vis = ids == self.cfg.image_token_id
        if features is not None:
            flat = features.reshape(-1, features.shape[-1])
            if int(vis.sum()) != flat.shape[0]:
                raise ValueError(f"the prompts hold {int(vis.sum())} image tokens but the images give {flat.shape[0]} features")
            hidden = hidden.masked_scatter(vis.unsqueeze(-1), flat.to(hidden.dtype))
        elif bool(vis.any()):
            raise ValueError("the prompts hold image tokens but no pixel_values were given")
        return hidden, vis

    def tokens(self, prompts: Sequence[Tensor], features: Tensor | None, layout: str) -> Tokens:
        """The prefill input: ``padded`` (left padding, same image count per row) or ``packed``."""
        device = self.lm_head.weight.device
        prompts = [torch.as_tensor(p, dtype=torch.long, device=device).flatten() for p in prompts]
        lengths = [p.numel() for p in prompts]
        if min(lengths) < 1:
            raise ValueError("every prompt needs at least one token")
        if layout == "packed":
            ids = torch.cat(prompts)
            hidden, vis = self._embed(ids, features)
            cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=device)
            pos = torch.cat([torch.arange(n, device=device) for n in lengths])
            visual = [int((p == self.cfg.image_token_id).sum()) for p in prompts]
            return Tokens(hidden, pos, pos, vis, visual, cu_seqlens=cu, lengths=lengths)
        if layout != "padded":
            raise ValueError(f"layout must be 'padded', 'packed' or 'auto', got {layout!r}")
        width, pad = max(lengths), self.cfg.text.pad_token_id or 0
        ids = torch.full((len(prompts), width), pad, dtype=torch.long, device=device)
        valid = torch.zeros(len(prompts), width, dtype=torch.bool, device=device)
        for row, p in enumerate(prompts):
            ids[row, width - p.numel():] = p
            valid[row, width - p.numel():] = True
        hidden, vis = self._embed(ids, features)
        visual = vis.sum(1).tolist()
        if len(set(visual)) > 1:
            raise ValueError(f"layout='padded' needs the same number of image tokens per row, got {visual}; use layout='packed'")
        index = valid.long().cumsum(1) - 1  # index in the row's own prompt; -1 on padding
        pos = index.clamp_min(0)  # HF's rule: left padding sits at position 0
        return Tokens(hidden, pos, index, vis, visual, valid=None if bool(valid.all()) else valid)

    # -- forward and generation ---------------------------------------------------------------------
    @torch.inference_mode()
    def forward(self, prompts: Sequence[Tensor], pixel_values: Tensor | None = None, policy: Policy | None = None,
                layout: str = "padded", backend: str | None = None) -> tuple[Tensor, Tokens]:
        """Prefill only: logits of every surviving token and the final :class:`Tokens`."""
        features = None if pixel_values is None else self.image_features(pixel_values)
        tokens = self.tokens(prompts, features, layout)
        tokens = self.decoder.prefill(tokens, policy or Policy(), ctx=PruningContext(backend))
        return self.lm_head(tokens.hidden).float(), tokens

    @torch.inference_mode()
    def generate(
        self,
        prompts: Sequence[Tensor],
        pixel_values: Tensor | None = None,
        *,
        max_new_tokens: int = 16,
        policy: Policy | None = None,
        layout: str = "auto",
        backend: str | None = None,
        progress: bool = False,
        image_features: Tensor | None = None,
        cuda_graph: bool | None = None,
        time_pruning: bool = False,
    ) -> Generation:
        """Greedy generation. ``layout="auto"`` packs only when rows hold different image counts.

        ``image_features`` (``[N, tokens_per_image, hidden]``, projector outputs) replaces
        ``pixel_values``: features computed once can serve several prompts. ``cuda_graph`` (default:
        on CUDA) replays the decode step as one CUDA graph; its buffers stay allocated for the next
        call with the same shapes (:meth:`release_decode_buffers` frees them). ``time_pruning`` adds
        the time spent in the policy's hooks to the trace (it synchronises the device around them).
        """
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        policy = policy or Policy()
        device = self.lm_head.weight.device
        cuda = device.type == "cuda"
        graph = cuda if cuda_graph is None else cuda_graph
        if graph and not cuda:
            raise ValueError("cuda_graph=True needs the model on a CUDA device")
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        clock = _Clock(cuda)

        features = image_features if pixel_values is None else self.image_features(pixel_values)
        clock.lap("vision")
        if layout == "auto":
            counts = {int((torch.as_tensor(p) == self.cfg.image_token_id).sum()) for p in prompts}
            layout = "padded" if len(counts) == 1 else "packed"
        tokens = self.tokens(prompts, features, layout)
        ctx = PruningContext(backend, time_pruning=time_pruning)
        cache = KVCache(len(self.language_model.layers), max_new_tokens - 1, self._pool if graph else None)
        tokens = self.decoder.prefill(tokens, policy, cache, ctx)
        last = tokens.last_index()
        if tokens.packed:
            final, next_pos = tokens.hidden[last].unsqueeze(1), tokens.position_ids[last] + 1
        else:
            final, next_pos = tokens.hidden[:, -1:], tokens.position_ids[:, -1] + 1
        prefill_logits = self.lm_head(final)[:, -1].float()
        clock.lap("prefill")

        out = self._decode(prefill_logits, next_pos, cache, max_new_tokens, graph, progress)
        clock.lap("decode")
        return Generation(
            tokens=out,
            trace=ctx.trace,
            cache_lengths=cache.lengths(),
            layer_positions=list(cache.orig_pos),
            kv_cache_bytes=cache.nbytes(),
            timings_ms=clock.laps,
            peak_memory_bytes=torch.cuda.max_memory_allocated(device) if cuda else None,
            prefill_logits=prefill_logits,
        )

    def release_decode_buffers(self) -> None:
        """Frees the KV and step buffers (and the captured decode graphs) kept for the next call."""
        self._pool.clear()
        self._graphs.clear()

    # -- decoding: one static step, replayed --------------------------------------------------------
    EOS_CHECK_EVERY = 8  # decode steps between reads of the "every row is done" flag (the only sync)
    WARMUP_STEPS = 2  # eager steps before a CUDA graph is captured (lazy initialisation runs there)

    def _decode(self, prefill_logits: Tensor, next_pos: Tensor, cache: KVCache, max_new: int, graph: bool,
                progress: bool) -> Tensor:
        """Greedy decode after prefill: returns the generated ids ``[B, n]`` (after EOS a row repeats
        the pad id; generation stops once every row is done)."""
        device, batch = prefill_logits.device, prefill_logits.shape[0]
        text = self.cfg.text
        eos_ids = text.eos_token_id if isinstance(text.eos_token_id, list) else [] if text.eos_token_id is None else [text.eos_token_id]
        pad = text.pad_token_id if text.pad_token_id is not None else (eos_ids[0] if eos_ids else 0)
        pool = self._pool if graph else None
        io = _StepState.allocate(pool, batch, max_new, len(eos_ids), device)
        io.eos.copy_(torch.tensor(eos_ids, dtype=torch.long))
        first = prefill_logits.argmax(-1)
        io.out[:, 0] = first
        io.tok.copy_(first)
        io.done.copy_(torch.isin(first, io.eos))
        io.pos0.copy_(next_pos)
        io.step.zero_()
        io.count.fill_(1)
        if max_new == 1:  # the prefill's token is the answer: no step to run or capture
            return io.out[:, :1].clone()

        def step() -> None:
            self._decode_step(io, cache, pad)

        run, first_step = step, 0
        if graph and max_new - 1 > self.WARMUP_STEPS:  # shorter answers run their few steps eagerly
            # The graph bakes in the buffers' addresses and these host values: reuse it only if all agree.
            key = (pool.allocations, tuple(cache.length), tuple(v is None for v in cache.valid), pad, self.decoder.compiled,
                   tuple(w.qkv[0][0].data_ptr() for w in self.decoder.weights()))
            run = self._graphs.get(key)
            if run is None:
                first_step = self.WARMUP_STEPS
                run = self._capture(step, key, first_step)
        steps = range(first_step, max_new - 1)
        if progress:
            from tqdm import tqdm

            steps = tqdm(steps, desc="decode", unit="tok", leave=False, initial=first_step, total=max_new - 1)
        for i in steps:
            run()
            if (i + 1) % self.EOS_CHECK_EVERY == 0 and bool(io.done.all()):
                break
        return io.out[:, : int(io.count)].clone()

    def _decode_step(self, io: "_StepState", cache: KVCache, pad: int) -> None:
        """One greedy step on the device state ``io``: every shape fixed, nothing read back (capturable)."""
        hidden = self.language_model.embed_tokens(io.tok)[:, None]
        hidden = self.decoder.decode_step(hidden, (io.pos0 + io.step)[:, None], io.step, cache)
        nxt = self.lm_head(hidden)[:, -1].float().argmax(-1)
        nxt = torch.where(io.done, pad, nxt)
        io.count.add_((~io.done.all()).long())  # a token counts while some row is still going
        io.out.index_copy_(1, (io.step + 1).view(1), nxt[:, None])
        io.done.logical_or_(torch.isin(nxt, io.eos))
        io.tok.copy_(nxt)
        io.step.add_(1)

    def _capture(self, step, key, warmup: int):
        """Runs ``warmup`` real steps on a side stream, then records one step as a CUDA graph."""
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(warmup):
                step()
        torch.cuda.current_stream().wait_stream(stream)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            step()  # recorded, not run
        self._graphs.clear()  # one live graph: its buffers are the pool's
        self._graphs[key] = g.replay
        return g.replay


@dataclass
class _StepState:
    """The decode loop's device state: the step's input token and position base, the step count,
    which rows are done, the output ids and how many of them count."""

    tok: Tensor  # int64 [B]
    pos0: Tensor  # int64 [B]: position of the first generated token
    step: Tensor  # int64 []: decode steps done
    done: Tensor  # bool [B]
    out: Tensor  # int64 [B, max_new]
    count: Tensor  # int64 []: generated ids that count (1 + steps before every row was done)
    eos: Tensor  # int64 [n_eos]

    @classmethod
    def allocate(cls, pool: BufferPool | None, batch: int, max_new: int, n_eos: int, device) -> "_StepState":
        def buf(name, shape, dtype=torch.long):
            return pool.get("step." + name, shape, dtype, device) if pool else torch.zeros(shape, dtype=dtype, device=device)

        return cls(buf("tok", (batch,)), buf("pos0", (batch,)), buf("step", ()), buf("done", (batch,), torch.bool),
                   buf("out", (batch, max_new)), buf("count", ()), buf("eos", (n_eos,)))


class _Clock:
    """Wall-clock laps (synchronising CUDA first, so each lap holds its own kernels)."""

    def __init__(self, cuda: bool):
        self.cuda, self.laps = cuda, {}
        self._sync()
        self.t = time.perf_counter()

    def _sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def lap(self, name: str) -> None:
        self._sync()
        now = time.perf_counter()
        self.laps[name] = (now - self.t) * 1e3
        self.t = now
