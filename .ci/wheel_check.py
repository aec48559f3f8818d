"""Checks of the installed wheel, run by .ci/wheel.sh from a folder outside the source tree.

    python wheel_check.py core           # a venv with only torch, numpy and the wheel
    python wheel_check.py transformers   # the same venv after the [transformers] extra

core: the package imports from site-packages (not the checkout), its version is the wheel's, every
op gives the reference's result on CPU, the fake kernels and torch.library.opcheck pass, and the
optional parts fail with the message naming their extra. transformers: a tiny random LLaVA
generates with V²Drop and prunes what the schedule says; the demo still names the [demo] extra.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys

import torch


def core() -> None:
    import v2drop_kernels as v2d
    from v2drop_kernels import reference
    from v2drop_kernels.extras import MissingExtra

    where = os.path.dirname(v2d.__file__)
    assert "site-packages" in where, f"imported from {where}, not from the installed wheel"
    assert v2d.__version__ == importlib.metadata.version("v2drop_kernels"), v2d.__version__
    print(f"v2drop_kernels {v2d.__version__} from {where}; backends {v2d.available_backends('cpu')}")

    gen = torch.Generator().manual_seed(0)
    B, S, D, V, k = 2, 50, 16, 30, 9
    hidden, prev = torch.randn(B, S, D, generator=gen), torch.randn(B, S, D, generator=gen)
    mask = torch.zeros(B, S, dtype=torch.bool)
    mask[:, 10:10 + V] = True
    pos = torch.arange(S).expand(B, S)
    args = (hidden, prev, mask, pos, V, k)
    got, want = v2d.variation_drop(hidden, prev, mask, pos, k, num_visual=V), reference.variation_drop(*args)
    for name, g, w in zip(("hidden", "position_ids", "keep_pos", "vis_mask"), got, want):
        assert torch.equal(g, w), f"variation_drop's {name} differs from the reference"
    torch.testing.assert_close(got.scores, want[4])  # float32 sums in another order: not bit-equal
    k_small, = v2d.kv_compact([hidden.unsqueeze(1)], got.keep_pos, seq_dim=2)
    assert torch.equal(k_small.squeeze(1), got.hidden)

    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        fake = torch.ops.v2drop.variation_drop(*(mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args))
    assert fake[0].shape == (B, S - V + k, D), fake[0].shape
    torch.library.opcheck(torch.ops.v2drop.variation_drop.default, args)
    torch.library.opcheck(torch.ops.v2drop.select_drop.default, (torch.rand(B, S, generator=gen), mask, pos, V, k))
    print("ops, fakes and opcheck: ok")

    from v2drop_kernels.models import random_llava, tiny_config

    try:
        random_llava(tiny_config(layers=2, hidden=32))
    except MissingExtra as e:
        assert "pip install 'v2drop_kernels[transformers]'" in str(e), e
        print(f"without transformers: {e}")
    else:
        raise AssertionError("a model was built without transformers")


def with_transformers() -> None:
    from v2drop_kernels.models import V2Drop, random_llava, tiny_config

    cfg = tiny_config(layers=4, hidden=64, image_size=112)  # 64 visual tokens an image
    model = random_llava(cfg, seed=0)
    n = cfg.tokens_per_image
    ids = torch.cat([torch.tensor([1, 5, 6]), torch.full((n,), cfg.image_token_id), torch.tensor([7, 8])])
    pixels = torch.randn(1, 3, 112, 112, generator=torch.Generator().manual_seed(0))
    out = model.generate([ids], pixels, max_new_tokens=4, policy=V2Drop(layers=(1, 2), keep=(0.5, 0.25)))
    visual = [v[0] for v in out.trace.visual_per_layer]
    assert visual == [n, n // 2, n // 8, n // 8], visual
    print(f"pruned generate: tokens {out.tokens.tolist()}, visual tokens per layer {visual}")

    script = os.path.join(os.path.dirname(sys.executable), "v2drop-demo")  # the console script the wheel installed
    demo = subprocess.run([script, "--max-new-tokens", "2"], capture_output=True, text=True)
    assert demo.returncode == 1 and "pip install 'v2drop_kernels[demo]'" in demo.stderr, (demo.returncode, demo.stderr)
    print(f"v2drop-demo without the [demo] extra: {demo.stderr.strip()}")


if __name__ == "__main__":
    {"core": core, "transformers": with_transformers}[sys.argv[1]]()
