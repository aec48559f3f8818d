"""The pruning oracle (oracle.py) on Qwen2-VL / Qwen2.5-VL / Qwen3-VL against transformers' own models (the LLaVA
family: test_llava_next.py, test_llava_onevision.py)."""

from __future__ import annotations

import pytest
import torch

from oracle import mrope_cos_sin, oracle_prefill
from qwen_helpers import (ARCHS, DEEPSTACK_LEVELS, HEAD_DIM, IMAGE_TOKEN, QWEN3_ARCH, QWEN3_MROPE_SECTION,
                          QWEN3_ROPE_THETA, TEXT_LAYERS, VIDEO_TOKEN, VISION_END, VISION_START, frame_times,
                          image_inputs, multimodal_inputs, prompt_ids, save_tiny_qwen_vl, select_row, text_inputs,
                          timestamp_ids, tiny_qwen_vl, video_inputs)

CASES = {
    "image": lambda arch: image_inputs([(8, 8)], arch),  # 16 visual tokens
    "video": lambda arch: video_inputs([(2, 4, 4)], arch),  # 8
    "two_images": lambda arch: image_inputs([[(4, 4), (6, 8)]], arch),  # 4 + 12
    "image_video": lambda arch: multimodal_inputs([[(4, 6), (3, 4, 4)]], arch),  # 6 + 12, video t > h/2
    "text": lambda arch: text_inputs([prompt_ids(9)]),
}
SCHEDULES = [("v2drop", [2, 4], [0.5, 0.5]), ("v2drop", [1], [0.0]), ("pdrop", [1, 3], [0.5, 0.25]),
             ("pdrop", [0, 2, 4], [0.6, 0.6, 0.6]), ("fastv", [2], [0.25]), ("fastv", [1], [0.5])]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """The tiny matmuls gain nothing from threads, and spin-waiting threads crawl on a loaded 2-core box."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=ARCHS)
def model(request):
    """Tiny random model of each arch (default attention), shared by the module."""
    return tiny_qwen_vl(request.param)


@pytest.fixture(scope="module", params=ARCHS)
def eager_model(request):
    """Tiny random model with eager attention (returns attention probabilities)."""
    return tiny_qwen_vl(request.param, attn_implementation="eager")


def arch_of(model) -> str:
    return {"qwen2_vl": "qwen2-vl", "qwen2_5_vl": "qwen2.5-vl", "qwen3_vl": QWEN3_ARCH}[model.config.model_type]


def full_positions(model, inputs) -> torch.Tensor:
    """``[3, S]`` M-RoPE positions of a batch-1 prompt, from transformers' own forward."""
    captured = []
    hook = model.model.language_model.rotary_emb.register_forward_hook(lambda m, args, out: captured.append(args[1]))
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        hook.remove()
    return captured[0].expand(3, -1, -1)[:, 0]


def visual_index(inputs) -> torch.Tensor:
    ids = inputs["input_ids"][0]
    return ((ids == IMAGE_TOKEN) | (ids == VIDEO_TOKEN)).nonzero().squeeze(1)


def expected_counts(n: int, policy: str, layers: list[int], keep: list[float]) -> list[int]:
    """Visual tokens seen by each layer's attention under the schedule (``max(1, int(left * ratio))``)."""
    ratio_at = dict(zip(layers, keep)) if policy != "none" else {}
    counts = []
    for layer in range(TEXT_LAYERS):
        if layer in ratio_at and n:
            n = max(1, int(n * ratio_at[layer]))
        counts.append(n)
    return counts


@pytest.mark.parametrize("case", list(CASES))
def test_none_matches_transformers(model, case):
    assert_unpruned_oracle_is_transformers(model, CASES[case](arch_of(model)))


def assert_unpruned_oracle_is_transformers(model, inputs) -> None:
    """Unpruned, the oracle's last logits are transformers' (1e-4) and every layer sees every token
    at the positions transformers' rotary embedding receives."""
    with torch.no_grad():
        ref = model(**inputs).logits[0, -1]
    res = oracle_prefill(model, inputs, "none", [], [])
    torch.testing.assert_close(res.last_logits, ref, atol=1e-4, rtol=0)
    assert res.last_logits.dtype == torch.float32 and res.last_logits.shape == (model.config.text_config.vocab_size,)
    pos = full_positions(model, inputs)
    everything = torch.arange(inputs["input_ids"].shape[1])
    for layer in range(TEXT_LAYERS):
        assert torch.equal(res.kept[layer], visual_index(inputs))
        assert torch.equal(res.seen[layer], everything)
        assert torch.equal(res.positions[layer], pos)


