"""The reference LLaVA decoder: parity with transformers, layouts, and what each policy prunes."""

from __future__ import annotations

import pytest
import torch

from helpers import CUDA_EMULATED as EMULATED
from model_helpers import IMAGE_TOKEN, TEXT_LAYERS, TOKENS_PER_IMAGE, Recorder, left_pad, prompt, rows, save_tiny_llava

pytest.importorskip("transformers")
from transformers import LlavaForConditionalGeneration  # noqa: E402

from v2drop_kernels import reference  # noqa: E402
from v2drop_kernels.models import FastV, Policy, PyramidDrop, V2Drop, load_llava, make_policy  # noqa: E402
from v2drop_kernels.models.policies import kept_count  # noqa: E402

V = TOKENS_PER_IMAGE


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_llava(tmp_path_factory.mktemp("tiny_llava"))


@pytest.fixture(scope="module")
def hf(checkpoint):
    return LlavaForConditionalGeneration.from_pretrained(checkpoint, attn_implementation="eager").eval()


@pytest.fixture(scope="module")
def ours(checkpoint):
    return load_llava(checkpoint)


def pixels(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 28, 28, generator=torch.Generator().manual_seed(seed))


PROMPTS = [prompt([1, 5, 6], 1, [7, 8, 9, 10]), prompt([1, 21, 22, 23, 24, 25, 26], 1, [30, 31])]


# -- parity with transformers (pruning off) ----------------------------------------------------------
def test_logits_match_transformers(hf, ours):
    ids, pix = PROMPTS[0], pixels(1)
    with torch.no_grad():
        expected = hf(input_ids=ids[None], pixel_values=pix).logits[0]
    logits, tokens = ours([ids], pix)
    torch.testing.assert_close(logits[0], expected, atol=1e-4, rtol=0)
    assert tokens.orig_pos[0].tolist() == list(range(ids.numel()))


def test_batch_of_different_lengths_matches_transformers(hf, ours):
    ids, mask = left_pad(PROMPTS)
    pix = pixels(2)
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask, pixel_values=pix).logits
    for layout in ("padded", "packed"):
        logits, tokens = ours(PROMPTS, pix, layout=layout)
        for row, p in enumerate(PROMPTS):
            n = p.numel()
            got = logits[row, -n:] if layout == "padded" else logits[int(tokens.cu_seqlens[row]) : int(tokens.cu_seqlens[row + 1])]
            torch.testing.assert_close(got, expected[row, -n:], atol=1e-4, rtol=0, msg=f"{layout} row {row}")


def test_greedy_tokens_match_transformers_generate(hf, ours):
    ids, mask = left_pad(PROMPTS)
    pix = pixels(2)
    new = 12
    with torch.no_grad():
        expected = hf.generate(input_ids=ids, attention_mask=mask, pixel_values=pix, max_new_tokens=new, do_sample=False,
                               pad_token_id=0)[:, ids.shape[1]:]
    for layout in ("padded", "packed"):
        got = ours.generate(PROMPTS, pix, max_new_tokens=new, layout=layout).tokens
        assert got.tolist() == expected.tolist(), layout


def test_packed_rows_with_different_image_counts_match_single_runs(ours):
    prompts = [prompt([1, 5], 2, [7, 8]), prompt([1, 9, 9, 4], 0, [3]), prompt([1], 1, [6, 6, 7])]
    pix = pixels(3, seed=3)
    batched = ours.generate(prompts, pix, max_new_tokens=6, layout="auto", policy=V2Drop(layers=(2, 4), keep=(0.5, 1)))
    singles = [ours.generate([prompts[0]], pix[:2], max_new_tokens=6, policy=V2Drop(layers=(2, 4), keep=(0.5, 1))),
               ours.generate([prompts[1]], None, max_new_tokens=6, policy=V2Drop(layers=(2, 4), keep=(0.5, 1))),
               ours.generate([prompts[2]], pix[2:], max_new_tokens=6, policy=V2Drop(layers=(2, 4), keep=(0.5, 1)))]
    for row, single in enumerate(singles):
        torch.testing.assert_close(batched.prefill_logits[row], single.prefill_logits[0], atol=1e-4, rtol=0)
        assert batched.tokens[row].tolist() == single.tokens[0].tolist()
        assert [v[row] for v in batched.trace.visual_per_layer] == [v[0] for v in single.trace.visual_per_layer]
    assert batched.trace.visual_per_layer[-1] == [1, 0, 1]


