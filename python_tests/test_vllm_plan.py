"""The vLLM integration's parts that need no vLLM: its host-side counts (plan.py) and its decoder loop.

What each pruned stage holds, which token range a step must cover whole, and the per-stage query
and cache positions of a mixed step (decode rows, prefill chunks, text-only rows), checked against
counts written out by hand and against the package's own decoder (the same policy, the same rows);
the decoder loop (decoder.py) on stand-in vLLM layers whose fused add-norm updates its input in
place, as vLLM's does on CUDA.
"""

from __future__ import annotations

import importlib
import json
import sys

import numpy as np
import pytest
import torch

from torch import nn

from vllm_models import visual_runs

from v2drop_kernels.integrations.vllm.decoder import DeviceStep, KeptTrace, PrunedDecoder
from v2drop_kernels.integrations.vllm.plan import PruningSchedule, plan_step
from v2drop_kernels.models import FastV, PyramidDrop, V2Drop, random_qwen_vl, tiny_qwen_config

IMG, VID = 97, 98


def schedule(policy, layers: int = 8) -> PruningSchedule:
    return PruningSchedule(policy, layers)


def plan_of(sched: PruningSchedule, ids: list[int]):
    """The plan of a prompt whose image / video ids are placeholders vLLM filled with items."""
    return sched.plan(len(ids), visual_runs(ids, (IMG, VID)))


def prompt(before: int, visual: int, after: int, token: int = IMG, gap: int = 0) -> list[int]:
    """``before`` text tokens, ``visual`` visual tokens (two spans ``gap`` text tokens apart if
    ``gap``), ``after`` text tokens."""
    span = [token] * visual
    if gap:
        half = visual // 2
        span = [token] * half + [5] * gap + [token] * (visual - half)
    return [3] * before + span + [4] * after


def test_request_plan_counts_and_windows():
    plan = plan_of(schedule(V2Drop(layers=(2, 4, 6), keep=(0.5, 0.5, 0.0))), prompt(3, 16, 4, gap=2))
    assert plan.num_visual == 16 and plan.kept == (16, 8, 4, 1) and plan.visual == ((3, 11), (13, 21))
    assert plan.window == (3, 21) and plan.drop_end == 21  # the visual span, text between its images included
    assert [plan.stage_tokens(s, 10) for s in range(4)] == [10] * 4  # before the drop: every token
    assert [plan.stage_tokens(s, 25) for s in range(4)] == [25, 17, 13, 10]
    whole = plan_of(schedule(PyramidDrop(layers=(2, 4, 6))), prompt(3, 16, 4))
    assert whole.window == (0, 23) and whole.kept == (16, 8, 4, 2)  # ranked by the last token: the whole prompt
    assert plan_of(schedule(FastV(k=2, r=0.75)), prompt(1, 10, 1)).kept == (10, 2)
    assert plan_of(schedule(V2Drop(layers=(2,), keep=(3,))), prompt(2, 10, 2, token=VID)).kept == (10, 3)
    text = plan_of(schedule(V2Drop(layers=(2, 4, 6))), [3, 4, 5])
    assert text.num_visual == 0 and text.window == (0, 0) and text.stage_tokens(3, 3) == 3
    # visual tokens are the positions multimodal items fill, not token ids: none without an item
    assert schedule(V2Drop(layers=(2, 4, 6))).plan(20, []).num_visual == 0


@pytest.mark.parametrize("computed, scheduled, allowed", [
    (0, 2, 2),    # ends before the window
    (0, 3, 3),    # ends at its start
    (0, 10, 3),   # would end inside: stops before it
    (0, 30, 30),  # covers it whole
    (3, 5, 0),    # starts at the window but cannot finish it: nothing this step
    (3, 18, 18),  # starts at it and covers it
    (21, 4, 4),   # after it (the rest of the prompt, decode)
])
def test_clamp_never_splits_the_window(computed, scheduled, allowed):
    plan = plan_of(schedule(V2Drop(layers=(2, 4, 6))), prompt(3, 16, 4, gap=2))  # window [3, 21)
    assert plan.clamp(computed, scheduled) == allowed


def test_clamp_ends_a_whole_prompt_window_with_the_prompt():
    """Computed again after a preemption, a prompt is followed by the tokens already generated: a
    policy that ranks by the last prompt token's attention must have that token end the step."""
    ids = prompt(3, 16, 4)  # 23 tokens
    assert plan_of(schedule(PyramidDrop(layers=(2, 4, 6))), ids).clamp(0, 23 + 5) == 23
    assert plan_of(schedule(FastV()), ids).clamp(0, 10) == 0
    assert plan_of(schedule(V2Drop(layers=(2, 4, 6))), ids).clamp(0, 23 + 5) == 28  # scores are per token