def test_none_matches_transformers_on_llava_1_5(tmp_path):
    """The LLaVA family (embedding step: transformers' get_image_features written over the image
    tokens; plain RoPE as three equal planes 0 .. S-1) on LLaVA-1.5's Llama decoder, two images;
    LLaVA-NeXT and LLaVA-OneVision, pruned too: test_llava_next.py, test_llava_onevision.py."""
    from transformers import LlavaForConditionalGeneration

    import model_helpers as llava

    hf = LlavaForConditionalGeneration.from_pretrained(llava.save_tiny_llava(tmp_path / "llava", seed=2)).eval()
    inputs = {"input_ids": llava.prompt([1, 5], 2, [7, 8])[None], "pixel_values": llava.pixels(2, seed=2)}
    with torch.no_grad():
        ref = hf(**inputs).logits[0, -1]
    res = oracle_prefill(hf, inputs, "none", [], [])
    torch.testing.assert_close(res.last_logits, ref, atol=1e-4, rtol=0)
    everything = torch.arange(inputs["input_ids"].shape[1])
    assert len(res.kept) == llava.TEXT_LAYERS
    for kept, seen, positions in zip(res.kept, res.seen, res.positions):
        assert torch.equal(kept, (inputs["input_ids"][0] == llava.IMAGE_TOKEN).nonzero().squeeze(1)) and kept.numel() == 98
        assert torch.equal(seen, everything) and torch.equal(positions, everything.expand(3, -1))


@pytest.mark.parametrize("policy,layers,keep", SCHEDULES)
def test_schedule_and_positions(model, policy, layers, keep):
    inputs = image_inputs([(16, 16)], arch_of(model)) if policy != "pdrop" else video_inputs([(2, 8, 8)],
                                                                                              arch_of(model))
    check_schedule(model, inputs, policy, layers, keep)


def check_schedule(model, inputs, policy: str, layers: list[int], keep: list[float]):
    """Kept counts follow the schedule; text always seen; survivors nested, ordered, at their own positions."""
    visual = visual_index(inputs)
    res = oracle_prefill(model, inputs, policy, layers, keep)
    assert [k.numel() for k in res.kept] == expected_counts(visual.numel(), policy, layers, keep)
    pos = full_positions(model, inputs)
    text = torch.tensor([i for i in range(inputs["input_ids"].shape[1]) if i not in set(visual.tolist())])
    for layer in range(TEXT_LAYERS):
        kept, seen = res.kept[layer], res.seen[layer]
        assert kept.dtype == torch.int64 and torch.all(kept[1:] > kept[:-1])
        assert torch.equal(seen, torch.cat([text, kept]).sort().values)  # text always kept
        assert torch.equal(res.positions[layer], pos[:, seen])  # survivors keep their original positions
        if layer:
            assert set(kept.tolist()) <= set(res.kept[layer - 1].tolist())


@pytest.mark.parametrize("policy,layers", [("v2drop", [1, 3]), ("pdrop", [0, 2, 5]), ("fastv", [3])])
def test_keep_all_is_none(model, policy, layers):
    inputs = image_inputs([(8, 8)], arch_of(model))
    base = oracle_prefill(model, inputs, "none", [], [])
    res = oracle_prefill(model, inputs, policy, layers, [1.0] * len(layers))
    torch.testing.assert_close(res.last_logits, base.last_logits, atol=1e-5, rtol=0)


