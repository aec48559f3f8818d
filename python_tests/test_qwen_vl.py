"""Qwen2-VL / Qwen2.5-VL / Qwen3-VL: the package's model and transformers' own generate, pruned, on tiny
random models (Qwen3-VL's DeepStack-specific schedules: test_qwen3_vl.py).

Unpruned, both give exactly transformers' tokens (images, videos, batch 1 and 3 with left padding,
padded and packed layouts). Pruned, the visual tokens each layer keeps, with their M-RoPE planes, equal
those of an independent plain-torch implementation of the published algorithms (``oracle.py``),
and the KV cache holds only the survivors.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from oracle import oracle_prefill  # noqa: E402
from qwen_helpers import (ALL_ARCHS, IMAGE_TOKEN, VIDEO_TOKEN, assert_kept_like_the_oracle,  # noqa: E402
                          assert_transformers_keeps_the_package_tokens, hf_generate, multimodal_inputs, ours_args,
                          pruned_generate, save_tiny_qwen_vl, tiny_qwen_vl, visual_seen)

from v2drop_kernels.integrations.transformers import enable_pruning  # noqa: E402
from v2drop_kernels.models import (FastV, Policy, PyramidDrop, QwenVLConfig, V2Drop, load_model,  # noqa: E402
                                   qwen_vl_from_transformers)

CASES = {  # visual items per row: (h, w) an image, (t, h, w) a video, in patches
    "image": [[(8, 8)]],
    "video": [[(2, 8, 8)]],
    "image+video": [[(4, 4), (2, 4, 4)]],
    "batch3-images": [[(8, 8)], [(4, 8)], [(8, 4), (4, 4)]],  # different counts per row: packed
    "batch3-videos": [[(2, 4, 4)], [(2, 4, 4)], [(3, 4, 4)]],
    "batch3-same": [[(4, 8)], [(8, 4)], [(4, 8)]],  # same counts per row: padded
    # temporal ids (up to 7, or 14 in Qwen2.5-VL) outrun the text after the video (p + 4): where
    # transformers' positions part from Qwen's original rope_deltas
    "long-video": [[(8, 8, 8)]],
}
# policy name -> (ours, the oracle's (policy, layers, keep))
POLICIES = {
    "v2drop": (lambda: V2Drop(layers=(2, 4), keep=(0.3, 0.0)), ("v2drop", [2, 4], [0.3, 0.0])),
    "pdrop": (lambda: PyramidDrop(layers=(2, 4), keep=(0.6, 0.5)), ("pdrop", [2, 4], [0.6, 0.5])),
    "fastv": (lambda: FastV(k=2, keep=0.5), ("fastv", [2], [0.5])),
}


@pytest.fixture(scope="module", params=ALL_ARCHS)
def models(request):
    hf = tiny_qwen_vl(request.param, seed=3)
    return request.param, hf, qwen_vl_from_transformers(hf)


def inputs_of(arch: str, case: str, seed: int = 0) -> dict:
    return multimodal_inputs(CASES[case], arch=arch, seed=seed)


@pytest.mark.parametrize("case", sorted(CASES))
def test_unpruned_tokens_equal_transformers(models, case):
    arch, hf, ours = models
    inputs = inputs_of(arch, case, seed=1)
    expected = hf_generate(hf, inputs, 6)
    prompts, vision = ours_args(inputs)
    counts = {int(((p == IMAGE_TOKEN) | (p == VIDEO_TOKEN)).sum()) for p in prompts}
    for layout in ("padded", "packed") if len(counts) == 1 else ("packed",):
        assert ours.generate(prompts, **vision, max_new_tokens=6, layout=layout).tokens.tolist() == expected, layout
    # transformers' generate through the integration, pruning nothing
    assert pruned_generate(hf, inputs, Policy(), 6)[0] == expected


@pytest.mark.parametrize("case", ["image", "video", "batch3-images", "batch3-same"])
@pytest.mark.parametrize("name", sorted(POLICIES))
def test_pruned_generate_equals_the_package_decoder(models, name, case):
    arch, hf, ours = models
    inputs = inputs_of(arch, case, seed=2)
    make, _ = POLICIES[name]
    got, trace = pruned_generate(hf, inputs, make(), 6)
    prompts, vision = ours_args(inputs)
    expected = ours.generate(prompts, **vision, max_new_tokens=6, policy=make())
    assert got == expected.tokens.tolist()
    assert trace.visual_per_layer == expected.trace.visual_per_layer
    assert all(last < first for first, last in zip(trace.visual_per_layer[0], trace.visual_per_layer[-1]))  # pruning is on


@pytest.mark.parametrize("case", ["image", "video", "batch3-images", "batch3-same"])
@pytest.mark.parametrize("name", sorted(POLICIES))
def test_pruned_generate_keeps_the_package_decoders_tokens(models, name, case):
    """Not only the same new tokens and counts: every layer of transformers' cache holds the KV of the
    same prompt tokens as the package decoder's (column = prompt index + the row's left padding)."""
    arch, hf, ours = models
    assert_transformers_keeps_the_package_tokens(hf, ours, inputs_of(arch, case, seed=2), POLICIES[name][0])


@pytest.mark.parametrize("case", ["batch3-images", "batch3-same"])
def test_every_row_left_padded(models, case):
    """Padding to a multiple (the processor's pad_to_multiple_of) leaves padding on every row."""
    arch, hf, ours = models
    inputs = inputs_of(arch, case, seed=10)
    for key in ("input_ids", "attention_mask", "mm_token_type_ids"):
        inputs[key] = torch.cat([inputs[key].new_zeros(3, 3), inputs[key]], dim=1)
    prompts, vision = ours_args(inputs)
    for make in (Policy, POLICIES["v2drop"][0]):
        got, _ = pruned_generate(hf, inputs, make(), 5)
        assert got == ours.generate(prompts, **vision, max_new_tokens=5, policy=make()).tokens.tolist()


def test_video_seconds_per_grid_step(models):
    """Qwen2.5-VL's temporal ids step by tokens_per_second × second_per_grid_ts, a different value per video."""
    arch, hf, ours = models
    if arch != "qwen2.5-vl":
        pytest.skip("second_per_grid_ts is a Qwen2.5-VL input")
    inputs = multimodal_inputs([[(2, 4, 4)], [(3, 4, 4), (2, 4, 4)], [(2, 4, 4)]], arch=arch, seed=9)
    inputs["second_per_grid_ts"] = torch.tensor([0.5, 1.5, 3.0, 2.0])
    with torch.no_grad():
        planes, _ = hf.model.get_rope_index(inputs["input_ids"], inputs["mm_token_type_ids"], None, inputs["video_grid_thw"],
                                            attention_mask=inputs["attention_mask"],
                                            second_per_grid_ts=inputs["second_per_grid_ts"])
    prompts, vision = ours_args(inputs)
    tokens = ours.tokens(prompts, "packed", video_features=ours.visual_features(vision["pixel_values_videos"],
                                                                                vision["video_grid_thw"]),
                         video_grid_thw=vision["video_grid_thw"], second_per_grid_ts=vision["second_per_grid_ts"])
    assert torch.equal(tokens.position_ids, planes[:, inputs["attention_mask"].bool()])
    assert planes.amax() > 14  # the steps were used
    expected = hf_generate(hf, inputs, 6)
    assert ours.generate(prompts, **vision, max_new_tokens=6).tokens.tolist() == expected
    got, _ = pruned_generate(hf, inputs, V2Drop(layers=(2, 4), keep=(0.3, 0.0)), 6)
    assert got == ours.generate(prompts, **vision, max_new_tokens=6, policy=V2Drop(layers=(2, 4), keep=(0.3, 0.0))).tokens.tolist()


@pytest.mark.parametrize("case", ["image", "video", "image+video", "batch3-images"])
@pytest.mark.parametrize("name", sorted(POLICIES))
def test_kept_tokens_and_planes_equal_the_oracle(models, name, case):
    arch, hf, ours = models
    assert_kept_like_the_oracle(hf, ours, inputs_of(arch, case, seed=3), *POLICIES[name])


def test_survivors_keep_their_three_position_planes(models):
    arch, hf, ours = models
    inputs = inputs_of(arch, "video", seed=4)
    prompts, vision = ours_args(inputs)
    oracle = oracle_prefill(hf, inputs, "v2drop", [2, 4], [0.25, 0.0])
    # the tokens a layer sees, with their planes: the oracle's positions equal the full planes at the kept indices
    features, deepstack = ours.encode(vision["pixel_values_videos"], vision["video_grid_thw"])
    full = ours.tokens(prompts, "padded", video_features=features, video_deepstack=deepstack,
                       video_grid_thw=vision["video_grid_thw"], second_per_grid_ts=vision.get("second_per_grid_ts"))
    assert full.planes and full.position_ids.shape[0] == 3
    for seen, planes in zip(oracle.seen, oracle.positions):
        assert torch.equal(full.position_ids[:, 0, seen], planes)
    _, pruned = ours(prompts, **vision, policy=V2Drop(layers=(2, 4), keep=(0.25, 0.0)))
    assert torch.equal(pruned.position_ids[:, 0], oracle.positions[-1])


def test_the_official_qwen2_vl_schedule_on_a_28_layer_model():
    hf = tiny_qwen_vl("qwen2.5-vl", seed=5, layers=28)
    ours = qwen_vl_from_transformers(hf)
    inputs = multimodal_inputs([[(16, 16)]], arch="qwen2.5-vl", seed=5)  # 64 visual tokens
    prompts, vision = ours_args(inputs)
    out = ours.generate(prompts, **vision, max_new_tokens=1, policy=V2Drop(schedule="qwen2-vl"))
    oracle = oracle_prefill(hf, inputs, "v2drop", [3, 16, 22], [0.25, 0.05, 0.0])
    assert [v[0] for v in out.trace.visual_per_layer] == [64] * 3 + [16] * 13 + [1] * 12  # max(1, int(16 × 0.05)) = 1
    for entries, kept in zip(out.layer_positions, oracle.kept):
        assert torch.equal(visual_seen(entries[0], prompts[0]), kept)


def test_loads_a_checkpoint_folder(tmp_path):
    folder = save_tiny_qwen_vl(tmp_path / "qwen", "qwen2-vl", seed=6)
    from transformers import Qwen2VLForConditionalGeneration

    hf = Qwen2VLForConditionalGeneration.from_pretrained(folder).eval()
    model = load_model(folder)
    inputs = multimodal_inputs([[(4, 8)]], seed=6)
    prompts, vision = ours_args(inputs)
    assert model.generate(prompts, **vision, max_new_tokens=4).tokens.tolist() == hf_generate(hf, inputs, 4)


def test_generation_config_end_of_sequence_ids_are_kept(tmp_path):
    """Qwen2-VL Instruct folders list a second EOS id in generation_config.json only: generation
    stops on it, as transformers' generate does."""
    import json

    folder = save_tiny_qwen_vl(tmp_path / "qwen", "qwen2-vl", seed=11)
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 7], "pad_token_id": 0}))
    assert load_model(folder).cfg.text.eos_token_id == [2, 7]
    from transformers import Qwen2VLForConditionalGeneration

    hf = Qwen2VLForConditionalGeneration.from_pretrained(folder).eval()
    assert qwen_vl_from_transformers(hf).cfg.text.eos_token_id == [2, 7]


