"""The GPU benchmark script runs end to end (tiny shapes, CPU, Triton under the interpreter), so it
is ready for the next GPU machine. Its times are not checked: speed is claimed from benchmarks only."""

import importlib.util
import os

import pytest
import torch


SCRIPT = os.path.join(os.path.dirname(__file__), "..", "bench", "bench_gpu.py")


def _bench_gpu():
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_gpu_benchmark_smoke_run():
    bench = _bench_gpu()
    rows = bench.main(["--smoke"])
    providers = {r["provider"] for r in rows}
    import v2drop_kernels as v2d

    native = set(v2d.available_backends("cpu")) - {"reference"}  # cpu, and triton under the interpreter
    assert providers == {"reference", "reference-compiled"} | native
    assert len(rows) == len(providers) * len(bench.SMOKE_SHAPES)
    assert all(r["timing"] == "wall" and r["ms"] == r["wall ms"] > 0 and r["fraction of copy bandwidth"] > 0 for r in rows)


def _smoke_call():
    from v2drop_kernels.testing import make_hidden, make_mask

    gen = torch.Generator().manual_seed(0)
    hidden, prev = make_hidden(1, 40, 16, torch.bfloat16, "cpu", gen)
    mask = make_mask(1, 40, 30, 2, gen)
    return (hidden, prev, mask, torch.arange(40).expand(1, 40), 30, 9)


def test_gpu_benchmark_refuses_to_publish_a_wrong_provider():
    """A provider whose output differs from the reference stops the run before anything is timed."""
    from v2drop_kernels import reference

    bench = _bench_gpu()
    call = _smoke_call()

    def off_by_one_position(*args):
        out = list(reference.variation_drop(*args))
        out[1] = out[1] + 1
        return tuple(out)

    providers = {"reference": reference.variation_drop, "reference-compiled": reference.variation_drop,
                 "wrong": off_by_one_position}
    with pytest.raises(bench.ProviderMismatch, match=r"wrong differs from the reference on tiny \(position ids\)"):
        bench.measure_shape("tiny", providers, call, reference.variation_drop(*call), "cpu", 1)


def test_gpu_benchmark_times_every_provider_of_a_shape_the_same_way():
    """The rows of one shape share one timing method, named in the row; ratios come from it."""
    from v2drop_kernels import reference

    bench = _bench_gpu()
    call = _smoke_call()
    providers = {"reference": reference.variation_drop, "reference-compiled": reference.variation_drop,
                 "cpu": torch.ops.v2drop.variation_drop}
    rows = bench.measure_shape("tiny", providers, call, reference.variation_drop(*call), "cpu", 1)
    assert {r["timing"] for r in rows} == {"wall"}
    for r in rows:
        assert r["ms"] == r["wall ms"] and "events ms" not in r and "graph ms" not in r
        assert r["x vs eager"] == pytest.approx(rows[0]["ms"] / r["ms"])


E2E = os.path.join(os.path.dirname(__file__), "..", "bench", "e2e.py")


def test_e2e_benchmark_cpu_mode_writes_its_results(tmp_path):
    """bench/e2e.py --cpu on one small model and workload: every row measured (this decoder fast and
    eager, transformers with and without pruning), files written, no impossible figure."""
    pytest.importorskip("matplotlib")
    spec = importlib.util.spec_from_file_location("e2e", E2E)
    e2e = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(e2e)
    rows = e2e.main(["--cpu", "--models", "tiny-llava-1.5", "--workloads", "image", "--batches", "1",
                     "--repeats", "1", "--long", "4", "--out", str(tmp_path)])
    assert [(r["policy"], r["decoder"]) for r in rows] == [
        ("none", "fast"), ("v2drop", "fast"), ("v2drop-eager-ops", "fast"), ("pdrop", "fast"), ("fastv", "fast"),
        ("none", "eager"), ("v2drop", "eager"), ("transformers", "transformers"), ("transformers+v2drop", "transformers")]
    by = {(r["policy"], r["decoder"]): r for r in rows}
    assert by["none", "fast"]["visual per layer (avg)"] == by["transformers", "transformers"]["visual per layer (avg)"] == 576
    v2 = (3 * 576 + 14 * 288 + 5 * 144 + 10) / 32
    assert by["v2drop", "fast"]["visual per layer (avg)"] == by["v2drop-eager-ops", "fast"]["visual per layer (avg)"] == v2
    assert by["transformers+v2drop", "transformers"]["visual per layer (avg)"] == v2
    assert by["v2drop", "fast"]["KV after prefill GiB"] < 0.5 * by["none", "fast"]["KV after prefill GiB"]
    for r in rows:
        assert r["TTFT ms"] > 0 and r["latency 8 tok ms"] > 0 and r["TPOT ms"] > 0 and r["weight floor ms"] > 0
        assert r["TTFT ms range"][0] <= r["TTFT ms"] <= r["TTFT ms range"][1]
        assert r["TPOT / floor"] == pytest.approx(r["TPOT ms"] / r["weight floor ms"])
        if r["policy"] not in ("none", "transformers"):
            assert "TTFT −%" in r and r["TTFT −%"] < 100
    assert all("pruning % of prefill" in r for r in rows if r["decoder"] != "transformers" and r["policy"] != "none")
    for ext in ("json", "md", "png"):
        assert (tmp_path / f"e2e_cpu.{ext}").stat().st_size > 0
    assert "| tiny-llava-1.5 | image | 1 | v2drop | fast |" in e2e.summarize(str(tmp_path / "e2e_cpu.json"))


