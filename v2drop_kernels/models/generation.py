"""Greedy generation shared by the package's models: prefill with a policy, then a static decode loop.

A model (:class:`~v2drop_kernels.models.llava.Llava`, :class:`~v2drop_kernels.models.qwen_vl.QwenVL`)
turns its prompts and images into the prefill's :class:`~v2drop_kernels.models.tokens.Tokens`;
:meth:`GenerativeModel.run_generation` does the rest: prefill through the
:class:`~v2drop_kernels.models.decoder.Decoder` into a :class:`~v2drop_kernels.models.cache.KVCache`,
then greedy decode steps of fixed shapes, replayed as one CUDA graph on CUDA, reading the device
once per ``EOS_CHECK_EVERY`` steps.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor, nn

from ..extras import require
from .cache import BufferPool, KVCache
from .policies import Policy
from .pruning import PrefillTrace, PruningContext
from .tokens import Tokens


@dataclass
class Generation:
    """Result of :meth:`Llava.generate`."""

    tokens: Tensor  # int64 [B, n] generated ids (after EOS a row repeats the pad id)
    trace: PrefillTrace  # visual tokens per row each layer attended to, scores of each drop
    cache_lengths: list[int]  # KV entries per layer after prefill (columns, padding included)
    layer_positions: list[Tensor]  # per layer int64 [B, L]: prompt index of each KV entry (-1: padding; a
    # linear-attention layer: of each prompt token it saw)
    kv_cache_bytes: int  # bytes of the KV entries in use after prefill
    state_bytes: int = 0  # bytes of the linear-attention layers' fixed-size states (Qwen3.5; 0 without)
    timings_ms: dict[str, float] = field(default_factory=dict)  # vision, prefill, decode
    peak_memory_bytes: int | None = None  # CUDA allocator peak over the call (None on CPU)
    prefill_logits: Tensor | None = None  # [B, vocab] logits of the last prompt token


class GenerativeModel(nn.Module):
    """The generation loop of a model with ``cfg.text``, ``language_model`` (``embed_tokens``,
    ``layers``), ``lm_head`` and ``decoder``. Subclasses call :meth:`run_generation`."""

    def _init_generation(self) -> None:
        self._pool = BufferPool()  # decode buffers kept for the next call (CUDA graphs replay over them)
        self._graphs: dict = {}
        self._fused = False

    def fuse_projections(self) -> "GenerativeModel":
        """Joins every decoder layer's q/k/v and gate/up projections into one linear each (one matmul
        instead of three and two; the modules' weights become views of the joined ones, so there is
        no second copy and ``state_dict`` is unchanged). The loaders call it; a model moved or cast
        with ``.to()`` afterwards is joined again. Without it the decoder runs the modules one by one."""
        self.decoder.fuse_projections()
        self._fused = True
        return self

    def _apply(self, fn, recurse=True):
        module = super()._apply(fn, recurse)
        if getattr(self, "_fused", False):  # .to() / .cuda() / .half() gave the modules new tensors
            self.decoder.fuse_projections()
        return module

    def run_generation(self, inputs: Callable[[], Tokens], *, max_new_tokens: int, policy: Policy | None,
                       backend: str | None, progress: bool, cuda_graph: bool | None, time_pruning: bool) -> Generation:
        """Greedy generation from the prefill tokens ``inputs()`` builds (vision tower and
        embeddings, timed as ``vision``). ``cuda_graph`` (default: on CUDA) replays the decode step
        as one CUDA graph; its buffers stay allocated for the next call with the same shapes
        (:meth:`release_decode_buffers` frees them). ``time_pruning`` adds the time spent in the
        policy's hooks to the trace (it synchronises the device around them)."""
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

        tokens = inputs()
        clock.lap("vision")
        next_pos = tokens.next_positions()
        ctx = PruningContext(backend, time_pruning=time_pruning)
        cache = KVCache(len(self.language_model.layers), max_new_tokens - 1, self._pool if graph else None)
        tokens = self.decoder.prefill(tokens, policy, cache, ctx)
        final = tokens.hidden[tokens.last_index()].unsqueeze(1) if tokens.packed else tokens.hidden[:, -1:]
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
            state_bytes=cache.state_nbytes(),
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
        io = _StepState.allocate(pool, batch, max_new, len(eos_ids), device, tuple(next_pos.shape))
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
                   self.decoder.weights_key())
            run = self._graphs.get(key)
            if run is None:
                first_step = self.WARMUP_STEPS
                run = self._capture(step, key, first_step)
        steps = range(first_step, max_new - 1)
        if progress:
            tqdm = require("tqdm", "generate(progress=True)").tqdm
            steps = tqdm(steps, desc="decode", unit="tok", leave=False, initial=first_step, total=max_new - 1)
        for i in steps:
            run()
            if (i + 1) % self.EOS_CHECK_EVERY == 0 and bool(io.done.all()):
                break
        return io.out[:, : int(io.count)].clone()

    def _decode_step(self, io: "_StepState", cache: KVCache, pad: int) -> None:
        """One greedy step on the device state ``io``: every shape fixed, nothing read back (capturable)."""
        hidden = self.language_model.embed_tokens(io.tok)[:, None]
        position_ids = (io.pos0 + io.step)[..., None]  # [B, 1], or [3, B, 1] planes
        hidden = self.decoder.decode_step(hidden, position_ids, io.step, cache, planes=position_ids.ndim == 3)
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
    pos0: Tensor  # int64 [B] ([3, B] M-RoPE planes): position of the first generated token
    step: Tensor  # int64 []: decode steps done
    done: Tensor  # bool [B]
    out: Tensor  # int64 [B, max_new]
    count: Tensor  # int64 []: generated ids that count (1 + steps before every row was done)
    eos: Tensor  # int64 [n_eos]

    @classmethod
    def allocate(cls, pool: BufferPool | None, batch: int, max_new: int, n_eos: int, device, pos_shape) -> "_StepState":
        def buf(name, shape, dtype=torch.long):
            return pool.get("step." + name, shape, dtype, device) if pool else torch.zeros(shape, dtype=dtype, device=device)

        return cls(buf("tok", (batch,)), buf("pos0", pos_shape), buf("step", ()), buf("done", (batch,), torch.bool),
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
