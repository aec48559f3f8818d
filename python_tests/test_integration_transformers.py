"""v2drop_kernels.integrations.transformers: transformers' own generate, pruned, equals the reference decoder."""

from __future__ import annotations

import pytest
import torch

from model_helpers import left_pad, prompt, save_tiny_llava

pytest.importorskip("transformers")
from transformers import LlavaForConditionalGeneration  # noqa: E402

from v2drop_kernels.integrations.transformers import enable_pruning  # noqa: E402
from v2drop_kernels.models import FastV, PyramidDrop, V2Drop, load_llava  # noqa: E402

PROMPTS = [prompt([1, 5, 6], 1, [7, 8, 9, 10]), prompt([1, 21, 22, 23, 24, 25, 26], 1, [30, 31])]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    path = save_tiny_llava(tmp_path_factory.mktemp("tiny_llava_hf"), seed=4)
    return LlavaForConditionalGeneration.from_pretrained(path).eval(), load_llava(path)


def pixels(n, seed=0):
    return torch.randn(n, 3, 28, 28, generator=torch.Generator().manual_seed(seed))


POLICIES = {
    "v2drop": lambda: V2Drop(layers=(1, 3, 4), keep=(0.5, 0.5, 0.0)),
    "pdrop": lambda: PyramidDrop(layers=(2, 4), ratio=0.5),
    "fastv": lambda: FastV(k=2, r=0.5),
}


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_generate_prunes_like_the_reference_decoder(models, name):
    hf, ours = models
    ids, mask = left_pad(PROMPTS)
    pix = pixels(2, seed=1)
    new = 10
    handle = enable_pruning(hf, POLICIES[name]())
    try:
        with torch.no_grad():
            got = hf.generate(input_ids=ids, attention_mask=mask, pixel_values=pix, max_new_tokens=new, do_sample=False,
                              pad_token_id=0)[:, ids.shape[1]:]
        columns = handle.layer_columns()
        trace = handle.trace
    finally:
        handle.disable()
    expected = ours.generate(PROMPTS, pix, max_new_tokens=new, policy=POLICIES[name]())
    assert got.tolist() == expected.tokens.tolist()
    assert trace.visual_per_layer == expected.trace.visual_per_layer
    pad = (mask == 0).sum(1)
    for layer, (cols, positions) in enumerate(zip(columns, expected.layer_positions)):
        prefill = cols[:, : positions.shape[1]]
        for b in range(2):  # the same prompt tokens reached every layer (column = prompt index + padding)
            assert torch.equal((prefill[b] - pad[b])[prefill[b] >= pad[b]], positions[b][positions[b] >= 0]), (layer, b)
    # and pruning is really on: the stock model generates from every visual token
    with torch.no_grad():
        stock = hf.generate(input_ids=ids, attention_mask=mask, pixel_values=pix, max_new_tokens=new, do_sample=False,
                            pad_token_id=0)[:, ids.shape[1]:]
    assert stock.tolist() == ours.generate(PROMPTS, pix, max_new_tokens=new).tokens.tolist()


def test_a_share_of_the_prompt_in_a_batch_of_different_counts(models):
    """keep "50%", "25%" (of each prompt's visual tokens) on rows of 2 and 1 images, which transformers'
    generate runs packed: the package model's counts, tokens and kept sets."""
    hf, ours = models
    prompts = [prompt([1, 5], 2, [7, 8]), prompt([1, 21, 22], 1, [30, 31])]
    ids, mask = left_pad(prompts)
    pix = pixels(3, seed=6)
    handle = enable_pruning(hf, V2Drop(layers=(2, 4), keep=("50%", "25%")))
    try:
        with torch.no_grad():
            got = hf.generate(input_ids=ids, attention_mask=mask, pixel_values=pix, max_new_tokens=6, do_sample=False,
                              pad_token_id=0)[:, ids.shape[1]:]
        columns, trace = handle.layer_columns(), handle.trace
    finally:
        handle.disable()
    expected = ours.generate(prompts, pix, max_new_tokens=6, policy=V2Drop(layers=(2, 4), keep=("50%", "25%")))
    assert got.tolist() == expected.tokens.tolist()
    assert trace.visual_per_layer == expected.trace.visual_per_layer
    visual = expected.trace.visual_per_layer
    assert visual[0] == [2 * visual[0][1], visual[0][1]] and visual[-1] == [visual[0][0] // 4, visual[0][1] // 4]
    pad = (mask == 0).sum(1)
    for cols, positions in zip(columns, expected.layer_positions):
        prefill = cols[:, : positions.shape[1]]
        for b in range(2):
            assert torch.equal((prefill[b] - pad[b])[prefill[b] >= pad[b]], positions[b][positions[b] >= 0])


def test_forward_logits_of_the_survivors(models):
    hf, ours = models
    ids, pix = PROMPTS[0], pixels(1, seed=2)
    policy = V2Drop(layers=(2, 4), keep=(0.5, 0.0))
    handle = enable_pruning(hf, policy)
    try:
        with torch.no_grad():
            got = hf(input_ids=ids[None], pixel_values=pix).logits[0]
    finally:
        handle.disable()
    expected, tokens = ours([ids], pix, policy=V2Drop(layers=(2, 4), keep=(0.5, 0.0)))
    assert got.shape[0] == ids.numel() - 49 + 1
    torch.testing.assert_close(got, expected[0], atol=1e-4, rtol=0)


def test_disable_restores_the_stock_model(models):
    hf, _ = models
    ids, pix = PROMPTS[1], pixels(1, seed=3)
    with torch.no_grad():
        before = hf(input_ids=ids[None], pixel_values=pix).logits
        enable_pruning(hf, V2Drop(layers=(1,), keep=(0.5,))).disable()
        after = hf(input_ids=ids[None], pixel_values=pix).logits
    assert torch.equal(before, after)
    with pytest.raises(ValueError, match="outside"):
        enable_pruning(hf, V2Drop())  # default layers 3, 17, 22 do not fit 6 layers