@pytest.mark.parametrize("model, layers", [("tiny-qwen2.5-vl", 28), ("tiny-qwen3-vl", 36), ("tiny-qwen3.5", 32)])
def test_e2e_benchmark_cpu_mode_runs_the_qwen_shapes(tmp_path, model, layers):
    """The Qwen2.5-VL, Qwen3-VL and Qwen3.5 rows: transformers' model and this package's on its
    weights, an image and a video workload (Qwen3-VL and Qwen3.5: a span per frame; Qwen3-VL
    DeepStack), the official Qwen2-VL V²Drop schedule in all three; Qwen3.5 also PyramidDrop and
    FastV at its full-attention layers (boundaries 7, 15, 23; K = 4), the only ones with scores."""
    pytest.importorskip("matplotlib")
    spec = importlib.util.spec_from_file_location("e2e", E2E)
    e2e = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(e2e)
    hybrid = model == "tiny-qwen3.5"
    rows = e2e.main(["--cpu", "--models", model, "--workloads", "image,video8", "--batches", "1",
                     "--policies", "none,v2drop,transformers,transformers+v2drop" + (",pdrop,fastv" if hybrid else ""),
                     "--repeats", "1", "--long", "3", "--out", str(tmp_path)])
    by = {(r["workload"], r["policy"]): r for r in rows}
    for workload, visual in (("image", 576), ("video8", 8 * 196)):
        kept = [visual] * 3 + [visual // 4] * 13 + [max(1, visual // 4 * 5 // 100)] * 6 + [1] * (layers - 22)
        assert by[workload, "none"]["visual per layer (avg)"] == by[workload, "transformers"]["visual per layer (avg)"] == visual
        assert by[workload, "v2drop"]["visual per layer (avg)"] == pytest.approx(sum(kept) / layers)
        assert by[workload, "transformers+v2drop"]["visual per layer (avg)"] == pytest.approx(sum(kept) / layers)
        if hybrid:
            pdrop = [visual] * 7 + [visual // 2] * 8 + [visual // 4] * 8 + [visual // 8] * 9
            assert by[workload, "pdrop"]["visual per layer (avg)"] == pytest.approx(sum(pdrop) / layers)
            assert by[workload, "fastv"]["visual per layer (avg)"] == pytest.approx((4 * visual + 28 * (visual // 2)) / layers)
            for policy in ("v2drop", "pdrop", "fastv"):
                assert by[workload, policy]["KV after prefill GiB"] < by[workload, "none"]["KV after prefill GiB"]


def test_e2e_summary_refuses_impossible_figures(tmp_path):
    import json

    spec = importlib.util.spec_from_file_location("e2e", E2E)
    e2e = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(e2e)
    row = {"model": "m", "workload": "w", "batch": 1, "policy": "none", "decoder": "fast", "TTFT ms": 5.0,
           "latency 8 tok ms": 9.0, "TPOT ms": -1.17}
    meta = {"device": "d", "dtype": "f", "torch": "t", "commit": "c", "date": "x", "mode": "cpu",
            "copy bandwidth GB/s (read + write)": 1, "command": "e2e"}
    (tmp_path / "bad.json").write_text(json.dumps({"meta": meta, "rows": [row]}))
    with pytest.raises(RuntimeError, match="impossible figure TPOT ms=-1.17"):
        e2e.summarize(str(tmp_path / "bad.json"))


def test_e2e_benchmark_cpu_mode_runs_llava_next_and_onevision(tmp_path):
    """The LLaVA-NeXT and LLaVA-OneVision rows: transformers' LlavaNext and LlavaOnevision models
    and this package's on their weights; an anyres image of a 2 × 2 grid (the base tile, then the
    grid's rows of patches and a newline each) and a video through pixel_values_videos (5 × 5
    pooled tokens a frame, one newline); V²Drop's LLaVA-1.5 schedule for NeXT, the paper's
    LLaVA-OneVision video setting ("llava-ov": 25 % and 5 % of the prompt's visual tokens, then one)
    for OneVision."""
    pytest.importorskip("matplotlib")
    spec = importlib.util.spec_from_file_location("e2e", E2E)
    e2e = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(e2e)
    rows = e2e.main(["--cpu", "--models", "tiny-llava-next,tiny-llava-ov", "--batches", "1",
                     "--policies", "none,v2drop,transformers,transformers+v2drop", "--repeats", "1", "--long", "3",
                     "--out", str(tmp_path)])
    by = {(r["model"], r["workload"], r["policy"]): r for r in rows}
    assert sorted({(m, w) for m, w, _ in by}) == [("tiny-llava-next", "anyres"), ("tiny-llava-ov", "anyres"),
                                                  ("tiny-llava-ov", "video8")]
    next_visual = 64 + 16 * 17  # 112 px tiles of 8 × 8 patches, a 224 px image: the 2 × 2 grid
    kept = {("tiny-llava-next", "anyres"): [next_visual] * 3 + [168] * 14 + [84] * 5 + [1] * 10}
    for workload, visual in (("anyres", 81 + 18 * 19), ("video8", 8 * 25 + 1)):  # 128 px tiles of 9 × 9 patches
        kept["tiny-llava-ov", workload] = ([visual] * 3 + [int(0.25 * visual)] * 13 + [int(0.05 * visual)] * 6
                                           + [1] * 6)
    for (model, workload), layers in kept.items():
        visual = layers[0]
        assert by[model, workload, "none"]["visual per layer (avg)"] == visual
        assert by[model, workload, "transformers"]["visual per layer (avg)"] == visual
        assert by[model, workload, "v2drop"]["visual per layer (avg)"] == pytest.approx(sum(layers) / len(layers))
        assert by[model, workload, "transformers+v2drop"]["visual per layer (avg)"] == pytest.approx(sum(layers) / len(layers))
        assert by[model, workload, "none"]["prompt tokens"] == e2e.TEXT_BEFORE + visual + e2e.TEXT_AFTER
