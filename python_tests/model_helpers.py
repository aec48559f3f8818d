"""A tiny random HF LLaVA checkpoint on disk, and prompts for it (shared by the model tests)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from v2drop_kernels.models import FastV, PyramidDrop, V2Drop

os.environ.setdefault("HF_HUB_OFFLINE", "1")

IMAGE_TOKEN = 299
TOKENS_PER_IMAGE = 49  # 28 px image, 4 px patches
TEXT_LAYERS = 6


def save_tiny_llava(folder: Path, seed: int = 0, tie: bool = False) -> Path:
    """Builds a random ``transformers`` LlavaForConditionalGeneration and saves it (safetensors)."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(seed)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                              image_size=28, patch_size=4)
    text = LlamaConfig(hidden_size=64, intermediate_size=160, num_hidden_layers=TEXT_LAYERS, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=300, max_position_embeddings=512, initializer_range=0.08,
                       pad_token_id=0, eos_token_id=2, bos_token_id=1, tie_word_embeddings=tie)
    cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_id=IMAGE_TOKEN, tie_word_embeddings=tie)
    model = LlavaForConditionalGeneration(cfg).eval()
    model.save_pretrained(folder)
    return folder


def prompt(before: list[int], images: int, after: list[int]) -> torch.Tensor:
    """Token ids: text, ``images`` image placeholders (49 tokens each), text."""
    parts = [torch.tensor(before)]
    for i in range(images):
        parts.append(torch.full((TOKENS_PER_IMAGE,), IMAGE_TOKEN))
        if i + 1 < images:
            parts.append(torch.tensor([11 + i]))
    parts.append(torch.tensor(after))
    return torch.cat(parts)


def left_pad(prompts: list[torch.Tensor], pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """HF-style left padding: ``input_ids [B, S]`` and ``attention_mask [B, S]``."""
    width = max(p.numel() for p in prompts)
    ids = torch.full((len(prompts), width), pad)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, width - p.numel():] = p
        mask[row, width - p.numel():] = 1
    return ids, mask


def pixels(n: int, seed: int = 0) -> torch.Tensor:
    """``n`` random images for the tiny checkpoint (28 px)."""
    return torch.randn(n, 3, 28, 28, generator=torch.Generator().manual_seed(seed))


# Two prompts of different lengths, one image each.
PROMPT_PAIR = [prompt([1, 5, 6], 1, [7, 8, 9, 10]), prompt([1, 21, 22, 23, 24, 25, 26], 1, [30, 31])]


def rows(tensor, tokens_cu, b):
    """Row ``b`` of a padded ``[B, S, ...]`` or packed ``[T, ...]`` tensor."""
    if tokens_cu is None:
        return tensor[b]
    return tensor[int(tokens_cu[b]) : int(tokens_cu[b + 1])]


class Recorder(V2Drop):
    """V²Drop that also keeps what each drop was given."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen = {}

    def before_layer(self, layer, tokens, ctx, *, prev=None, scores=None):
        if layer in self.layers:
            self.seen[layer] = {name: getattr(tokens, name) for name in ("hidden", "vis_mask", "orig_pos", "cu_seqlens")}
            self.seen[layer]["prev"] = prev  # handed over by the decoder, as needs(layer) asked
        drop = super().before_layer(layer, tokens, ctx, prev=prev, scores=scores)
        out = tokens if drop is None else tokens.shrink(drop.selection, drop.hidden)
        # RoPE position ids of the survivors stay the original ones: the prompt index (0 on padding)
        assert torch.equal(out.position_ids, out.orig_pos.clamp_min(0))
        return drop


def hf_generate(hf, prompts, visual, new):
    """transformers' greedy generate on the left-padded ``prompts`` with the ``visual`` inputs: the
    new tokens and the attention mask."""
    ids, mask = left_pad(prompts)
    with torch.no_grad():
        out = hf.generate(input_ids=ids, attention_mask=mask, **visual, max_new_tokens=new, do_sample=False, pad_token_id=0)
    return out[:, ids.shape[1]:], mask


def assert_transformers_prunes_like(hf, ours, prompts, visual, make_policy, new=8):
    """transformers' generate through enable_pruning equals the package's model: the same tokens,
    visual tokens per layer, and prompt tokens in every layer's cache (column = index + padding)."""
    from v2drop_kernels.integrations.transformers import enable_pruning

    handle = enable_pruning(hf, make_policy())
    try:
        got, mask = hf_generate(hf, prompts, visual, new)
        columns, trace = handle.layer_columns(), handle.trace
    finally:
        handle.disable()
    expected = ours.generate(prompts, **visual, max_new_tokens=new, policy=make_policy())
    assert got.tolist() == expected.tokens.tolist()
    assert trace.visual_per_layer == expected.trace.visual_per_layer
    assert all(a < b for a, b in zip(expected.trace.visual_per_layer[-1], expected.trace.visual_per_layer[0]))  # pruning is on
    pad = (mask == 0).sum(1)
    for layer, (cols, positions) in enumerate(zip(columns, expected.layer_positions)):
        prefill = cols[:, : positions.shape[1]]
        for b in range(len(prompts)):
            assert torch.equal((prefill[b] - pad[b])[prefill[b] >= pad[b]], positions[b][positions[b] >= 0]), (layer, b)


