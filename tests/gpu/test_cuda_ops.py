"""CUDA backend against the CPU backend, op by op, forward and backward.

Each op runs through the test binding gnr._C._op(name, device, inputs, params)
on "cpu" and on "cuda" with the same random inputs; every returned array must
agree within the relative tolerances of DECISIONS.md section 1 (1e-4 forward,
1e-3 backward). Inputs are the op's tensor arguments in ops.h order (outputs
excluded); backward gradient buffers start at zero and are returned. Since
both sides go through the same binding, the order of the returned tuple does
not matter here.
"""
import numpy as np
import pytest

import gnr

needs_gpu = pytest.mark.skipif(not gnr.cuda_available(), reason="no GPU")

FWD = 1e-4
BWD = 1e-3


def rnd(*shape, seed=[0]):
    seed[0] += 1
    return np.random.default_rng(seed[0]).standard_normal(shape).astype(np.float32)


def rel(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)


def run(name, device, inputs, params=None):
    return gnr._C._op(name, device, tuple(inputs), dict(params or {}))


def compare(name, inputs, params=None, tol=FWD):
    cpu = run(name, "cpu", inputs, params)
    gpu = run(name, "cuda", inputs, params)
    assert len(cpu) == len(gpu)
    for i, (c, g) in enumerate(zip(cpu, gpu)):
        c, g = np.asarray(c), np.asarray(g)
        assert c.shape == g.shape, f"{name} output {i}: shape {g.shape} on cuda, {c.shape} on cpu"
        assert np.all(np.isfinite(g)), f"{name} output {i}: non-finite values on cuda"
        err = rel(g, c)
        assert err <= tol, f"{name} output {i}: relative error {err:.3g} > {tol}"
    return cpu, gpu


# ------------------------------------------------------------------ memory


@needs_gpu
def test_fill():
    compare("fill", (np.zeros((2, 3, 4, 5), np.float32),), {"value": 1.25})


@needs_gpu
def test_copy():
    compare("copy", (rnd(3, 5, 7),))


# -------------------------------------------------------------- arithmetic


@needs_gpu
def test_add():
    compare("add", (rnd(2, 3, 5, 5), rnd(2, 3, 5, 5)))


@needs_gpu
def test_scale():
    compare("scale", (rnd(4, 33),), {"alpha": -0.7})


@needs_gpu
def test_axpy():
    compare("axpy", (rnd(4, 33),), {"alpha": 0.3}, tol=BWD)


@needs_gpu
def test_add_channel():
    compare("add_channel_forward", (rnd(2, 6, 5, 7), rnd(2, 6)))
    compare("add_channel_backward", (rnd(2, 6, 5, 7),), tol=BWD)


# ------------------------------------------------------------------ linear


@needs_gpu
@pytest.mark.parametrize("bias", [True, False])
def test_linear_forward(bias):
    x, w, b = rnd(2, 9, 24), rnd(40, 24), rnd(40)
    compare("linear_forward", (x, w, b if bias else None))


@needs_gpu
def test_linear_1x1_weight():
    compare("linear_forward", (rnd(7, 16), rnd(12, 16, 1, 1), rnd(12)))


@needs_gpu
def test_linear_backward():
    compare("linear_backward", (rnd(2, 9, 40), rnd(40, 24)), tol=BWD)


# ------------------------------------------------------------------ conv2d

CONVS = [
    # (N, C, H, W, O, K, stride, (top, bottom, left, right))
    (2, 3, 9, 8, 5, 3, 1, (1, 1, 1, 1)),
    (1, 4, 10, 10, 6, 3, 2, (0, 1, 0, 1)),  # the VAE's asymmetric downsampler
    (2, 6, 7, 5, 4, 1, 1, (0, 0, 0, 0)),  # 1x1: the direct product path
    (1, 3, 8, 8, 2, 5, 1, (2, 2, 2, 2)),
]


def conv_params(stride, pads):
    t, b, l, r = pads
    return {"stride": stride, "pad_top": t, "pad_bottom": b, "pad_left": l, "pad_right": r}


def conv_out(H, W, K, stride, pads):
    t, b, l, r = pads
    return (H + t + b - K) // stride + 1, (W + l + r - K) // stride + 1