def test_forward_resolves_layout_auto_as_generate_does(ours):
    """``layout="auto"`` in the prefill-only forward: padded for rows with equal image counts,
    packed otherwise, with the logits of the explicit layout."""
    pix = pixels(2)
    for prompts, images, expected in ((PROMPTS, pix, "padded"), ([prompt([1, 5], 2, [7]), prompt([1, 4], 0, [3])], pix, "packed")):
        auto_logits, auto_tokens = ours(prompts, images, layout="auto")
        logits, tokens = ours(prompts, images, layout=expected)
        assert auto_tokens.packed == (expected == "packed")
        torch.testing.assert_close(auto_logits, logits, atol=0, rtol=0)
    with pytest.raises(ValueError, match="layout must be 'padded', 'packed' or 'auto', got 'ragged'"):
        ours(PROMPTS, pix, layout="ragged")


def test_loads_both_key_layouts_and_tied_embeddings(tmp_path):
    """The llava-hf layout (what transformers 5 writes) and the 4.52+ one (model.language_model.*)."""
    from safetensors.torch import load_file, save_file

    ckpt = save_tiny_llava(tmp_path / "a", seed=1)
    state = load_file(str(ckpt / "model.safetensors"))
    renamed = {}
    for key, value in state.items():
        if key.startswith("language_model.model."):
            key = "model.language_model." + key[len("language_model.model."):]
        elif key.startswith("language_model.lm_head."):
            key = key[len("language_model."):]
        else:
            key = "model." + key
        renamed[key] = value
    (tmp_path / "b").mkdir()
    save_file(renamed, str(tmp_path / "b" / "model.safetensors"))
    (tmp_path / "b" / "config.json").write_text((ckpt / "config.json").read_text())
    ids, pix = PROMPTS[0], pixels(1)
    a, _ = load_llava(ckpt)([ids], pix)
    b, _ = load_llava(tmp_path / "b")([ids], pix)
    assert torch.equal(a, b)

    tied = save_tiny_llava(tmp_path / "tied", seed=2, tie=True)
    hf_tied = LlavaForConditionalGeneration.from_pretrained(tied).eval()
    with torch.no_grad():
        expected = hf_tied(input_ids=ids[None], pixel_values=pix).logits[0]
    torch.testing.assert_close(load_llava(tied)([ids], pix)[0][0], expected, atol=1e-4, rtol=0)


def test_bad_checkpoints_and_inputs(tmp_path, ours):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_llava(tmp_path)
    with pytest.raises(ValueError, match="image tokens"):
        ours([PROMPTS[0]], pixels(2))
    with pytest.raises(ValueError, match="no pixel_values"):
        ours([PROMPTS[0]])
    with pytest.raises(ValueError, match="same number of image tokens"):
        ours([PROMPTS[0], prompt([1], 0, [2])], pixels(1), layout="padded")


# -- pruning -----------------------------------------------------------------------------------------
def kept(positions, b):
    """Prompt indices held by a layer's KV cache for row ``b`` (padding dropped)."""
    row = positions[b]
    return row[row >= 0]


@pytest.mark.parametrize("layout", ["padded", "packed"])
@pytest.mark.parametrize("backend", ["cpu", "reference", EMULATED])
def test_v2drop_keeps_what_the_reference_chooses(ours, layout, backend):
    layers, keep = (1, 3, 4), (0.5, 12, 0.0)
    policy = Recorder(layers=layers, keep=keep)
    pix = pixels(2, seed=5)
    out = ours.generate(PROMPTS, pix, max_new_tokens=4, policy=policy, layout=layout, backend=backend)
    counts = [24, 12, 1]  # 49 -> floor(0.5 * 49) -> min(12, 24) -> floor of one
    assert [kept_count(r, v) for r, v in zip(keep, [V, 24, 12])] == counts
    for layer in range(TEXT_LAYERS):
        stage = sum(layer >= l for l in layers)
        visual = V if stage == 0 else counts[stage - 1]
        assert out.trace.visual_per_layer[layer] == [visual, visual]
        for b, p in enumerate(PROMPTS):  # per-layer KV length follows the schedule
            assert kept(out.layer_positions[layer], b).numel() == p.numel() - V + visual
    for layer, k in zip(layers, counts):
        seen = policy.seen[layer]
        for b in range(2):
            hidden, prev, vis, orig = (rows(seen[n], seen["cu_seqlens"], b)[None] for n in ("hidden", "prev", "vis_mask", "orig_pos"))
            keep_idx, scores = reference.variation_topk(hidden, prev, vis, k)
            expected = torch.sort(torch.cat([orig[~vis], orig[0, keep_idx[0]]])).values
            expected = expected[expected >= 0]
            # layer `layer`'s cache holds exactly the text and the reference's choice, in order
            assert torch.equal(kept(out.layer_positions[layer], b), expected)
            torch.testing.assert_close(rows(out.trace.scores[layer][0], seen["cu_seqlens"], b), scores[0])
    # survivors stay in their original order in every layer's cache
    assert all(torch.equal(kept(p, b), kept(p, b).sort().values) for p in out.layer_positions for b in range(2))