def assert_v2drop_keeps_the_reference_choice(policy: "Recorder", out, visual: list[int]) -> None:
    """Each drop of ``policy`` (a :class:`Recorder`) kept, in every layer's cache, exactly the text and
    the visual tokens ``reference.variation_topk`` picks from what the drop saw; ``visual``: the
    visual tokens of each prompt."""
    from v2drop_kernels import reference
    from v2drop_kernels.models.policies import kept_count

    for layer, rule in zip(policy.layers, policy.keep):
        seen = policy.seen[layer]
        counts = [kept_count(rule, v) for v in out.trace.visual_per_layer[layer - 1]]
        assert out.trace.visual_per_layer[layer] == counts
        for b in range(len(visual)):
            hidden, prev, vis, orig = (rows(seen[n], seen["cu_seqlens"], b)[None] for n in ("hidden", "prev", "vis_mask", "orig_pos"))
            keep_idx, _ = reference.variation_topk(hidden, prev, vis, counts[b])
            expected = torch.sort(torch.cat([orig[~vis], orig[0, keep_idx[0]]])).values
            row = out.layer_positions[layer][b]
            assert torch.equal(row[row >= 0], expected[expected >= 0]), (layer, b)
    assert out.trace.visual_per_layer[0] == visual
    left = list(visual)
    for rule in policy.keep:
        left = [kept_count(rule, v) for v in left]
    assert out.trace.visual_per_layer[-1] == left


# the small pruning schedules the tiny 6-layer models are pruned with, by policy name
SMALL_POLICIES = {
    "v2drop": lambda: V2Drop(layers=(2, 4), keep=(0.5, 0.25)),
    "pdrop": lambda: PyramidDrop(layers=(2, 4), ratio=0.5),
    "fastv": lambda: FastV(k=2, r=0.5),
}
# the same schedules as the published rules of the plain-torch oracle (oracle.py): (policy, layers, keep ratios)
SMALL_POLICY_RULES = {
    "v2drop": ("v2drop", [2, 4], [0.5, 0.25]),  # before layers 2 and 4: top 50 %, then 25 % of what is left
    "pdrop": ("pdrop", [2, 4], [0.5, 0.5]),  # inside layers 2 and 4: λ = 0.5 of what is left
    "fastv": ("fastv", [2], [0.5]),  # layer 1's last-token attention, before layer 2: keep 1 - R
}


def split_visual(prompts: list[torch.Tensor], visual: dict, image_token: int, video_token: int | None = None) -> list[dict]:
    """The visual inputs of each prompt alone, as its batch-1 call takes them: its images' rows of
    ``pixel_values`` / ``image_sizes`` and its videos' rows of ``pixel_values_videos``. An item is a
    run of its placeholder token (the prompts separate items by text, as the model tests build them)."""
    def runs(p, token):
        hit = p == token
        return int((hit & ~torch.cat([hit.new_zeros(1), hit[:-1]])).sum()) if token is not None else 0

    out, image, video = [], 0, 0
    for p in prompts:
        n, m, row = runs(p, image_token), runs(p, video_token), {}
        if n:
            row.update({k: visual[k][image:image + n] for k in ("pixel_values", "image_sizes") if k in visual})
        if m:
            row["pixel_values_videos"] = visual["pixel_values_videos"][video:video + m]
        out.append(row)
        image, video = image + n, video + m
    assert image == len(visual.get("pixel_values", ())) and video == len(visual.get("pixel_values_videos", ()))
    return out