def test_clamp_refuses_a_request_computed_inside_its_window():
    plan = plan_of(schedule(V2Drop(layers=(2, 4, 6))), prompt(3, 16, 4))
    with pytest.raises(RuntimeError, match="inside its window"):
        plan.clamp(10, 4)


def test_plan_step_of_a_mixed_batch():
    sched = schedule(V2Drop(layers=(2, 4, 6), keep=(0.5, 0.5, 0.0)))
    rows = [("decode", prompt(2, 16, 2), 21, 1),   # pruned before: 20 prompt tokens + 1 generated
            ("chunk", prompt(5, 8, 3), 0, 4),      # a chunk before its window
            ("drop", prompt(2, 8, 3), 0, 13),      # the whole prompt, the drop in this step
            ("text", [3, 4, 5, 6], 1, 3)]          # text only
    ids = [r[0] for r in rows]
    plans = [plan_of(sched, r[1]) for r in rows]
    step = plan_step(sched, ids, plans, np.array([r[2] for r in rows]), np.array([r[3] for r in rows]))
    assert step.drops and step.num_visual == [0, 0, 8, 0] and step.lengths == [1, 4, 13, 3]
    assert step.visual_index.tolist() == list(range(5 + 2, 5 + 10))  # the drop row's 8 image tokens
    stage1, stage2, stage3 = step.stages
    # decode row: 16 visual tokens kept 8 / 4 / 1; the drop row: 8 kept 4 / 2 / 1
    assert stage1.query_start_loc.tolist() == [0, 1, 5, 14, 17] and stage1.seq_lens.tolist() == [14, 4, 9, 4]
    assert stage3.query_start_loc.tolist() == [0, 1, 5, 11, 14] and stage3.seq_lens.tolist() == [7, 4, 6, 4]
    assert stage1.cache_index.tolist() == [13, 0, 1, 2, 3, *range(9), 1, 2, 3]
    assert stage2.cache_index.tolist() == [9, 0, 1, 2, 3, *range(7), 1, 2, 3]
    assert (stage1.num_tokens, stage1.max_query_len, stage1.max_seq_len) == (17, 9, 14)


def test_plan_step_without_drops_keeps_every_token_in_flight():
    sched = schedule(V2Drop(layers=(2, 4, 6)))
    plans = [plan_of(sched, prompt(1, 8, 1)), plan_of(sched, [3, 4])]
    step = plan_step(sched, ["a", "b"], plans, np.array([10, 0]), np.array([1, 2]))  # a decodes, b prefills text
    assert not step.drops and step.num_visual == [0, 0]
    assert [s.seq_lens.tolist() for s in step.stages] == [[7, 2], [5, 2], [4, 2]]


def test_plan_step_refuses_a_split_window():
    sched = schedule(V2Drop(layers=(2, 4, 6)))
    with pytest.raises(RuntimeError, match="part of its window"):
        plan_step(sched, ["a"], [plan_of(sched, prompt(2, 8, 2))], np.array([0]), np.array([5]))


@pytest.mark.parametrize("policy", [V2Drop(layers=(2, 4, 6), keep=(0.5, 0.25, 0.0)), PyramidDrop(layers=(2, 5), ratio=0.3),
                                    FastV(k=3, r=0.6)], ids=["v2drop", "pdrop", "fastv"])
def test_stage_counts_equal_the_package_decoder(policy):
    """The visual tokens each stage holds are the ones the package's decoder keeps, layer by layer."""
    cfg = tiny_qwen_config(layers=8)
    model = random_qwen_vl(cfg)
    token = cfg.image_token_id
    ids = torch.tensor([1, 5] + [cfg.vision_start_token_id] + [token] * 36 + [cfg.vision_end_token_id, 6, 7])
    features = torch.randn(36, cfg.text.hidden_size)
    out = model.generate([ids], image_features=features, image_grid_thw=torch.tensor([[1, 12, 12]]), max_new_tokens=1,
                         policy=policy)
    sched = PruningSchedule(policy, 8)
    plan = sched.plan(len(ids), [(3, 3 + 36)])
    assert [plan.kept[sched.stage_of(layer)] for layer in range(8)] == [v[0] for v in out.trace.visual_per_layer]