def _hf_pruned(model, inputs, policy: str, layers: list[int], keep: list[float]):
    """The same pruning driven through transformers' own decoder layers and eager attention probabilities.

    PyramidDrop inside layer ``l`` equals pruning right before layer ``l`` with layer ``l``'s scores, since
    q, k, v of a token depend only on its own hidden state and position.
    Qwen3-VL: after layer ``i`` < DeepStack levels, each visual token still present gets its own row of the
    ``deepstack_visual_embeds`` that transformers hands its text model (taken from that call, as is the embedding).
    """
    lm = model.model.language_model
    captured = {}

    def grab(module, args, kwargs):
        captured.update(kwargs)

    hook = lm.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        hook.remove()
    h = captured["inputs_embeds"][0]  # embeddings with the visual features
    deepstack = torch.zeros(0, *h.shape)
    if captured.get("deepstack_visual_embeds") is not None:  # Qwen3-VL: [n_visual, d] per level, over visual_pos_masks
        deepstack = torch.zeros(len(captured["deepstack_visual_embeds"]), *h.shape)
        deepstack[:, captured["visual_pos_masks"][0]] = torch.stack(captured["deepstack_visual_embeds"])
    pos, idx = full_positions(model, inputs), torch.arange(h.shape[0])
    visual = (inputs["input_ids"][0] == IMAGE_TOKEN) | (inputs["input_ids"][0] == VIDEO_TOKEN)
    ratio_at, prev, scores, kept = dict(zip(layers, keep)), None, None, []

    def attention_last_row(layer, h, pos):
        cos, sin = lm.rotary_emb(h[None], pos[:, None])
        n = h.shape[0]
        mask = torch.full((n, n), float("-inf")).triu(1)[None, None]
        _, probs = layer.self_attn(layer.input_layernorm(h[None]), attention_mask=mask,
                                   position_embeddings=(cos, sin))
        return probs[0, :, -1].mean(0)

    def prune(score, ratio):
        where = visual.nonzero().squeeze(1)
        top = where[torch.topk(score[where], max(1, int(where.numel() * ratio))).indices]
        return ~visual | torch.isin(torch.arange(visual.numel()), top)

    with torch.no_grad():
        for li, layer in enumerate(lm.layers):
            survive = None
            if li in ratio_at and policy == "v2drop":
                survive = prune((h - prev).norm(dim=-1), ratio_at[li])
            if li in ratio_at and policy == "fastv":
                survive = prune(scores, ratio_at[li])
            if li in ratio_at and policy == "pdrop":
                survive = prune(attention_last_row(layer, h, pos), ratio_at[li])
            if survive is not None:
                h, pos, visual, idx = h[survive], pos[:, survive], visual[survive], idx[survive]
            if li + 1 in ratio_at and policy == "fastv":
                scores = attention_last_row(layer, h, pos)
            kept.append(idx[visual])
            prev = h
            n = h.shape[0]
            cos, sin = lm.rotary_emb(h[None], pos[:, None])
            mask = torch.full((n, n), float("-inf")).triu(1)[None, None]
            h = layer(h[None], attention_mask=mask, position_embeddings=(cos, sin))[0]
            if li < deepstack.shape[0]:
                h[visual] += deepstack[li, idx[visual]]
        logits = model.lm_head(lm.norm(h[-1:]))[0]
    return kept, logits


@pytest.mark.parametrize("policy,layers,keep", [("v2drop", [2, 4], [0.5, 0.5]), ("pdrop", [1, 3], [0.5, 0.25]),
                                                ("fastv", [2], [0.25])])
def test_pruning_matches_transformers_layers(eager_model, policy, layers, keep):
    inputs = multimodal_inputs([[(8, 8), (2, 4, 8)]], arch_of(eager_model), seed=3)  # 16 image + 16 video tokens
    res = oracle_prefill(eager_model, inputs, policy, layers, keep)
    kept, logits = _hf_pruned(eager_model, inputs, policy, layers, keep)
    for layer in range(TEXT_LAYERS):
        assert torch.equal(res.kept[layer], kept[layer]), layer
    torch.testing.assert_close(res.last_logits, logits, atol=1e-4, rtol=0)


@pytest.mark.parametrize("kind", ["image", "video"])
def test_generate_batch3_left_padding(model, kind):
    arch = arch_of(model)
    if kind == "image":
        inputs = image_inputs([(4, 4), (8, 6), [(4, 4), (6, 6)]], arch, seed=1)
    else:
        inputs = video_inputs([(2, 4, 4), (2, 6, 4), [(2, 4, 4), (3, 4, 4)]], arch, seed=1)
    assert inputs["attention_mask"][:, 0].tolist() != [1, 1, 1]  # rows of different lengths, left padded
    with torch.no_grad():
        batch_logits = model(**inputs).logits[:, -1]
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape == (3, inputs["input_ids"].shape[1] + 3)
    for row in range(3):
        single = select_row(inputs, row)
        res = oracle_prefill(model, single, "none", [], [])
        torch.testing.assert_close(batch_logits[row], res.last_logits, atol=1e-4, rtol=0)
        assert out[row, inputs["input_ids"].shape[1]] == res.last_logits.argmax()