def assert_prunes_like_the_oracle(hf, ours, prompts: list[torch.Tensor], visual: dict, name: str) -> None:
    """Pruned by ``SMALL_POLICIES[name]`` (``"none"``: unpruned), the package's model keeps in every
    layer's KV cache exactly the prompt tokens that the plain-torch oracle (oracle.py, batch 1, on
    ``hf``'s weights, the published rule ``SMALL_POLICY_RULES[name]``) lets that layer's attention
    see, row by row (each prompt run alone through the oracle); the last prompt token's logits of
    ``generate``'s prefill and of ``forward`` equal the oracle's (to 1e-4). Unpruned, the oracle's
    logits also equal transformers' own forward (its embedding step is transformers')."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny matmuls gain nothing from threads, and spin-waiting ones crawl on a loaded box
    try:
        _assert_prunes_like_the_oracle(hf, ours, prompts, visual, name)
    finally:
        torch.set_num_threads(threads)


def _assert_prunes_like_the_oracle(hf, ours, prompts, visual, name):
    from oracle import oracle_prefill

    rule = SMALL_POLICY_RULES[name] if name != "none" else ("none", [], [])
    make = SMALL_POLICIES[name] if name != "none" else lambda: None
    if name != "none":
        assert list(make().layers) == rule[1], (name, make().layers, rule)
    out = ours.generate(prompts, **visual, max_new_tokens=1, policy=make())
    logits, tokens = ours(prompts, **visual, policy=make(), layout="auto")
    forward_last = logits[tokens.last_index()] if tokens.packed else logits[:, -1]
    cfg = hf.config
    for b, single in enumerate(split_visual(prompts, visual, cfg.image_token_id, getattr(cfg, "video_token_id", None))):
        res = oracle_prefill(hf, {"input_ids": prompts[b][None], **single}, *rule)
        for layer, seen in enumerate(res.seen):
            row = out.layer_positions[layer][b]
            assert torch.equal(row[row >= 0], seen), (name, b, layer)
        if name != "none":
            assert res.kept[-1].numel() < res.kept[0].numel()  # pruning is on
        torch.testing.assert_close(out.prefill_logits[b], res.last_logits, atol=1e-4, rtol=0)
        torch.testing.assert_close(forward_last[b], res.last_logits, atol=1e-4, rtol=0)
        if name == "none":
            with torch.no_grad():
                expected = hf(input_ids=prompts[b][None], **single).logits[0, -1]
            torch.testing.assert_close(res.last_logits, expected, atol=1e-4, rtol=0)


def tile_pixels(counts: list[int], sizes, tile: int, seed: int = 0) -> dict:
    """What an anyres processor gives for images of ``sizes`` using ``counts`` tiles each:
    ``pixel_values [N, max tiles, 3, tile, tile]`` (zero tiles past an image's own) and
    ``image_sizes [N, 2]``."""
    gen = torch.Generator().manual_seed(seed)
    pixels = torch.zeros(len(sizes), max(counts), 3, tile, tile)
    for i, n in enumerate(counts):
        pixels[i, :n] = torch.randn(n, 3, tile, tile, generator=gen)
    return {"pixel_values": pixels, "image_sizes": torch.tensor(sizes)}


def assert_generate_matches_transformers(hf, ours, prompts, visual, layouts=("auto",), new=8):
    """The package's greedy tokens equal transformers' generate in every layout of ``layouts``; for
    a single prompt, its prefill logits too (to 1e-4)."""
    expected, _ = hf_generate(hf, prompts, visual, new)
    for layout in layouts:
        assert ours.generate(prompts, **visual, max_new_tokens=new, layout=layout).tokens.tolist() == expected.tolist(), layout
    if len(prompts) == 1:
        with torch.no_grad():
            logits = hf(input_ids=prompts[0][None], **visual).logits[0]
        torch.testing.assert_close(ours(prompts, **visual)[0][0], logits, atol=1e-4, rtol=0)


def save_three_layouts(hf, folder: Path) -> tuple[dict, dict, dict]:
    """A LLaVA-family transformers model saved three ways under ``folder``: ``a`` as
    ``save_pretrained`` writes it (llava-hf's layout: ``language_model.model.*``), ``b`` in the
    ``model.*`` layout of transformers 4.52+, ``c`` with the hub checkpoints' vision-tower names
    (``vision_tower.vision_model.*``). Returns the three state dicts."""
    from safetensors.torch import load_file, save_file

    hf.save_pretrained(folder / "a")
    state = load_file(str(folder / "a" / "model.safetensors"))
    to_transformers_5 = (("language_model.model.", "model.language_model."), ("language_model.lm_head.", "lm_head."), ("", "model."))
    renamed = {}
    for key, value in state.items():
        old, new = next((old, new) for old, new in to_transformers_5 if key.startswith(old))
        renamed[new + key[len(old):]] = value
    hub = {"vision_tower.vision_model." + k[len("vision_tower."):] if k.startswith("vision_tower.") else k: v
           for k, v in state.items()}
    for name, weights in (("b", renamed), ("c", hub)):
        (folder / name).mkdir()
        save_file(weights, str(folder / name / "model.safetensors"))
        (folder / name / "config.json").write_text((folder / "a" / "config.json").read_text())
    return state, renamed, hub
