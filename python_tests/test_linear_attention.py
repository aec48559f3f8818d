"""Qwen3.5's Gated DeltaNet pieces (v2drop_kernels.models.linear_attention): the chunked prefill rule
and the decode step against the definition (the token-by-token recurrence), and against
transformers' own reference functions; the short convolution's prefill and step forms; left padding
leaving the state as the unpadded row's."""

from __future__ import annotations

import pytest
import torch

from v2drop_kernels.models import linear_attention as la


def _inputs(b: int, s: int, h: int, dk: int, dv: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.nn.functional.normalize(torch.randn(b, s, h, dk, generator=gen), dim=-1) * dk ** -0.5
    k = torch.nn.functional.normalize(torch.randn(b, s, h, dk, generator=gen), dim=-1)
    v = torch.randn(b, s, h, dv, generator=gen)
    g = -torch.rand(b, s, h, generator=gen) * 2.0  # decays in (e^-2, 1]
    beta = torch.rand(b, s, h, generator=gen)
    return q, k, v, g, beta


@pytest.mark.parametrize("s, chunk", [(1, 4), (7, 4), (8, 4), (9, 4), (33, 8), (70, 64), (130, 64)])
@pytest.mark.parametrize("initial", [False, True])
def test_chunked_rule_is_the_recurrence(s, chunk, initial):
    q, k, v, g, beta = _inputs(2, s, 3, 8, 6, seed=s)
    state = torch.randn(2, 3, 8, 6, generator=torch.Generator().manual_seed(1)) if initial else None
    want_o, want_state = la.recurrent_delta_rule(q, k, v, g, beta, state)
    got_o, got_state = la.chunked_delta_rule(q, k, v, g, beta, state, chunk=chunk)
    torch.testing.assert_close(got_o, want_o, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(got_state, want_state, atol=2e-5, rtol=1e-4)


def test_decode_step_continues_the_recurrence():
    q, k, v, g, beta = _inputs(2, 12, 4, 8, 8, seed=3)
    _, state = la.recurrent_delta_rule(q[:, :9], k[:, :9], v[:, :9], g[:, :9], beta[:, :9])
    want_o, want_state = la.recurrent_delta_rule(q, k, v, g, beta)
    for t in range(9, 12):
        o = la.delta_rule_step(q[:, t], k[:, t], v[:, t], g[:, t], beta[:, t], state)
        torch.testing.assert_close(o, want_o[:, t], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(state, want_state, atol=1e-5, rtol=1e-5)


def test_conv_step_continues_the_prefill_convolution():
    gen = torch.Generator().manual_seed(0)
    x, weight = torch.randn(2, 10, 6, generator=gen), torch.randn(6, 4, generator=gen)
    full = la.causal_conv(x, weight)
    for width in (3, 4):  # the package keeps K - 1 inputs, transformers' cache K: both continue alike
        window = la.conv_window(x[:, :7], width)
        for t in range(7, 10):
            torch.testing.assert_close(la.conv_step(x[:, t], window, weight), full[:, t], atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(window, x[:, 10 - width:].transpose(1, 2))
    short = la.conv_window(x[:, :2], 3)  # a row shorter than the window: zeros on the left
    assert torch.equal(short[..., 0], torch.zeros(2, 6)) and torch.equal(short[..., 1:], x[:, :2].transpose(1, 2))


def _mixer(c: int, hv: int, hk: int, dk: int, dv: int, kernel: int = 4):
    from v2drop_kernels.models.config import LinearAttentionConfig

    gen = torch.Generator().manual_seed(5)
    shape = LinearAttentionConfig(hk, hv, dk, dv, kernel)
    assert shape.conv_dim == c
    return la.Mixer((), torch.randn(c, kernel, generator=gen) * 0.5, torch.randn(hv, generator=gen),
                    torch.randn(hv, generator=gen), 1 + 0.1 * torch.randn(dv, generator=gen), shape)


def test_left_padding_leaves_the_state_of_the_unpadded_row():
    hk, hv, dk, dv = 2, 4, 8, 8
    m = _mixer(2 * hk * dk + hv * dv, hv, hk, dk, dv)
    gen = torch.Generator().manual_seed(7)
    s, pad = 19, 6
    mixed, z = torch.randn(1, s, m.shape.conv_dim, generator=gen), torch.randn(1, s, hv * dv, generator=gen)
    beta, g = torch.rand(1, s, hv, generator=gen), -torch.rand(1, s, hv, generator=gen)
    y, window, state = la.prefill(mixed, z, beta, g, None, m, 1e-6, chunk=8)

    def padded(x):  # garbage on the padding: it must not matter
        return torch.cat([torch.randn(1, pad, *x.shape[2:], generator=gen), x], dim=1)

    valid = torch.arange(s + pad)[None] >= pad
    y2, window2, state2 = la.prefill(padded(mixed), padded(z), padded(beta), padded(g), valid, m, 1e-6, chunk=8)
    torch.testing.assert_close(y2[:, pad:], y, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(state2, state, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(window2, window)


def test_strong_and_spiky_decays_stay_exact():
    """Decays of e^-20 to e^-300 on some tokens (the decay between two tokens is a difference of
    cumulative sums within a chunk): the chunked rule stays within 1e-4 of a float64 recurrence."""
    q, k, v, g, beta = _inputs(1, 96, 2, 8, 4, seed=9)
    gen = torch.Generator().manual_seed(2)
    spikes = torch.rand(g.shape, generator=gen) < 0.1
    g = torch.where(spikes, -torch.tensor([20.0, 80.0, 300.0])[torch.randint(0, 3, g.shape, generator=gen)], g * 0.01)
    want_o, want_state = la.recurrent_delta_rule(*(x.double() for x in (q, k, v, g, beta)))
    got_o, got_state = la.chunked_delta_rule(q, k, v, g, beta)
    assert torch.isfinite(got_o).all()
    torch.testing.assert_close(got_o.double(), want_o, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got_state.double(), want_state, atol=1e-4, rtol=1e-4)


def test_a_bf16_layer_equals_transformers_prefill_and_decode_steps():
    """One Gated DeltaNet layer of a bf16 model, the package's functions on its weights, against
    transformers' module with its hybrid cache: the prompt's output, three decode steps and the
    final state, bit for bit (the step's convolution accumulates as the prefill's does)."""
    pytest.importorskip("transformers.models.qwen3_5")
    from qwen_helpers import QWEN35_ARCH, tiny_qwen_vl
    from transformers import DynamicCache

    from v2drop_kernels.models import TextConfig
    from v2drop_kernels.models.llama import layer_weights, pre_linear

    hf = tiny_qwen_vl(QWEN35_ARCH, seed=5).to(torch.bfloat16)
    cfg = TextConfig.from_hf(hf.config.text_config.to_dict())
    layer = hf.model.language_model.layers[0]
    w = layer_weights(layer, cfg)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 13, cfg.hidden_size, generator=gen).to(torch.bfloat16)
    steps = [torch.randn(2, 1, cfg.hidden_size, generator=gen).to(torch.bfloat16) for _ in range(3)]
    cache = DynamicCache(config=hf.config.text_config)
    with torch.no_grad():
        want = [layer.linear_attn(layer.input_layernorm(h), cache_params=cache) for h in (x, *steps)]
        y, window, state = la.prefill(*pre_linear(x, w), None, w.mixer, cfg.rms_norm_eps)
        got = [torch.nn.functional.linear(y, *w.o)]
        for h in steps:
            got.append(torch.nn.functional.linear(la.decode_step(*pre_linear(h, w), window, state, w.mixer,
                                                                 cfg.rms_norm_eps), *w.o))
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    assert torch.equal(state, cache.get_recurrent_state(0))


def test_the_rules_match_transformers_reference():
    mod = pytest.importorskip("transformers.models.qwen3_5.modeling_qwen3_5")
    gen = torch.Generator().manual_seed(11)
    b, s, hk, hv, dk, dv = 2, 75, 2, 4, 8, 6
    q, k = torch.randn(b, s, hk, dk, generator=gen), torch.randn(b, s, hk, dk, generator=gen)
    v = torch.randn(b, s, hv, dv, generator=gen)
    g, beta = -torch.rand(b, s, hv, generator=gen) * 3, torch.rand(b, s, hv, generator=gen)
    want_o, want_state = mod.torch_chunk_gated_delta_rule(q, k, v, g, beta, output_final_state=True,
                                                           use_qk_l2norm_in_kernel=True)
    # the package's layout: q and k normalised, q scaled and each key head repeated for its value heads
    rep = hv // hk
    qn = (q * torch.rsqrt(q.pow(2).sum(-1, keepdim=True) + 1e-6)).repeat_interleave(rep, 2) * dk ** -0.5
    kn = (k * torch.rsqrt(k.pow(2).sum(-1, keepdim=True) + 1e-6)).repeat_interleave(rep, 2)
    got_o, got_state = la.chunked_delta_rule(qn, kn, v, g, beta)
    torch.testing.assert_close(got_o, want_o, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(got_state, want_state, atol=2e-5, rtol=1e-4)
    step_o, step_state = mod.torch_recurrent_gated_delta_rule(q[:, -1:], k[:, -1:], v[:, -1:], g[:, -1:], beta[:, -1:],
                                                              initial_state=want_state, output_final_state=True,
                                                              use_qk_l2norm_in_kernel=True)
    o = la.delta_rule_step(qn[:, -1], kn[:, -1], v[:, -1], g[:, -1], beta[:, -1], got_state)
    torch.testing.assert_close(o, step_o[:, 0], atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(got_state, step_state, atol=2e-5, rtol=1e-4)