def test_save_and_reload(tmp_path):
    from transformers import AutoModelForImageTextToText

    folder = save_tiny_qwen_vl(tmp_path / "qwen2-vl", "qwen2-vl", seed=5, layers=2)
    reloaded = AutoModelForImageTextToText.from_pretrained(folder).eval()
    fresh = tiny_qwen_vl("qwen2-vl", seed=5, layers=2)
    inputs = image_inputs([(4, 4)])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, fresh(**inputs).logits)


def test_rope_index_after_video(model):
    """transformers 5.23: text after a video resumes at start + max(h, w) / 2, whatever the video's length."""
    arch = arch_of(model)
    inputs = video_inputs([(3, 4, 4)], arch, before=[[1, 5]], after=[[7, 8]])
    pos = full_positions(model, inputs)
    start = 3  # bos, 5, <vision_start>
    step = 2 if arch == "qwen2.5-vl" else 1  # tokens_per_second * second_per_grid_t (= 2 * 1.0) on 2.5-VL
    video = pos[:, start:start + 12]
    assert video[0].unique().tolist() == [start + step * t for t in range(3)]
    assert video[1].unique().tolist() == video[2].unique().tolist() == [start, start + 1]
    assert pos[0, start + 12].item() == start + 2  # <vision_end>


# ----------------------------------------------------------------------------------------------------------------
# Qwen3-VL: q/k RMSNorm, interleaved M-RoPE, DeepStack (features added after decoder layers 0 and 1), videos as
# one timestamped span per frame.

QWEN3_CASES = {
    "image": lambda: image_inputs([(8, 8)], QWEN3_ARCH),  # 16 visual tokens
    "video": lambda: video_inputs([(3, 4, 6)], QWEN3_ARCH),  # 3 frames of 6
    "image_video": lambda: multimodal_inputs([[(4, 6), (2, 4, 4)]], QWEN3_ARCH),  # 6 + 2 frames of 4
    "video_image": lambda: multimodal_inputs([[(2, 6, 4), (8, 4)]], QWEN3_ARCH, seed=2),  # video first: joint order
    "text": lambda: text_inputs([prompt_ids(9)]),
}
# DeepStack adds after layers 0 and 1: drops before layer 1 (V²Drop, FastV K=1), inside layer 0 or 1 (PyramidDrop),
# and V²Drop's score across a DeepStack layer (before 1 and 2: inputs with the add)
QWEN3_SCHEDULES = [("v2drop", [1, 2], [0.5, 0.5]), ("v2drop", [1], [0.0]), ("pdrop", [0, 2, 4], [0.6, 0.6, 0.6]),
                   ("pdrop", [1, 3], [0.5, 0.25]), ("fastv", [1], [0.5]), ("fastv", [2], [0.25])]


@pytest.fixture(scope="module")
def qwen3():
    return tiny_qwen_vl(QWEN3_ARCH, seed=1)


@pytest.fixture(scope="module")
def qwen3_eager():
    return tiny_qwen_vl(QWEN3_ARCH, seed=2, attn_implementation="eager")


def test_qwen3_tiny_config(qwen3):
    att = qwen3.model.language_model.layers[0].self_attn
    assert att.q_norm.weight.shape == att.k_norm.weight.shape == (16,)
    rope = qwen3.config.text_config.rope_parameters
    assert rope["mrope_interleaved"] and sum(rope["mrope_section"]) == 8
    assert len(qwen3.config.vision_config.deepstack_visual_indexes) == DEEPSTACK_LEVELS == 2


@pytest.mark.parametrize("case", list(QWEN3_CASES))
def test_qwen3_none_matches_transformers(qwen3, case):
    assert_unpruned_oracle_is_transformers(qwen3, QWEN3_CASES[case]())


