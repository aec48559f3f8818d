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
    assert set(pruned["timings_ms"]) == {"vision", "prefill", "decode"} and pruned["repeats"] == 3
    for phase, median in pruned["timings_ms"].items():
        low, high = pruned["timings_ms_range"][phase]
        assert 0 < low <= median <= high
    assert 0 < pruned["kv_cache_bytes"] < 0.5 * none["kv_cache_bytes"]
    from PIL import Image

    with Image.open(png) as img:
        assert img.size == (1000, 460)


@pytest.mark.parametrize("policy, layers, keep, expected", [
    ("pdrop", "8,16,24", None, [576] * 8 + [288] * 8 + [144] * 8 + [72] * 8),
    ("fastv", None, None, [576] * 2 + [288] * 30),
    ("v2drop", "3,17,22", "300,100,1", [576] * 3 + [300] * 14 + [100] * 5 + [1] * 10),
    ("none", None, None, [576] * 32),
])
def test_demo_policies_and_keep_flags(policy, layers, keep, expected):
    args = ["--json", "--max-new-tokens", "2", "--policy", policy, "--repeats", "1"]
    args += ["--layers", layers] if layers else []
    args += ["--keep", keep] if keep else []
    summary = demo.main(args)
    assert summary["runs"][0]["visual_tokens_per_layer"] == expected


def test_demo_loads_a_checkpoint_folder_and_an_image(tmp_path):
    from PIL import Image

    folder = save_tiny_llava(tmp_path / "ckpt")
    Image.new("RGB", (40, 30), (10, 200, 30)).save(tmp_path / "img.png")
    summary = demo.main(["--json", "--model", str(folder), "--image", str(tmp_path / "img.png"), "--layers", "1,3",
                         "--keep", "0.5,0", "--max-new-tokens", "4", "--prompt", "USER: <image>\nWhat? ASSISTANT:",
                         "--repeats", "1"])
    assert summary["runs"][0]["visual_tokens_per_layer"] == [49] + [24] * 2 + [1] * 3


def test_keep_parsing():
    assert demo.parse_keep("288,144,1") == [288, 144, 1]
    assert demo.parse_keep("0.5,0.5,0") == [0.5, 0.5, 0.0]
    assert demo.parse_keep("1.0") == [1.0]


@pytest.mark.parametrize("argv, message", [
    (["--keep", "600"], r"argument --keep: 1 values for 3 pruning layer\(s\) of v2drop"),
    (["--policy", "fastv", "--keep", "600"], "argument --keep: 600 is more than the prompt's 576 visual tokens"),
    (["--layers", "3", "--keep", "600"], "argument --keep: 600 is more than the prompt's 576 visual tokens"),
    (["--layers", "3,17", "--keep", "288,300"], "argument --keep: 300 is more than the visual tokens left at stage 2: 288"),
    (["--keep", "abc"], "argument --keep: expected counts such as 288,144,1"),
    (["--keep", "1.5,0.5,0"], r"argument --keep: a ratio must lie in \[0, 1\], got 1.5"),
    (["--policy", "fastv", "--layers", "2,5"], "argument --layers: fastv prunes once"),
    (["--policy", "fastv", "--keep", "0.5,0.5"], "argument --keep: 2 values for 1 pruning layer"),
    (["--policy", "none", "--heatmap", "x.png"], "argument --heatmap: policy none drops nothing"),
    (["--policy", "none", "--layers", "3"], "argument --layers: policy none drops nothing"),
    (["--layers", "40"], r"argument --layers: layer 40 is outside 1..31 of this 32-layer model"),
    (["--layers", "3,2,5"], "argument --policy: v2drop: layers must be strictly increasing"),
    (["--layers", "x"], "argument --layers: expected comma-separated integers"),
    (["--max-new-tokens", "0"], "argument --max-new-tokens: expected a positive integer"),
    (["--heatmap", "/nonexistent-folder/x.png"], "argument --heatmap: cannot write /nonexistent-folder/x.png"),
    (["--image", "/nonexistent.png"], "argument --image: cannot read /nonexistent.png"),
    (["--model", "/nonexistent"], "argument --model: /nonexistent has no config.json"),
    (["--prompt", "no image here"], "argument --prompt: needs exactly one <image> placeholder, got 0"),
    (["--device", "cuda:0"] if not torch.cuda.is_available() else ["--device", "tpu"], "argument --device: "),
    (["--backend", "cuda"] if not torch.cuda.is_available() else ["--backend", "cpu"], "argument --backend: "),
])
def test_every_flag_is_checked_before_any_work(argv, message, capsys, monkeypatch):
    """A bad flag is one argparse-style line naming it (exit status 2), before a model is built."""
    monkeypatch.setattr(demo, "random_llava", lambda *a, **k: pytest.fail("built a model before checking the flags"))
    with pytest.raises(SystemExit) as exit_info:
        demo.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("python -m v2drop_kernels.demo: error: argument --"), err
    import re

    assert re.search(message, err), err