def test_importing_the_plugin_needs_no_vllm(monkeypatch):
    """The entry point module imports without vLLM (vLLM is what calls ``register``)."""
    for name in [m for m in sys.modules if m.startswith(("vllm.", "v2drop_kernels.integrations.vllm"))]:
        monkeypatch.delitem(sys.modules, name)  # (put back after the test)
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` raises ImportError
    plugin = importlib.import_module("v2drop_kernels.integrations.vllm")
    importlib.import_module("v2drop_kernels.integrations.vllm.plan")
    with pytest.raises(ImportError):
        plugin.register()


# -- the decoder loop on stand-ins for vLLM's layers ------------------------------------------------------
class AddNorm(nn.Module):
    """vLLM's RMSNorm call convention: ``norm(x)``, or ``norm(x, residual) -> (norm(x + residual), x + residual)``;
    ``in_place``: the sum is written into ``residual``, as vLLM's fused kernel does on CUDA."""

    def __init__(self, in_place: bool):
        super().__init__()
        self.in_place = in_place

    def forward(self, x, residual=None):
        if residual is None:
            return x / x.norm(dim=-1, keepdim=True)
        total = residual.add_(x) if self.in_place else residual + x
        return total / total.norm(dim=-1, keepdim=True), total


class Layer(nn.Module):
    """A decoder layer of vLLM's shape (``(positions, hidden, residual) -> (hidden, residual)``) whose
    "attention" and MLP work token by token."""

    def __init__(self, dim: int, seed: int, in_place: bool):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.input_layernorm, self.post_attention_layernorm = AddNorm(in_place), AddNorm(in_place)
        self.self_attn = nn.Module()
        for name in ("qkv_proj", "rotary_emb", "q_size", "kv_size", "num_heads", "num_kv_heads", "head_dim"):
            setattr(self.self_attn, name, None)
        self.attn_w = torch.randn(dim, dim, generator=gen) / dim**0.5
        self.mlp_w = torch.randn(dim, dim, generator=gen) / dim**0.5

    def forward(self, positions, hidden, residual):
        if residual is None:
            residual, hidden = hidden, self.input_layernorm(hidden)
        else:
            hidden, residual = self.input_layernorm(hidden, residual)
        hidden, residual = self.post_attention_layernorm(torch.tanh(hidden @ self.attn_w), residual)
        return torch.tanh(hidden @ self.mlp_w), residual


class Decoder(nn.Module):
    def __init__(self, layers: int, dim: int, in_place: bool):
        super().__init__()
        self.layers = nn.ModuleList(Layer(dim, seed, in_place) for seed in range(layers))
        self.norm = AddNorm(in_place)

    def embed_input_ids(self, ids):
        raise AssertionError("the test gives inputs_embeds")

    def forward(self, input_ids, positions, intermediate_tensors=None, inputs_embeds=None):
        raise AssertionError("pruned steps run the layers themselves")


def test_decoder_loop_keeps_layer_inputs_that_vllm_updates_in_place(tmp_path):
    """V²Drop before layers 1, 2 and 3: layer 0's input, and each drop's survivors, are the residual
    tensors the next layer's fused add-norm overwrites in place on CUDA; the saved previous input
    must not change with them. The kept tokens equal those of layers that add out of place."""
    policy = V2Drop(layers=(1, 2, 3), keep=(0.5, 0.5, 0.25))
    sched = PruningSchedule(policy, 4)
    ids = prompt(2, 24, 3)
    plan = plan_step(sched, ["r"], [plan_of(sched, ids)], np.array([0]), np.array([len(ids)]))
    embeds = torch.randn(len(ids), 16, generator=torch.Generator().manual_seed(0))
    outputs, kept = [], []
    for in_place in (False, True):
        step = DeviceStep(plan, torch.from_numpy(np.isin(np.arange(len(ids)), plan.visual_index)),
                          torch.tensor([0, len(ids)], dtype=torch.int32))
        trace = KeptTrace(str(tmp_path / str(in_place)), 0)
        pruned = PrunedDecoder(Decoder(4, 16, in_place), sched, lambda: step, trace=trace)
        outputs.append(pruned.forward(None, torch.arange(len(ids)), inputs_embeds=embeds.clone()))
        kept.append([json.loads(line)["kept"] for line in open(trace.path)])
    assert [len(k) for k in kept[0]] == [12, 6, 1] and kept[0] == kept[1]
    assert torch.equal(outputs[0], outputs[1])