def test_qwen3_the_match_needs_deepstack_and_qk_norm(qwen3):
    """The 1e-4 match above is no accident: without DeepStack's adds or without q/k norms the logits move."""
    inputs = QWEN3_CASES["image_video"]()
    res = oracle_prefill(qwen3, inputs, "none", [], [])
    lm = qwen3.model.language_model

    def no_deepstack(module, args, kwargs):
        kwargs["deepstack_visual_embeds"] = [torch.zeros_like(f) for f in kwargs["deepstack_visual_embeds"]]
        return args, kwargs

    hook = lm.register_forward_pre_hook(no_deepstack, with_kwargs=True)
    try:
        with torch.no_grad():
            plain = qwen3(**inputs).logits[0, -1]
    finally:
        hook.remove()
    assert (plain - res.last_logits).abs().max() > 1e-2
    norm = lm.layers[2].self_attn.q_norm
    saved = norm.weight.detach().clone()
    with torch.no_grad():
        norm.weight.mul_(1.5)
        try:
            assert (qwen3(**inputs).logits[0, -1] - res.last_logits).abs().max() > 1e-2
            torch.testing.assert_close(oracle_prefill(qwen3, inputs, "none", [], []).last_logits,
                                       qwen3(**inputs).logits[0, -1], atol=1e-4, rtol=0)
        finally:
            norm.weight.copy_(saved)