def test_heatmap_shows_the_pixels_the_model_saw():
    """A 672x336 image, white where x < 252: the model sees the centre crop [168, 504), so its white
    edge is at x = 84. The drawn image and the patch grid both put it there (squashing the whole
    image to 336x336 would draw it at 126)."""
    from PIL import Image

    image = Image.new("RGB", (672, 336), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 252, 336))
    pix = demo.pixel_values(image, 336)
    grid = 336 // 14
    cols = torch.arange(grid * grid) % grid
    scores = (cols < 6).float()  # patches whose pixels are white: columns 0-5 (x < 84)
    kept = cols >= 12
    img, heat, kept_px = demo.heatmap_arrays(pix, demo.CLIP_MEAN, demo.CLIP_STD, scores, kept, 14)
    assert img.shape == (336, 336, 3) and heat.shape == kept_px.shape == (336, 336)
    white = img.mean(-1) > 0.5
    assert bool(white[:, :84].all()) and not bool(white[:, 84:].any())
    assert bool((heat[:, :84] == 1).all()) and bool((heat[:, 84:] == 0).all())
    assert bool(kept_px[:, 168:].all()) and not bool(kept_px[:, :168].any())


def test_speedups_are_printed_only_beyond_the_run_to_run_range():
    fast, slow = {"median": 10.0, "min": 9.0, "max": 11.0}, {"median": 30.0, "min": 28.0, "max": 35.0}
    assert demo.compare("prefill", fast, slow) == "prefill 3.00x faster"
    assert demo.compare("prefill", slow, fast) == "prefill 3.00x slower"
    overlapping = {"median": 10.5, "min": 10.0, "max": 12.0}
    assert demo.compare("decode", fast, overlapping) == "decode: no difference beyond the run-to-run range"

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
                         "--prompt", "USER: <image> What? ASSISTANT:", "--repeats", "1"])
    pruned = summary["runs"][0]
    assert summary["prompt_tokens"] == 1 + 49 + 2  # USER:, 49 image tokens, What?, ASSISTANT:
    assert pruned["visual_tokens_per_layer"] == [49] + [10] * 5
    assert isinstance(pruned["generated_text"], str) and len(pruned["generated_text"].split()) == 3


@pytest.mark.parametrize("arch, layers", [("qwen2-vl", 28), ("qwen2.5-vl", 28), ("qwen3-vl", 28), ("qwen3.5", 32)])
def test_qwen_demo_runs_the_official_qwen2_vl_schedule(arch, layers, tmp_path):
    png = tmp_path / "heat.png"
    summary = demo.main(["--json", "--arch", arch, "--max-new-tokens", "3", "--repeats", "1", "--heatmap", str(png)])
    pruned, none = summary["runs"]
    assert pruned["visual_tokens_per_layer"] == [576] * 3 + [144] * 13 + [7] * 6 + [1] * (layers - 22)  # 25%, 5%, 0% (≥ 1)
    assert none["visual_tokens_per_layer"] == [576] * layers
    assert pruned["kv_cache_bytes"] < 0.5 * none["kv_cache_bytes"]
    assert png.stat().st_size > 0


def test_qwen3_5_demo_defaults_fastv_to_a_full_attention_layer(capsys):
    summary = demo.main(["--json", "--arch", "qwen3.5", "--policy", "fastv", "--max-new-tokens", "2", "--repeats", "1"])
    assert summary["runs"][0]["visual_tokens_per_layer"] == [576] * 4 + [288] * 28  # K = 4: ranked by layer 3
    with pytest.raises(SystemExit):
        demo.main(["--arch", "qwen3.5", "--policy", "pdrop", "--layers", "8,16,24"])
    assert "layer 8 is a linear-attention layer" in capsys.readouterr().err


