"""The pruning oracle (oracle.py) on Qwen2-VL / Qwen2.5-VL against transformers' own models (the LLaVA family:
test_llava_next.py, test_llava_onevision.py)."""

from __future__ import annotations

import pytest
import torch

from oracle import oracle_prefill
from qwen_helpers import (ARCHS, IMAGE_TOKEN, TEXT_LAYERS, VIDEO_TOKEN, image_inputs, multimodal_inputs, prompt_ids,
                          save_tiny_qwen_vl, select_row, text_inputs, tiny_qwen_vl, video_inputs)

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
    return "qwen2-vl" if model.config.model_type == "qwen2_vl" else "qwen2.5-vl"


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
    inputs = CASES[case](arch_of(model))
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
    """
    lm = model.model.language_model
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
    h = out.hidden_states[0][0]  # embeddings with the visual features
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