@needs_gpu
@pytest.mark.parametrize("cfg", CONVS)
@pytest.mark.parametrize("bias", [True, False])
def test_conv2d_forward(cfg, bias):
    N, C, H, W, O, K, s, pads = cfg
    x, w, b = rnd(N, C, H, W), rnd(O, C, K, K), rnd(O)
    compare("conv2d_forward", (x, w, b if bias else None), conv_params(s, pads))


@needs_gpu
@pytest.mark.parametrize("cfg", CONVS)
def test_conv2d_backward(cfg):
    N, C, H, W, O, K, s, pads = cfg
    Ho, Wo = conv_out(H, W, K, s, pads)
    params = conv_params(s, pads)
    params["x_shape"] = (N, C, H, W)
    compare("conv2d_backward", (rnd(N, O, Ho, Wo), rnd(O, C, K, K)), params, tol=BWD)


@needs_gpu
def test_conv2d_tiled():
    """Large enough that the column buffer is split into several pixel tiles."""
    N, C, H, W, O, K = 1, 128, 128, 128, 4, 3
    pads = (1, 1, 1, 1)
    compare("conv2d_forward", (rnd(N, C, H, W), rnd(O, C, K, K) * 0.05, rnd(O)), conv_params(1, pads))
    params = conv_params(1, pads)
    params["x_shape"] = (N, C, H, W)
    compare("conv2d_backward", (rnd(N, O, H, W), rnd(O, C, K, K) * 0.05), params, tol=BWD)


# ----------------------------------------------------------- normalisation


@needs_gpu
@pytest.mark.parametrize("affine", [True, False])
def test_group_norm(affine):
    x = rnd(2, 8, 5, 6) * 3 + 1
    g, b = (rnd(8), rnd(8)) if affine else (None, None)
    p = {"groups": 4, "eps": 1e-5}
    compare("group_norm_forward", (x, g, b), p)
    compare("group_norm_backward", (rnd(2, 8, 5, 6), x, g), p, tol=BWD)


@needs_gpu
@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm(affine):
    x = rnd(3, 7, 48) * 2 - 1
    g, b = (rnd(48), rnd(48)) if affine else (None, None)
    p = {"eps": 1e-5}
    compare("layer_norm_forward", (x, g, b), p)
    compare("layer_norm_backward", (rnd(3, 7, 48), x, g), p, tol=BWD)


# ------------------------------------------------------------- activations


@needs_gpu
@pytest.mark.parametrize("act", [0, 1, 2])
def test_act(act):
    x = rnd(3, 5, 17) * 3
    compare("act_forward", (x,), {"act": act})
    compare("act_backward", (rnd(3, 5, 17), x), {"act": act}, tol=BWD)


@needs_gpu
def test_geglu():
    x = rnd(2, 6, 2 * 20) * 2
    compare("geglu_forward", (x,))
    compare("geglu_backward", (rnd(2, 6, 20), x), tol=BWD)


# ------------------------------------------------------------------ layout


@needs_gpu
def test_layout_transposes():
    N, C, H, W = 2, 5, 3, 4
    x = rnd(N, C, H, W)
    compare("nchw_to_nlc", (x,))
    compare("nlc_to_nchw", (rnd(N, H * W, C),), {"height": H, "width": W})
    compare("nchw_to_nlc_backward", (rnd(N, H * W, C),), {"height": H, "width": W}, tol=BWD)
    compare("nlc_to_nchw_backward", (rnd(N, C, H, W),), tol=BWD)


@needs_gpu
def test_concat_channels():
    a, b = rnd(2, 3, 4, 5), rnd(2, 6, 4, 5)
    compare("concat_channels_forward", (a, b))
    compare("concat_channels_backward", (rnd(2, 9, 4, 5),), {"channels_a": 3}, tol=BWD)


@needs_gpu
def test_upsample2x():
    compare("upsample2x_forward", (rnd(2, 3, 4, 5),))
    compare("upsample2x_backward", (rnd(2, 3, 8, 10),), tol=BWD)


# --------------------------------------------------------------- attention

ATTN = [
    # (N, Lq, Lk, heads, D, causal)
    (2, 7, 11, 2, 8, 0),  # cross attention
    (1, 9, 9, 3, 4, 1),  # causal self attention (CLIP)
    (1, 16, 16, 1, 32, 0),
]


