"""The end-to-end demo (python -m v2drop_kernels.demo): embedded default, checkpoint folder, flags."""

from __future__ import annotations

import json

import pytest
import torch

from model_helpers import save_tiny_llava

pytest.importorskip("transformers")
from v2drop_kernels import demo  # noqa: E402


def test_default_demo_runs_the_published_schedule(tmp_path, capsys):
    png = tmp_path / "heat.png"
    summary = demo.main(["--json", "--max-new-tokens", "3", "--heatmap", str(png)])
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(json.dumps(summary))
    pruned, none = summary["runs"]
    assert pruned["policy"].startswith("v2drop") and none["policy"] == "none"
    per_layer = pruned["visual_tokens_per_layer"]
    assert per_layer == [576] * 3 + [288] * 14 + [144] * 5 + [1] * 10
    assert none["visual_tokens_per_layer"] == [576] * 32
    assert len(pruned["generated_ids"]) == 3 and all(isinstance(t, int) for t in pruned["generated_ids"])
    assert set(pruned["timings_ms"]) == {"vision", "prefill", "decode"}
    assert 0 < pruned["kv_cache_bytes"] < 0.5 * none["kv_cache_bytes"]
    from PIL import Image

    with Image.open(png) as img:
        assert img.size == (680, 336)


@pytest.mark.parametrize("policy, layers, keep, expected", [
    ("pdrop", "8,16,24", None, [576] * 8 + [288] * 8 + [144] * 8 + [72] * 8),
    ("fastv", None, None, [576] * 2 + [288] * 30),
    ("v2drop", "3,17,22", "300,100,1", [576] * 3 + [300] * 14 + [100] * 5 + [1] * 10),
    ("none", None, None, [576] * 32),
])
def test_demo_policies_and_keep_flags(policy, layers, keep, expected):
    args = ["--json", "--max-new-tokens", "2", "--policy", policy]
    args += ["--layers", layers] if layers else []
    args += ["--keep", keep] if keep else []
    summary = demo.main(args)
    assert summary["runs"][0]["visual_tokens_per_layer"] == expected


def test_demo_loads_a_checkpoint_folder_and_an_image(tmp_path):
    from PIL import Image

    folder = save_tiny_llava(tmp_path / "ckpt")
    Image.new("RGB", (40, 30), (10, 200, 30)).save(tmp_path / "img.png")
    summary = demo.main(["--json", "--model", str(folder), "--image", str(tmp_path / "img.png"), "--layers", "1,3",
                         "--keep", "0.5,0", "--max-new-tokens", "4", "--prompt", "USER: <image>\nWhat? ASSISTANT:"])
    assert summary["runs"][0]["visual_tokens_per_layer"] == [49] + [24] * 2 + [1] * 3


def test_keep_parsing():
    assert demo.parse_keep("288,144,1") == [288, 144, 1]
    assert demo.parse_keep("0.5,0.5,0") == [0.5, 0.5, 0.0]
    assert demo.parse_keep("1.0") == [1.0]

def test_clip_preprocessing_of_any_aspect_ratio():
    from PIL import Image

    pix = demo.pixel_values(Image.new("RGB", (50, 20), (255, 255, 255)), 28)
    assert pix.shape == (1, 3, 28, 28)
    expected = (1 - torch.tensor(demo.CLIP_MEAN)) / torch.tensor(demo.CLIP_STD)
    torch.testing.assert_close(pix[0, :, 5, 5], expected)


def test_demo_uses_the_tokenizer_of_the_checkpoint_folder(tmp_path):
    """A folder with a tokenizer (no image processor): prompt ids and the decoded answer come from it."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    folder = save_tiny_llava(tmp_path / "ckpt")
    vocab = {"[UNK]": 0, "USER:": 1, "What?": 2, "ASSISTANT:": 3} | {f"w{i}": i for i in range(4, 299)}  # one word per id
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(folder)
    summary = demo.main(["--json", "--model", str(folder), "--layers", "1", "--keep", "10", "--max-new-tokens", "3",
                         "--prompt", "USER: <image> What? ASSISTANT:"])
    pruned = summary["runs"][0]
    assert summary["prompt_tokens"] == 1 + 49 + 2  # USER:, 49 image tokens, What?, ASSISTANT:
    assert pruned["visual_tokens_per_layer"] == [49] + [10] * 5
    assert isinstance(pruned["generated_text"], str) and len(pruned["generated_text"].split()) == 3
