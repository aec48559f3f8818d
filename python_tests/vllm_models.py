"""This package's answers for the vLLM tests, and the engine each test starts.

The model folders and media are :mod:`v2drop_kernels.integrations.vllm.folders`' (also used by the
serving benchmark): :func:`package_generate` runs this package's own model on a folder, through the
folder's HF processor, as the reference a pruned vLLM engine must match; :func:`run_engine` starts one
vLLM engine in a process of its own (:mod:`vllm_engine`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from v2drop_kernels.integrations.vllm.folders import (EOS, FPS, IMAGE_TOKEN, LLAVA_IMAGE, LAYERS,  # noqa: F401
                                                      VIDEO_TOKEN, VISION_START, image, request_media, save_llava,
                                                      save_qwen, video)

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def visual_runs(ids, visual_ids) -> list[tuple[int, int]]:
    """``[start, end)`` runs of ``visual_ids`` in ``ids``: the placeholder ranges vLLM gives the items
    that fill them."""
    visual = [token in visual_ids for token in ids] + [False]
    starts = [i for i, v in enumerate(visual) if v and (i == 0 or not visual[i - 1])]
    return [(start, visual.index(False, start)) for start in starts]


def package_generate(folder: Path, request: dict, policy, max_new_tokens: int):
    """This package's model on ``folder`` (:func:`~v2drop_kernels.models.load_model`) for one request
    spec (``{"prompt": text, "images": ..., "videos": ...}``) through the folder's HF processor: the
    prompt token ids, the greedy tokens, the prompt index of every visual token each layer kept, and
    the log-probability of the first token (from the last prompt token's logits)."""
    from transformers import AutoProcessor

    from v2drop_kernels.models import load_model

    folder = Path(folder)
    model = load_model(folder)
    media = request_media(request)
    processor = AutoProcessor.from_pretrained(folder)
    listed = {k: (v if isinstance(v, list) else [v]) for k, v in media.items()}
    extra = {}
    if "video" in listed:  # the frames and their metadata, as vLLM hands them to the processor
        from transformers.video_utils import VideoMetadata

        extra = {"do_sample_frames": False, "video_metadata": [
            VideoMetadata(**{k: v for k, v in meta.items() if k != "do_sample_frames"}) for _, meta in listed["video"]]}
        listed["video"] = [frames for frames, _ in listed["video"]]
    inputs = processor(text=[request["prompt"]], images=listed.get("image"), videos=listed.get("video"),
                       return_tensors="pt", **extra)
    prompt_token_ids = inputs["input_ids"][0].tolist()
    names = ("pixel_values",) if json.loads((folder / "config.json").read_text())["model_type"] == "llava" else (
        "pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts")
    kwargs = {name: inputs[name] for name in names if name in inputs}
    out = model.generate([torch.tensor(prompt_token_ids)], max_new_tokens=max_new_tokens, policy=policy, **kwargs)
    visual = set(np.flatnonzero(np.isin(prompt_token_ids, (IMAGE_TOKEN, VIDEO_TOKEN, LLAVA_IMAGE))).tolist())
    kept = {layer: sorted(visual & set(out.layer_positions[layer][0].tolist())) for layer in getattr(policy, "layers", ())}
    tokens = out.tokens[0].tolist()
    first_logprob = float(out.prefill_logits[0].log_softmax(-1)[tokens[0]])
    return prompt_token_ids, tokens, kept, first_logprob


def run_engine(spec: dict, workdir: Path, *, stock: bool = False, timeout: float = 600) -> dict:
    """Runs :mod:`vllm_engine` on ``spec`` in a process of its own and returns what it wrote.
    ``stock``: with no vLLM plugin loaded at all (``VLLM_PLUGINS=""``)."""
    import subprocess
    import sys
    import tempfile

    workdir = Path(tempfile.mkdtemp(dir=workdir, prefix="engine-"))
    (workdir / "spec.json").write_text(json.dumps(spec))
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "VLLM_PLUGINS")}
    env.update(HF_HUB_OFFLINE="1", VLLM_LOGGING_LEVEL=env.get("VLLM_LOGGING_LEVEL", "WARNING"))
    if stock:
        env["VLLM_PLUGINS"] = ""
    if spec.get("blocks"):
        env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the engine core in the script's process, to read its scheduler
    script = Path(__file__).with_name("vllm_engine.py")
    run = subprocess.run([sys.executable, str(script), str(workdir / "spec.json"), str(workdir / "out.json")],
                         env=env, capture_output=True, text=True, timeout=timeout)
    if run.returncode != 0:
        raise RuntimeError(f"the vLLM engine failed (exit {run.returncode}):\n{run.stderr[-6000:]}")
    return json.loads((workdir / "out.json").read_text())
