"""The host-side counts of the vLLM integration (v2drop_kernels/integrations/vllm/plan.py), without vLLM.

What each pruned stage holds, which token range a step must cover whole, and the per-stage query
and cache positions of a mixed step (decode rows, prefill chunks, text-only rows), checked against
counts written out by hand and against the package's own decoder (the same policy, the same rows).
"""

from __future__ import annotations

import importlib
import sys

import numpy as np
import pytest
import torch

from v2drop_kernels.integrations.vllm.plan import PruningSchedule, plan_step
from v2drop_kernels.models import FastV, PyramidDrop, V2Drop, random_qwen_vl, tiny_qwen_config

IMG, VID = 97, 98
VISUAL = (IMG, VID)


def schedule(policy, layers: int = 8) -> PruningSchedule:
    return PruningSchedule(policy, layers, VISUAL)


def prompt(before: int, visual: int, after: int, token: int = IMG, gap: int = 0) -> list[int]:
    """``before`` text tokens, ``visual`` visual tokens (two spans ``gap`` text tokens apart if
    ``gap``), ``after`` text tokens."""
    span = [token] * visual
    if gap:
        half = visual // 2
        span = [token] * half + [5] * gap + [token] * (visual - half)
    return [3] * before + span + [4] * after


def test_request_plan_counts_and_windows():
    plan = schedule(V2Drop(layers=(2, 4, 6), keep=(0.5, 0.5, 0.0))).plan(prompt(3, 16, 4, gap=2))
    assert plan.num_visual == 16 and plan.kept == (16, 8, 4, 1)
    assert plan.window == (3, 21) and plan.drop_end == 21  # the visual span, text between its images included
    assert [plan.stage_tokens(s, 10) for s in range(4)] == [10] * 4  # before the drop: every token
    assert [plan.stage_tokens(s, 25) for s in range(4)] == [25, 17, 13, 10]
    whole = schedule(PyramidDrop(layers=(2, 4, 6))).plan(prompt(3, 16, 4))
    assert whole.window == (0, 23) and whole.kept == (16, 8, 4, 2)  # ranked by the last token: the whole prompt
    assert schedule(FastV(k=2, r=0.75)).plan(prompt(1, 10, 1)).kept == (10, 2)
    assert schedule(V2Drop(layers=(2,), keep=(3,))).plan(prompt(2, 10, 2, token=VID)).kept == (10, 3)
    text = schedule(V2Drop(layers=(2, 4, 6))).plan([3, 4, 5])
    assert text.num_visual == 0 and text.window == (0, 0) and text.stage_tokens(3, 3) == 3


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
    plan = schedule(V2Drop(layers=(2, 4, 6))).plan(prompt(3, 16, 4, gap=2))  # window [3, 21)
    assert plan.clamp(computed, scheduled) == allowed


def test_clamp_refuses_a_request_computed_inside_its_window():
    plan = schedule(V2Drop(layers=(2, 4, 6))).plan(prompt(3, 16, 4))
    with pytest.raises(RuntimeError, match="inside its window"):
        plan.clamp(10, 4)


def test_plan_step_of_a_mixed_batch():
    sched = schedule(V2Drop(layers=(2, 4, 6), keep=(0.5, 0.5, 0.0)))
    rows = [("decode", prompt(2, 16, 2), 21, 1),   # pruned before: 20 prompt tokens + 1 generated
            ("chunk", prompt(5, 8, 3), 0, 4),      # a chunk before its window
            ("drop", prompt(2, 8, 3), 0, 13),      # the whole prompt, the drop in this step
            ("text", [3, 4, 5, 6], 1, 3)]          # text only
    ids = [r[0] for r in rows]
    plans = [sched.plan(r[1]) for r in rows]
    step = plan_step(sched, ids, plans, np.array([r[2] for r in rows]), np.array([r[3] for r in rows]))
    assert step.drops and step.num_visual == [0, 0, 8, 0] and step.lengths == [1, 4, 13, 3]
    stage1, stage2, stage3 = step.stages
    # decode row: 16 visual tokens kept 8 / 4 / 1; the drop row: 8 kept 4 / 2 / 1
    assert stage1.query_start_loc.tolist() == [0, 1, 5, 14, 17] and stage1.seq_lens.tolist() == [14, 4, 9, 4]
    assert stage3.query_start_loc.tolist() == [0, 1, 5, 11, 14] and stage3.seq_lens.tolist() == [7, 4, 6, 4]
    assert stage1.positions.tolist() == [13, 0, 1, 2, 3, *range(9), 1, 2, 3]
    assert stage2.positions.tolist() == [9, 0, 1, 2, 3, *range(7), 1, 2, 3]
    assert (stage1.num_tokens, stage1.max_query_len, stage1.max_seq_len) == (17, 9, 14)


def test_plan_step_without_drops_keeps_every_token_in_flight():
    sched = schedule(V2Drop(layers=(2, 4, 6)))
    plans = [sched.plan(prompt(1, 8, 1)), sched.plan([3, 4])]
    step = plan_step(sched, ["a", "b"], plans, np.array([10, 0]), np.array([1, 2]))  # a decodes, b prefills text
    assert not step.drops and step.num_visual == [0, 0]
    assert [s.seq_lens.tolist() for s in step.stages] == [[7, 2], [5, 2], [4, 2]]


def test_plan_step_refuses_a_split_window():
    sched = schedule(V2Drop(layers=(2, 4, 6)))
    with pytest.raises(RuntimeError, match="part of its window"):
        plan_step(sched, ["a"], [sched.plan(prompt(2, 8, 2))], np.array([0]), np.array([5]))


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
    sched = PruningSchedule(policy, 8, (token,))
    plan = sched.plan(ids.tolist())
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
