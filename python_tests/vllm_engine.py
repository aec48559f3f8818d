"""Runs one vLLM engine on a list of requests and writes what it returned: ``python vllm_engine.py SPEC OUT``.

The vLLM tests start every engine through this script, in a process of its own (vLLM's engine and
workers are processes too; a fresh one per engine keeps engines, plugins and environment apart).
``SPEC`` (JSON):

- ``model``: a model folder; ``engine``: keyword arguments of ``vllm.LLM``; ``v2drop``: the pruning
  config (``additional_config["v2drop"]``) or ``null``;
- ``requests``: ``{"prompt": text, "images": [[seed, h, w], ...], "videos": [[seed, frames, h, w], ...]}``
  each (prompts made by :func:`v2drop_kernels.integrations.vllm.folders.vllm_prompt`), run as one batch;
- ``refused``: requests sent one by one, each expected to fail (``"sampling"``: sampling parameters
  of that request);
- ``max_tokens`` (8), ``logprobs`` (1);
- ``blocks``: step the engine itself (in-process engine core) and record, after every step, the KV
  blocks each running request holds in each KV-cache group, from the scheduler's own managers.

``OUT`` (JSON): ``results`` (prompt ids, tokens, top log-probabilities per request), ``errors``
(``refused``'s exceptions), ``trace`` (request -> layer -> kept visual prompt indices, per rank),
``blocks`` and ``groups`` (the KV-cache groups' specs).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path


def _result(output) -> dict:
    completion = output.outputs[0]
    logprobs = [round(max(step.values(), key=lambda lp: lp.logprob).logprob, 6) for step in completion.logprobs or []]
    return {"request_id": output.request_id, "prompt_token_ids": list(output.prompt_token_ids),
            "tokens": list(completion.token_ids), "logprobs": logprobs, "finish_reason": completion.finish_reason}


def _groups(scheduler) -> list[dict]:
    return [{"spec": type(g.kv_cache_spec).__name__, "stage": getattr(g.kv_cache_spec, "stage", 0),
             "layers": list(g.layer_names), "block_size": g.kv_cache_spec.block_size}
            for g in scheduler.kv_cache_manager.coordinator.kv_cache_config.kv_cache_groups]


def _step_with_blocks(llm, prompts, params) -> tuple[list, list, list, dict]:
    """Runs the requests by stepping the engine, recording the scheduler's block accounting."""
    engine = llm.llm_engine
    scheduler = engine.engine_core.engine_core.scheduler
    managers = scheduler.kv_cache_manager.coordinator.single_type_managers
    pool = scheduler.kv_cache_manager.block_pool
    free_before = pool.get_num_free_blocks()
    for i, prompt in enumerate(prompts):
        engine.add_request(str(i), prompt, params)
    outputs, steps = {}, []
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                outputs[out.request_id] = out
        steps.append({req_id: {"computed": req.num_computed_tokens,
                               "blocks": [len(m.req_to_blocks.get(req_id, ())) for m in managers]}
                      for req_id, req in scheduler.requests.items()})
    accounting = {"free_before": free_before, "free_after": pool.get_num_free_blocks()}
    return [outputs[str(i)] for i in range(len(prompts))], steps, _groups(scheduler), accounting


def main(spec_path: str, out_path: str) -> None:
    from vllm import LLM, SamplingParams

    from v2drop_kernels.integrations.vllm.folders import vllm_prompt

    spec = json.loads(Path(spec_path).read_text())
    engine = dict(spec.get("engine", {}))
    trace_dir = tempfile.mkdtemp(prefix="v2drop-trace-")
    if spec.get("v2drop") is not None:
        engine["additional_config"] = {"v2drop": {**spec["v2drop"], "trace": trace_dir}}
    llm = LLM(model=spec["model"], **engine)
    params = SamplingParams(max_tokens=spec.get("max_tokens", 8), temperature=0.0, logprobs=spec.get("logprobs", 1))
    prompts = [vllm_prompt(r) for r in spec.get("requests", [])]
    out: dict = {}
    if spec.get("blocks"):
        outputs, out["blocks"], out["groups"], out["accounting"] = _step_with_blocks(llm, prompts, params)
    else:
        outputs = llm.generate(prompts, params, use_tqdm=False) if prompts else []
    out["results"] = [_result(o) for o in outputs]
    out["errors"] = []
    for request in spec.get("refused", []):
        try:
            own = params.clone()
            for name, value in request.get("sampling", {}).items():
                setattr(own, name, value)
            llm.generate([vllm_prompt(request)], own, use_tqdm=False)
            out["errors"].append(None)
        except Exception as error:  # noqa: BLE001  (the test reads the type and message)
            out["errors"].append({"type": type(error).__name__, "message": str(error)})
    out["trace"] = {}
    for file in sorted(Path(trace_dir).glob("rank*.jsonl")):
        rank = {}
        for line in file.read_text().splitlines():
            record = json.loads(line)
            rank.setdefault(record["request"], {})[str(record["layer"])] = record["kept"]
        out["trace"][file.stem] = rank
    Path(out_path).write_text(json.dumps(out))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main(sys.argv[1], sys.argv[2])
