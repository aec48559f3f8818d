"""Qwen3.5: the hybrid decoder (Gated DeltaNet layers between gated full-attention layers) unpruned and
pruned, against transformers and the plain-torch oracle (``oracle.py``).

The tiny model has six layers, full attention at layers 2 and 5 (``qwen_helpers.tiny_qwen_config``).
Unpruned, 32 greedy tokens equal transformers' ``generate`` (image, video, batches of 3 padded and
packed). Pruned by each policy (V²Drop before linear-attention layers, FastV ranked by layer 2,
PyramidDrop inside layers 2 and 5): the kept sets, planes and last logits equal the oracle's; the
linear-attention state after the pruned prefill (convolution window and recurrent state) equals the
oracle's run on the survivors; 32 decoded tokens equal the oracle's; transformers' own ``generate``
through ``enable_pruning`` equals the package's model in tokens and kept tokens per layer. (The
compiled decoder, reading nothing back and the CUDA graph decode run in test_decoder.py.)
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("transformers.models.qwen3_5")

from qwen_helpers import (QWEN35_ARCH, assert_kept_like_the_oracle, assert_transformers_keeps_the_package_tokens,  # noqa: E402
                          hf_generate, multimodal_inputs, ours_args, save_tiny_qwen_vl, select_row, tiny_qwen_vl)

from v2drop_kernels.integrations.transformers import enable_pruning  # noqa: E402
from v2drop_kernels.models import FastV, PyramidDrop, Qwen3_5, QwenVLConfig, TextConfig, V2Drop, load_model  # noqa: E402
from v2drop_kernels.models import qwen_vl_from_transformers  # noqa: E402
from v2drop_kernels.models.cache import KVCache  # noqa: E402
from v2drop_kernels.models.pruning import PruningContext  # noqa: E402

ATTENTION_LAYERS = (2, 5)
CASES = {  # visual items per row: (h, w) an image, (t, h, w) a video, in patches
    "image": [[(8, 8)]],
    "video": [[(3, 4, 4)]],  # three frames, a timestamp before each
    "batch3-packed": [[(8, 8)], [(4, 8)], [(8, 4), (2, 4, 4)]],  # different counts per row
    "batch3-padded": [[(4, 8)], [(2, 4, 4)], [(4, 8)]],  # the same count per row
}
POLICIES = {  # name: (the package's policy, the oracle's policy, layers, keep)
    "v2drop": (lambda: V2Drop(layers=(1, 3, 5), keep=(0.5, 0.5, 0.25)), ("v2drop", [1, 3, 5], [0.5, 0.5, 0.25])),
    "fastv-k3": (lambda: FastV(k=3, keep=0.5), ("fastv", [3], [0.5])),
    "pdrop-2-5": (lambda: PyramidDrop(layers=ATTENTION_LAYERS, keep=(0.5, 0.5)), ("pdrop", [2, 5], [0.5, 0.5])),
}
NEW = 32


@pytest.fixture(scope="module")
def models():
    hf = tiny_qwen_vl(QWEN35_ARCH, seed=5)
    return hf, qwen_vl_from_transformers(hf)


def test_the_tiny_model_has_what_this_file_tests(models):
    hf, ours = models
    text = ours.cfg.text
    assert isinstance(ours, Qwen3_5) and ours.cfg.deepstack_levels == 0
    assert text.attention_layers == ATTENTION_LAYERS and text.attn_output_gate and text.zero_centred_norms
    assert text.rotary_dim == text.head_dim // 2 and text.mrope_interleaved
    assert ours.language_model.layers[0].linear_attn.A_log.data_ptr() == \
        hf.model.language_model.layers[0].linear_attn.A_log.data_ptr()  # the same tensors


@pytest.mark.parametrize("case, layout", [*((case, "auto") for case in sorted(CASES)), ("batch3-padded", "packed")])
def test_unpruned_tokens_equal_transformers(models, case, layout):
    hf, ours = models
    inputs = multimodal_inputs(CASES[case], arch=QWEN35_ARCH, seed=3)
    prompts, vision = ours_args(inputs)
    got = ours.generate(prompts, **vision, max_new_tokens=NEW, layout=layout).tokens.tolist()
    assert got == hf_generate(hf, inputs, NEW)


@pytest.mark.parametrize("case", ["image", "video", "batch3-packed"])
@pytest.mark.parametrize("name", sorted(POLICIES))
def test_pruned_prefill_keeps_what_the_oracle_keeps(models, name, case):
    hf, ours = models
    assert_kept_like_the_oracle(hf, ours, multimodal_inputs(CASES[case], arch=QWEN35_ARCH, seed=1), *POLICIES[name])


@pytest.mark.parametrize("case", ["batch3-packed", "batch3-padded"])
@pytest.mark.parametrize("name", sorted(POLICIES))
def test_linear_state_after_a_pruned_prefill_is_the_oracle_s(models, name, case):
    """Each row's convolution window and recurrent state, at every linear-attention layer, after the
    batch's pruned prefill (padded or packed), equal the oracle's on that row's survivors alone."""
    from oracle import oracle_prefill

    hf, ours = models
    make, oracle_args = POLICIES[name]
    inputs = multimodal_inputs(CASES[case], arch=QWEN35_ARCH, seed=4)
    prompts, vision = ours_args(inputs)
    tokens = ours.inputs(prompts, "auto", **vision)
    assert tokens.packed == (case == "batch3-packed")
    cache = KVCache(len(ours.language_model.layers), 0)
    with torch.inference_mode():
        ours.decoder.prefill(tokens, make(), cache, PruningContext())
    linear = [i for i in range(len(ours.language_model.layers)) if i not in ATTENTION_LAYERS]
    assert sorted(cache.states) == linear
    for row in range(len(prompts)):
        want = oracle_prefill(hf, select_row(inputs, row), *oracle_args).linear_states
        for layer in linear:
            window, state = cache.states[layer]
            torch.testing.assert_close(window[row], want[layer][0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(state[row], want[layer][1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", ["image", "batch3-packed", "batch3-padded"])
@pytest.mark.parametrize("name", sorted(POLICIES))
def test_pruned_decode_equals_the_oracle(models, name, case):
    """32 greedy tokens of a pruned generation (the static decode step over the KV cache and the
    linear-attention states) equal the oracle's, which recomputes every step on the kept sets."""
    from oracle import oracle_generate

    hf, ours = models
    make, oracle_args = POLICIES[name]
    inputs = multimodal_inputs(CASES[case], arch=QWEN35_ARCH, seed=6)
    prompts, vision = ours_args(inputs)
    got = ours.generate(prompts, **vision, max_new_tokens=NEW, policy=make()).tokens.tolist()
    for row in range(len(prompts)):
        want, _ = oracle_generate(hf, select_row(inputs, row), *oracle_args, NEW)
        assert got[row][:len(want)] == want, row


@pytest.mark.parametrize("case", ["batch3-packed", "batch3-padded"])
@pytest.mark.parametrize("name", sorted(POLICIES))
def test_transformers_generate_prunes_like_the_package_model(models, name, case):
    hf, ours = models
    assert_transformers_keeps_the_package_tokens(hf, ours, multimodal_inputs(CASES[case], arch=QWEN35_ARCH, seed=2),
                                                 POLICIES[name][0])


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_transformers_pruned_decode_runs_on_its_hybrid_cache(models, name):
    """Through enable_pruning, 32 tokens of a pruned generation equal the package model's: the linear
    layers' states live in transformers' cache, updated in place by the decode steps (PyramidDrop
    drops inside layer 2, the layer get_seq_length reads, which keeps its width with holes)."""
    hf, ours = models
    make = POLICIES[name][0]
    inputs = multimodal_inputs(CASES["batch3-packed"], arch=QWEN35_ARCH, seed=7)
    prompts, vision = ours_args(inputs)
    handle = enable_pruning(hf, make())
    try:
        got = hf_generate(hf, inputs, NEW)
    finally:
        handle.disable()
    assert got == ours.generate(prompts, **vision, max_new_tokens=NEW, policy=make()).tokens.tolist()


def test_the_decode_graph_key_reads_every_layer_s_weights(models):
    """The captured decode graph is keyed on each layer's first input projection, a linear-attention
    layer's included (it has no q/k/v)."""
    _, ours = models
    key = ours.decoder.weights_key()
    layers = ours.language_model.layers
    assert len(key) == len(layers) == len(set(key))
    assert key[0] == layers[0].linear_attn.in_proj_qkv.weight.data_ptr()  # fused: the joined weight starts there
    assert key[2] == layers[2].self_attn.q_proj.weight.data_ptr()


def test_a_checkpoint_folder_loads(models, tmp_path):
    hf, ours = models
    folder = save_tiny_qwen_vl(tmp_path / "qwen3.5", QWEN35_ARCH, seed=5)
    loaded = load_model(folder)
    assert isinstance(loaded, Qwen3_5)
    inputs = multimodal_inputs(CASES["image"], arch=QWEN35_ARCH, seed=9)
    prompts, vision = ours_args(inputs)
    a = loaded.generate(prompts, **vision, max_new_tokens=4)
    b = ours.generate(prompts, **vision, max_new_tokens=4)
    assert torch.equal(a.tokens, b.tokens)
    torch.testing.assert_close(a.prefill_logits, b.prefill_logits, atol=1e-5, rtol=0)
    assert a.state_bytes > 0 and a.kv_cache_bytes > 0


# -- what is refused ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("make, layer", [(lambda: FastV(k=2), 1), (lambda: PyramidDrop(layers=(1, 5)), 1),
                                         (lambda: FastV(k=5), 4)])
def test_scores_of_a_linear_attention_layer_are_refused(models, make, layer):
    hf, ours = models
    inputs = multimodal_inputs(CASES["image"], arch=QWEN35_ARCH, seed=1)
    prompts, vision = ours_args(inputs)
    message = f"layer {layer} is a linear-attention layer"
    with pytest.raises(ValueError, match=message):
        ours.generate(prompts, **vision, max_new_tokens=2, policy=make())
    with pytest.raises(ValueError, match=message):
        enable_pruning(hf, make())


def test_the_published_defaults_fit_the_32_layer_model():
    from v2drop_kernels.models.loading import tiny_qwen_config

    text = tiny_qwen_config("qwen3_5", layers=32).text
    assert text.attention_layers == (3, 7, 11, 15, 19, 23, 27, 31)
    for policy in (V2Drop(schedule=Qwen3_5.v2drop_schedule), PyramidDrop(layers=Qwen3_5.pdrop_layers),
                   FastV(k=Qwen3_5.fastv_k)):
        policy.check(32, text.attention_layers)
    with pytest.raises(ValueError, match="linear-attention"):
        PyramidDrop().check(32, text.attention_layers)  # PyramidDrop's own 8, 16, 24 are linear layers here


def test_moe_variants_and_other_linear_attention_are_refused():
    with pytest.raises(NotImplementedError, match="mixture-of-experts"):
        QwenVLConfig.from_hf({"model_type": "qwen3_5_moe", "text_config": {}, "vision_config": {}})
    with pytest.raises(NotImplementedError, match="mixture-of-experts"):
        TextConfig.from_hf({"model_type": "qwen3_5_moe_text"})
    with pytest.raises(NotImplementedError, match="only Qwen3.5's"):
        TextConfig.from_hf({"model_type": "qwen2", "vocab_size": 8, "hidden_size": 8, "intermediate_size": 8,
                            "num_hidden_layers": 2, "num_attention_heads": 1,
                            "layer_types": ["linear_attention", "full_attention"]})