@pytest.mark.parametrize("layout", ["padded", "packed"])
@pytest.mark.parametrize("backend", ["cpu", EMULATED])
def test_pruned_generation_is_the_same_through_every_backend(ours, layout, backend):
    pix = pixels(2, seed=7)
    runs = [ours.generate(PROMPTS, pix, max_new_tokens=6, policy=V2Drop(layers=(1, 3), keep=(0.5, 0.25)), layout=layout, backend=b)
            for b in (backend, "reference")]
    assert torch.equal(runs[0].tokens, runs[1].tokens)
    assert all(torch.equal(a, b) for a, b in zip(runs[0].layer_positions, runs[1].layer_positions))


def hf_last_row_attention(hf, ids, pix, layer):
    """transformers' own (eager) attention weights of the last token at ``layer``, head mean."""
    with torch.no_grad():
        att = hf(input_ids=ids[None], pixel_values=pix, output_attentions=True).attentions[layer]
    return att[0, :, -1].mean(0)


def test_pdrop_ranks_by_the_boundary_layers_last_token_attention(hf, ours):
    ids, pix = PROMPTS[1], pixels(1, seed=9)
    out = ours.generate([ids], pix, max_new_tokens=3, policy=PyramidDrop(layers=(2, 4), ratio=0.5))
    scores, _ = out.trace.scores[2]
    torch.testing.assert_close(scores[0], hf_last_row_attention(hf, ids, pix, 2), atol=1e-5, rtol=1e-4)
    vis = ids == IMAGE_TOKEN
    keep_idx, _ = reference.variation_topk(scores[:, :, None], torch.zeros_like(scores[:, :, None]), vis[None], 24)
    expected = torch.sort(torch.cat([torch.nonzero(~vis)[:, 0], keep_idx[0]])).values
    assert torch.equal(kept(out.layer_positions[2], 0), expected)  # layer 2 attends only the survivors
    assert [len(kept(p, 0)) for p in out.layer_positions] == [ids.numel()] * 2 + [ids.numel() - 25] * 2 + [ids.numel() - 37] * 2


def test_fastv_ranks_by_layer_k_minus_1_attention(hf, ours):
    ids, pix = PROMPTS[0], pixels(1, seed=11)
    out = ours.generate([ids], pix, max_new_tokens=3, policy=FastV(k=2, r=0.75))
    scores, _ = out.trace.scores[2]
    torch.testing.assert_close(scores[0], hf_last_row_attention(hf, ids, pix, 1), atol=1e-5, rtol=1e-4)
    assert out.trace.visual_per_layer == [[V], [V], [12], [12], [12], [12]]


@pytest.mark.parametrize("layout", ["padded", "packed"])
@pytest.mark.parametrize("name", ["pdrop", "fastv", "v2drop"])
def test_every_policy_runs_in_both_layouts(ours, name, layout):
    policy = make_policy(name, layers=[2] if name == "fastv" else [2, 4], keep=[0.5] if name == "fastv" else [0.5, 0.0])
    pix = pixels(2, seed=13)
    a = ours.generate(PROMPTS, pix, max_new_tokens=5, policy=policy, layout=layout)
    b = ours.generate(PROMPTS, pix, max_new_tokens=5, policy=policy, layout="padded")
    assert torch.equal(a.tokens, b.tokens)
    torch.testing.assert_close(a.prefill_logits, b.prefill_logits, atol=1e-4, rtol=0)
    assert a.trace.visual_per_layer[-1] == ([24, 24] if name == "fastv" else [1, 1])
    assert a.kv_cache_bytes < ours.generate(PROMPTS, pix, max_new_tokens=5, layout=layout).kv_cache_bytes


def test_policy_arguments_are_checked(ours):
    with pytest.raises(ValueError, match="outside"):
        ours.generate([PROMPTS[0]], pixels(1), policy=V2Drop())  # layers 3, 17, 22 in a 6-layer decoder
    with pytest.raises(ValueError, match="keep has 2 entries"):
        V2Drop(layers=(1, 2, 3), keep=(0.5, 0.5))
    with pytest.raises(ValueError, match="ratio"):
        V2Drop(layers=(1,), keep=(1.5,))
    with pytest.raises(ValueError, match="count"):
        V2Drop(layers=(1,), keep=(0,))
    with pytest.raises(ValueError, match="increasing"):
        PyramidDrop(layers=(4, 2))
    with pytest.raises(ValueError, match="unknown policy"):
        make_policy("random")
    assert kept_count(0.0, 576) == 1 and kept_count(0.5, 576) == 288 and kept_count(700, 576) == 576
    assert kept_count(0.5, 0) == 0
    assert Policy().describe() == "none"