@needs_gpu
@pytest.mark.parametrize("cfg", ATTN)
@pytest.mark.parametrize("want_probs", [False, True])
def test_attention_forward(cfg, want_probs):
    N, Lq, Lk, H, D, causal = cfg
    q, k, v = rnd(N, Lq, H * D), rnd(N, Lk, H * D), rnd(N, Lk, H * D)
    p = {"heads": H, "causal": causal, "scale": D**-0.5, "want_probs": want_probs}
    compare("attention_forward", (q, k, v), p)


@needs_gpu
@pytest.mark.parametrize("cfg", ATTN)
@pytest.mark.parametrize("with_dprobs", [False, True])
def test_attention_backward(cfg, with_dprobs):
    N, Lq, Lk, H, D, causal = cfg
    q, k, v = rnd(N, Lq, H * D), rnd(N, Lk, H * D), rnd(N, Lk, H * D)
    scale = D**-0.5
    fwd = run("attention_forward", "cpu", (q, k, v), {"heads": H, "causal": causal, "scale": scale, "want_probs": True})
    probs = [np.asarray(a) for a in fwd if np.asarray(a).shape == (N, H, Lq, Lk)][0]
    dprobs = rnd(N, H, Lq, Lk) if with_dprobs else None
    compare("attention_backward", (q, k, v, probs, rnd(N, Lq, H * D), dprobs), {"heads": H, "scale": scale}, tol=BWD)


@needs_gpu
def test_attention_probs_do_not_change_out():
    """The same kernels run with and without probs: identical outputs on cuda."""
    N, Lq, Lk, H, D = 1, 33, 20, 4, 8
    q, k, v = rnd(N, Lq, H * D), rnd(N, Lk, H * D), rnd(N, Lk, H * D)
    base = {"heads": H, "causal": 0, "scale": D**-0.5}
    without = run("attention_forward", "cuda", (q, k, v), {**base, "want_probs": False})
    with_p = run("attention_forward", "cuda", (q, k, v), {**base, "want_probs": True})
    out_without = [np.asarray(a) for a in without if np.asarray(a).shape == (N, Lq, H * D)][0]
    out_with = [np.asarray(a) for a in with_p if np.asarray(a).shape == (N, Lq, H * D)][0]
    assert np.array_equal(out_without, out_with)


@needs_gpu
def test_attention_chunked():
    """Enough queries that the score buffer is split into query chunks."""
    N, Lq, Lk, H, D = 1, 1536, 2048, 8, 8
    q, k, v = rnd(N, Lq, H * D), rnd(N, Lk, H * D), rnd(N, Lk, H * D)
    p = {"heads": H, "causal": 0, "scale": D**-0.5}
    compare("attention_forward", (q, k, v), {**p, "want_probs": True})
    compare("attention_forward", (q, k, v), {**p, "want_probs": False})


# --------------------------------------------------------------- embedding


@needs_gpu
def test_embedding():
    table = rnd(50, 16)
    ids = np.array([0, 49, 3, 3, 17, 8, 1], dtype=np.int32)
    compare("embedding_forward", (table,), {"ids": ids})


# -------------------------------------------------------------- reductions


@needs_gpu
def test_reductions():
    a, b = rnd(2, 4, 33, 17), rnd(2, 4, 33, 17)
    compare("sq_diff_mean", (a, b))
    compare("abs_diff_mean", (a, b))
    compare("sum_sq", (a,))
    compare("sq_diff_mean_backward", (a, b), {"scale": 0.7}, tol=BWD)
    compare("abs_diff_mean_backward", (a, b), {"scale": 0.7}, tol=BWD)


@needs_gpu
def test_reductions_deterministic():
    a, b = rnd(1 << 20), rnd(1 << 20)
    r1 = run("sq_diff_mean", "cuda", (a, b))
    r2 = run("sq_diff_mean", "cuda", (a, b))
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(r1, r2))
    s1 = run("sum_sq", "cuda", (a,))
    s2 = run("sum_sq", "cuda", (a,))
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(s1, s2))


@needs_gpu
def test_device_queries():
    from gnr import _C_cuda

    assert _C_cuda.device_count() >= 1
    assert isinstance(_C_cuda.device_name(), str) and _C_cuda.device_name()


def test_cuda_available_never_raises():
    """True or False on any machine: no driver, no device and a CPU-only build give False."""
    first = gnr.cuda_available()
    assert isinstance(first, bool)
    assert gnr.cuda_available() is first
    assert gnr.build_info()["cuda"] is first