def test_flat_published_config_reads_like_the_nested_one():
    hf = tiny_qwen_vl("qwen2-vl")
    nested = hf.config.to_dict()
    flat = {k: v for k, v in nested.items() if k != "text_config"} | nested["text_config"] | {"model_type": "qwen2_vl"}
    flat["rope_scaling"] = {"type": "mrope", "mrope_section": nested["text_config"]["rope_parameters"]["mrope_section"]}
    flat.pop("rope_parameters", None)
    flat["rope_theta"] = nested["text_config"]["rope_parameters"]["rope_theta"]
    assert QwenVLConfig.from_hf(flat).text == QwenVLConfig.from_hf(nested).text


def test_bad_input_gets_a_clear_error(models):
    arch, hf, ours = models
    inputs = inputs_of(arch, "image", seed=7)
    prompts, vision = ours_args(inputs)
    p = prompts[0]
    with pytest.raises(ValueError, match="outside 1..5"):  # the official schedule's layers 16 and 22 in 6 layers
        ours.generate(prompts, **vision, policy=V2Drop(schedule="qwen2-vl"))
    with pytest.raises(ValueError, match="outside 1..5"):
        enable_pruning(hf, V2Drop(schedule="qwen2-vl"))
    with pytest.raises(ValueError, match="unknown schedule"):
        V2Drop(schedule="qwen3-vl")
    short = torch.cat([p[p != IMAGE_TOKEN][:3], p[p == IMAGE_TOKEN][:-4], p[p != IMAGE_TOKEN][3:]])
    with pytest.raises(ValueError, match=r"an image span of 12 tokens, but its grid \(t=1, h=8, w=8\) gives"):
        ours.generate([short], **vision)
    two = torch.cat([p[:5], torch.full((16,), IMAGE_TOKEN), p[5:]])  # two images with nothing between them
    grids = torch.tensor([[1, 8, 8], [1, 8, 8]])
    with pytest.raises(ValueError, match="an image span of 32 tokens"):
        ours.generate([two], torch.cat([vision["pixel_values"]] * 2), grids)
    as_video = torch.where(p == IMAGE_TOKEN, VIDEO_TOKEN, p)  # video tokens with image inputs
    with pytest.raises(ValueError, match="more video spans than video_grid_thw has rows"):
        ours.generate([as_video], **vision)
    with pytest.raises(ValueError, match="image_grid_thw has 1 more rows than the prompts have image spans"):
        ours.generate([p[p != IMAGE_TOKEN]], **vision)
    with pytest.raises(ValueError, match="pixel_values needs image_grid_thw"):
        ours.generate(prompts, vision["pixel_values"])
    if arch == "qwen2-vl":
        with pytest.raises(ValueError, match="second_per_grid_ts is a Qwen2.5-VL input"):
            ours.generate(prompts, **vision, second_per_grid_ts=torch.tensor([1.0]))


def test_unsupported_architectures_are_refused():
    from transformers import LlamaConfig, LlamaForCausalLM

    llama = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2)).eval()
    with pytest.raises(NotImplementedError, match="pruning is implemented for .* not LlamaForCausalLM"):
        enable_pruning(llama, V2Drop(layers=(1,), keep=(0.5,)))
    with pytest.raises(NotImplementedError, match="mixture-of-experts decoders are not implemented"):
        QwenVLConfig.from_hf({"model_type": "qwen3_vl_moe", "vision_config": {}})  # the MoE variants are not implemented
    with pytest.raises(NotImplementedError, match="only 'qwen2_vl', 'qwen2_5_vl', 'qwen3_vl', 'qwen3_5' load"):
        QwenVLConfig.from_hf({"model_type": "glm4v", "vision_config": {}})
    with pytest.raises(NotImplementedError, match="sliding-window"):
        QwenVLConfig.from_hf({"model_type": "qwen2_vl", "vision_config": {}, "text_config": {
            "model_type": "qwen2_vl_text", "vocab_size": 8, "hidden_size": 8, "intermediate_size": 8, "num_hidden_layers": 1,
            "num_attention_heads": 1, "use_sliding_window": True}})