def test_qwen3_interleaved_rope_equals_transformers(qwen3):
    """Frequency j on plane H (j % 3 == 1, j < 6), W (j % 3 == 2, j < 6), else T: transformers' own cos/sin."""
    pos = torch.randint(0, 50, (3, 1, 11))
    x = torch.zeros(1, 11, 64)
    cos, sin = qwen3.model.language_model.rotary_emb(x, pos)
    assert QWEN3_MROPE_SECTION == [4, 2, 2] and HEAD_DIM == 16
    mine_cos, mine_sin = mrope_cos_sin(pos[:, 0], HEAD_DIM, QWEN3_ROPE_THETA, QWEN3_MROPE_SECTION, interleaved=True)
    torch.testing.assert_close(mine_cos, cos[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(mine_sin, sin[0], atol=1e-6, rtol=0)
    contiguous, _ = mrope_cos_sin(pos[:, 0], HEAD_DIM, QWEN3_ROPE_THETA, QWEN3_MROPE_SECTION)
    assert (contiguous - cos[0]).abs().max() > 1e-2


def test_qwen3_video_prompt_and_positions(qwen3):
    """Each frame: timestamp text, then its own <vision_start> span <vision_end>; get_rope_index splits the grid per
    frame (t = 1): a frame's temporal plane is its start, height / width start + 0 .. h/2-1, then the text resumes
    at start + max(h, w) / 2 (time shows only in the timestamp text)."""
    inputs = video_inputs([(3, 4, 6)], QWEN3_ARCH, before=[[1, 5]], after=[[7, 8]], fps=2.0)
    ids = inputs["input_ids"][0].tolist()
    frame = [VISION_START] + [VIDEO_TOKEN] * 6 + [VISION_END]
    assert frame_times(3, 2.0) == [0.25, 1.25, 2.25]
    assert ids == [1, 5, *(i for s in (0.25, 1.25, 2.25) for i in timestamp_ids(s) + frame), 7, 8]
    assert timestamp_ids(1.25) == [50, 61, 51, 62, 52]  # "<1.2 seconds>" (f"{1.25:.1f}")
    pos = full_positions(qwen3, inputs)
    res = oracle_prefill(qwen3, inputs, "none", [], [])
    assert torch.equal(res.positions[0], pos)
    at = 0
    for f in range(3):
        at = ids.index(VISION_START, at) + 1
        start = pos[0, at - 1].item() + 1
        video = pos[:, at:at + 6]
        assert video[0].tolist() == [start] * 6
        assert video[1].tolist() == [start, start, start, start + 1, start + 1, start + 1]
        assert video[2].tolist() == [start, start + 1, start + 2] * 2
        assert pos[:, at + 6].tolist() == [start + 3] * 3  # <vision_end>
    assert pos[:, -1].tolist() == [pos.max().item()] * 3  # the last (text) position is the largest


@pytest.mark.parametrize("policy,layers,keep", QWEN3_SCHEDULES)
def test_qwen3_schedule_and_positions(qwen3, policy, layers, keep):
    inputs = multimodal_inputs([[(2, 6, 6), (8, 8)]], QWEN3_ARCH, seed=4)  # 2 frames of 9, then 16 image tokens
    check_schedule(qwen3, inputs, policy, layers, keep)


@pytest.mark.parametrize("policy,layers,keep", [*QWEN3_SCHEDULES, ("pdrop", [0, 1], [0.5, 0.5])])
def test_qwen3_pruning_matches_transformers_layers(qwen3_eager, policy, layers, keep):
    """Through transformers' own decoder layers (q/k norms, rotary) and the DeepStack rows transformers built."""
    inputs = multimodal_inputs([[(2, 4, 8), (8, 8)]], QWEN3_ARCH, seed=3)  # 2 frames of 8 video, then 16 image
    res = oracle_prefill(qwen3_eager, inputs, policy, layers, keep)
    kept, logits = _hf_pruned(qwen3_eager, inputs, policy, layers, keep)
    for layer in range(TEXT_LAYERS):
        assert torch.equal(res.kept[layer], kept[layer]), layer
    torch.testing.assert_close(res.last_logits, logits, atol=1e-4, rtol=0)
    base = oracle_prefill(qwen3_eager, inputs, "none", [], [])
    assert (res.last_logits - base.last_logits).abs().max() > 1e-3  # the pruning changed something


@pytest.mark.parametrize("policy,layers", [("v2drop", [1, 2]), ("pdrop", [0, 1, 5]), ("fastv", [1])])
def test_qwen3_keep_all_is_none(qwen3, policy, layers):
    inputs = QWEN3_CASES["image_video"]()
    base = oracle_prefill(qwen3, inputs, "none", [], [])
    res = oracle_prefill(qwen3, inputs, policy, layers, [1.0] * len(layers))
    torch.testing.assert_close(res.last_logits, base.last_logits, atol=1e-5, rtol=0)


def test_qwen3_generate_batch3_left_padding(qwen3):
    """Left-padded batch of 3 (image, video, image + video): prefill logits per row equal the oracle's on that
    row alone, generate runs, and decode positions continue from the row's last prompt position + 1 (equal to
    transformers' rope_deltas + unpadded length) on all three planes."""
    inputs = multimodal_inputs([[(4, 4)], [(2, 4, 6)], [(4, 6), (3, 4, 4)]], QWEN3_ARCH, seed=1)
    assert inputs["attention_mask"][:, 0].tolist() != [1, 1, 1]
    captured = []
    hook = qwen3.model.language_model.rotary_emb.register_forward_hook(lambda m, a, o: captured.append(a[1]))
    try:
        with torch.no_grad():
            batch_logits = qwen3(**inputs).logits[:, -1]
            captured.clear()
            out = qwen3.generate(**inputs, max_new_tokens=4, do_sample=False)
    finally:
        hook.remove()
    width = inputs["input_ids"].shape[1]
    assert out.shape == (3, width + 4)
    assert len(captured) == 4 and captured[0].shape == (3, 3, width)
    for row in range(3):
        res = oracle_prefill(qwen3, select_row(inputs, row), "none", [], [])
        torch.testing.assert_close(batch_logits[row], res.last_logits, atol=1e-4, rtol=0)
        assert out[row, width] == res.last_logits.argmax()
        last = res.positions[0][:, -1]
        assert torch.equal(captured[0][:, row, -1], last)
        for step in range(1, 4):
            assert captured[step][:, row, 0].tolist() == (last + step).tolist()
    single = qwen3.generate(**select_row(inputs, 2), max_new_tokens=4, do_sample=False)
    assert torch.equal(single[0, -4:], out[2, -4:])


def test_qwen3_save_and_reload(tmp_path):
    from transformers import AutoModelForImageTextToText

    folder = save_tiny_qwen_vl(tmp_path / "qwen3-vl", QWEN3_ARCH, seed=5, layers=2)
    reloaded = AutoModelForImageTextToText.from_pretrained(folder).eval()
    assert type(reloaded).__name__ == "Qwen3VLForConditionalGeneration"
    fresh = tiny_qwen_vl(QWEN3_ARCH, seed=5, layers=2)
    inputs = multimodal_inputs([[(4, 4), (2, 4, 4)]], QWEN3_ARCH)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, fresh(**inputs).logits)