def test_demo_loads_a_qwen_folder_and_checks_its_arch(tmp_path, capsys):
    from qwen_helpers import save_tiny_qwen_vl

    folder = save_tiny_qwen_vl(tmp_path / "qwen", "qwen2.5-vl")
    summary = demo.main(["--json", "--model", str(folder), "--layers", "2,4", "--keep", "0.5,0", "--max-new-tokens", "2",
                         "--repeats", "1"])
    assert summary["runs"][0]["visual_tokens_per_layer"] == [576] * 2 + [288] * 2 + [1] * 2
    with pytest.raises(SystemExit):
        demo.main(["--model", str(folder), "--arch", "qwen2-vl"])
    assert "argument --arch: qwen2-vl, but" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # the model's default V²Drop schedule (layers 3, 16, 22) does not fit 6 layers
        demo.main(["--model", str(folder)])
    assert "outside 1..5" in capsys.readouterr().err


@pytest.mark.parametrize("arch, visual, expected", [
    # LLaVA-NeXT: the 672 x 448 synthetic image is a base tile and a 2 x 2 grid unpadded to 32 x 48 patches with a
    # newline after each row (576 + 32 * 49); V²Drop's LLaVA-1.5 schedule
    ("llava-next", 2144, [2144] * 3 + [1072] * 14 + [536] * 5 + [1] * 10),
    # LLaVA-OneVision: 729 + a 2 x 2 grid of 27-patch tiles unpadded to 36 x 54 patches (under anyres_max_9: not
    # shrunk), a newline a row; the paper's video schedule: 25 % and 5 % of the prompt's visual tokens, then one
    ("llava-ov", 2709, [2709] * 3 + [677] * 13 + [135] * 6 + [1] * 6),
])
def test_anyres_demo_runs_the_model_s_schedule(arch, visual, expected, tmp_path):
    png = tmp_path / "heat.png"
    summary = demo.main(["--json", "--arch", arch, "--max-new-tokens", "2", "--repeats", "1", "--heatmap", str(png)])
    pruned, none = summary["runs"]
    assert pruned["visual_tokens_per_layer"] == expected
    assert none["visual_tokens_per_layer"] == [visual] * len(expected)
    assert pruned["kv_cache_bytes"] < 0.5 * none["kv_cache_bytes"]
    assert png.stat().st_size > 0


def test_anyres_demo_counts_the_visual_tokens_of_the_image_given(tmp_path, capsys):
    """An image file's size picks the grid before any work: a tall 300 x 700 image is a base tile
    and a 3 x 1 grid, 72 x 24 patches unpadded to 56 x 24, a newline a row (576 + 56 * 25)."""
    from PIL import Image

    from v2drop_kernels.models import llava_next, tiny_llava_next_config

    Image.new("RGB", (300, 700), (10, 200, 30)).save(tmp_path / "tall.png")
    cfg = tiny_llava_next_config(tile=336)
    visual = llava_next.image_token_count(cfg, (700, 300))
    assert visual == 576 + 56 * 25
    summary = demo.main(["--json", "--arch", "llava-next", "--image", str(tmp_path / "tall.png"), "--layers", "2",
                         "--keep", "25%", "--max-new-tokens", "1", "--repeats", "1"])
    assert summary["runs"][0]["visual_tokens_per_layer"][:3] == [visual, visual, visual // 4]
    with pytest.raises(SystemExit):
        demo.main(["--arch", "llava-next", "--image", str(tmp_path / "tall.png"), "--layers", "2", "--keep", str(visual + 1)])
    assert f"argument --keep: {visual + 1} is more than the prompt's {visual} visual tokens" in capsys.readouterr().err


def test_percentages_of_the_prompt_in_keep():
    from v2drop_kernels.models import OfPrompt

    assert demo.parse_keep("25%,5%,0") == [OfPrompt(0.25), OfPrompt(0.05), 0.0]
    summary = demo.main(["--json", "--layers", "3,17", "--keep", "50%,10%", "--max-new-tokens", "1", "--repeats", "1"])
    assert summary["runs"][0]["visual_tokens_per_layer"] == [576] * 3 + [288] * 14 + [57] * 15