def test_keep_as_a_share_of_the_prompt():
    """A keep entry "25%" (OfPrompt) counts from the row's prompt, not from what is left; it is
    checked like the other rules, in every policy."""
    from v2drop_kernels.models import OfPrompt
    from v2drop_kernels.models.policies import visual_per_stage

    assert V2Drop(layers=(1, 2), keep=("25%", " 5% ")).keep == (OfPrompt(0.25), OfPrompt(0.05))
    assert kept_count(OfPrompt(0.05), 144, 576) == 28 and kept_count(OfPrompt(0.5), 100, 576) == 100  # capped at what is left
    assert kept_count(OfPrompt(0.0), 144, 576) == 1 and kept_count(OfPrompt(0.5), 0, 576) == 0
    assert kept_count(V2Drop(layers=(1,), keep=("29%",)).keep[0], 100, 100) == 29  # exact: 0.29 * 100 is 28.99... in floats
    with pytest.raises(ValueError, match="prompt's count"):
        kept_count(OfPrompt(0.5), 144)
    assert visual_per_stage(V2Drop(schedule="llava-ov"), 576) == [144, 28, 1]
    assert visual_per_stage(V2Drop(schedule="qwen2-vl"), 576) == [144, 7, 1]  # 5 % of what is left
    assert V2Drop(schedule="llava-ov").describe() == "v2drop(layers=[3, 16, 22], keep=[25%, 5%, 0.0])"
    for bad, match in (("150%", "ratio"), ("x%", "percentages"), ("25", "percentages")):
        with pytest.raises(ValueError, match=match):
            V2Drop(layers=(1,), keep=(bad,))
    with pytest.raises(ValueError, match="count"):
        FastV(keep=0)
    with pytest.raises(ValueError, match="ratio"):
        PyramidDrop(layers=(2,), keep=("101%",))


@pytest.mark.parametrize("name", ["v2drop", "pdrop"])
def test_a_share_of_the_prompt_prunes_rows_of_different_counts(ours, name):
    """Rows of 2 and 1 images (packed): "50%", "25%" of each prompt keeps what 0.5, 0.5 of what is
    left keeps; rows of one image each (padded) keep a quarter."""
    prompts = [prompt([1, 5], 2, [7, 8]), prompt([1, 21, 22], 1, [30, 31])]
    pix = pixels(3, seed=19)
    percent = ours.generate(prompts, pix, max_new_tokens=4, policy=make_policy(name, [2, 4], ["50%", "25%"]), layout="packed")
    left = ours.generate(prompts, pix, max_new_tokens=4, policy=make_policy(name, [2, 4], [0.5, 0.5]), layout="packed")
    assert percent.trace.visual_per_layer == [[2 * V, V]] * 2 + [[V, V // 2]] * 2 + [[V // 2, V // 4]] * 2
    assert percent.tokens.tolist() == left.tokens.tolist()
    assert all(torch.equal(a, b) for a, b in zip(percent.layer_positions, left.layer_positions))
    same = [prompts[1], prompt([1, 5, 6], 1, [7, 8, 9])]
    out = ours.generate(same, pixels(2, seed=20), max_new_tokens=2, policy=make_policy(name, [2, 4], ["50%", "25%"]),
                        layout="padded")
    assert out.trace.visual_per_layer[-1] == [V // 4, V // 4]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", ["none", "v2drop", "pdrop", "fastv"])
def test_bf16_on_cuda_runs_both_layouts_alike(checkpoint, name):
    model = load_llava(checkpoint, dtype=torch.bfloat16, device="cuda")
    policy = make_policy(name, layers=None if name == "none" else ([2] if name == "fastv" else [2, 4]),
                         keep=None if name == "none" else ([0.5] if name == "fastv" else [0.5, 0.0]))
    pix = pixels(2, seed=17).cuda()
    padded = model.generate(PROMPTS, pix, max_new_tokens=6, policy=policy, layout="padded")
    packed = model.generate(PROMPTS, pix, max_new_tokens=6, policy=policy, layout="packed")
    assert padded.trace.visual_per_layer == packed.trace.visual_per_layer
    torch.testing.assert_close(padded.prefill_logits, packed.prefill_logits, atol=0.1, rtol=0.05)
    assert padded.peak_memory_bytes > 0


def test_a_model_on_the_weights_of_an_in_memory_transformers_model(hf):
    from v2drop_kernels.models import llava_from_transformers

    ours = llava_from_transformers(hf)
    assert ours.lm_head.weight.data_ptr() == hf.lm_head.weight.data_ptr()  # the same tensors, not copies
    ids, pix = PROMPTS[0], pixels(1)
    with torch.no_grad():
        expected = hf(input_ids=ids[None], pixel_values=pix).logits[0]
    torch.testing.assert_close(ours([ids], pix)[0][0], expected, atol=1e-4, rtol=0)
