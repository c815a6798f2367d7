"""Every op of csrc/ops.h, forward and backward, against PyTorch.

Ops run through gnr._C._op on each available device (the CUDA variants are
skipped, as "no GPU", where no GPU is usable, whether or not the build has
the CUDA backend). Tolerances are
DECISIONS.md section 1: relative error <= 1e-4 forward, <= 1e-3 backward.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import gnr

torch.set_num_threads(1)

FWD = 1e-4
BWD = 1e-3

HAS_CUDA = gnr.cuda_available()
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason="no GPU")),
]


def op(name, device, *inputs, **params):
    return gnr._C._op(name, device, tuple(inputs), params)


def rel(ours, ref):
    ours = np.asarray(ours, dtype=np.float64)
    ref = np.asarray(ref.detach().numpy() if isinstance(ref, torch.Tensor) else ref, dtype=np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    assert np.all(np.isfinite(ours)), "non-finite values in the result"
    return np.linalg.norm(ours - ref) / max(np.linalg.norm(ref), 1e-30)


def rand(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def t(a, grad=False):
    return torch.tensor(a, requires_grad=grad)


def grads(fn, inputs, upstream):
    """Input gradients of <fn(*inputs), upstream> by autograd (None where not needed)."""
    ts = [t(a, True) if a is not None else None for a in inputs]
    out = fn(*ts)
    outs = out if isinstance(out, tuple) else (out,)
    ups = upstream if isinstance(upstream, tuple) else (upstream,)
    loss = sum((o * t(u)).sum() for o, u in zip(outs, ups) if u is not None)
    loss.backward()
    return [x.grad if x is not None else None for x in ts]


@pytest.fixture
def rng(request):
    return np.random.default_rng(abs(hash(request.node.name)) % (2**32))


# ------------------------------------------------------------------ memory


@pytest.mark.parametrize("device", DEVICES)
def test_memory_ops(device, rng):
    x = rand(rng, 3, 5, 7)
    (y,) = op("fill", device, x, value=2.5)
    assert y.shape == x.shape and np.all(y == 2.5)
    for name in ("copy", "upload", "download"):
        (y,) = op(name, device, x)
        assert np.array_equal(y, x), name


@pytest.mark.parametrize("device", DEVICES)
def test_arith(device, rng):
    a, b = rand(rng, 2, 3, 37), rand(rng, 2, 3, 37)
    assert rel(op("add", device, a, b)[0], t(a) + t(b)) <= FWD
    assert rel(op("scale", device, a, alpha=-0.75)[0], -0.75 * t(a)) <= FWD
    assert rel(op("axpy", device, a, b, alpha=1.5)[0], t(b) + 1.5 * t(a)) <= FWD


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n", [1, 2])
def test_add_channel(device, rng, n):
    x, v = rand(rng, n, 6, 5, 7), rand(rng, n, 6)
    ref = lambda x, v: x + v[:, :, None, None]  # noqa: E731
    assert rel(op("add_channel_forward", device, x, v)[0], ref(t(x), t(v))) <= FWD
    g = rand(rng, n, 6, 5, 7)
    _, dv = grads(ref, [x, v], g)
    assert rel(op("add_channel_backward", device, g)[0], dv) <= BWD


# ------------------------------------------------------------------ linear


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("xshape,bias,conv_w", [((7, 13), True, False), ((2, 9, 13), False, False),
                                                ((1, 5, 13), True, True)])
def test_linear(device, rng, xshape, bias, conv_w):
    x, w = rand(rng, *xshape), rand(rng, 11, 13)
    b = rand(rng, 11) if bias else None
    wop = w.reshape(11, 13, 1, 1) if conv_w else w
    ref = F.linear(t(x), t(w), t(b) if bias else None)
    assert rel(op("linear_forward", device, x, wop, b)[0], ref) <= FWD
    g = rand(rng, *ref.shape)
    (dx,) = grads(lambda x: F.linear(x, t(w)), [x], g)
    assert rel(op("linear_backward", device, g, wop)[0], dx) <= BWD


# ------------------------------------------------------------------ conv2d

CONVS = [
    # N, C, H, W, O, KH, KW, stride, (top, bottom, left, right)
    (2, 3, 9, 11, 5, 3, 3, 1, (1, 1, 1, 1)),     # 3x3 same
    (1, 4, 10, 8, 6, 3, 3, 2, (1, 1, 1, 1)),     # UNet downsampler
    (1, 3, 9, 9, 4, 3, 3, 2, (0, 1, 0, 1)),      # VAE encoder downsampler
    (2, 6, 7, 5, 4, 1, 1, 1, (0, 0, 0, 0)),      # 1x1: straight to sgemm
    (1, 5, 8, 9, 3, 1, 1, 2, (0, 0, 0, 0)),      # 1x1 with stride: im2col path
    (1, 3, 8, 10, 2, 2, 3, 1, (0, 2, 1, 0)),     # odd kernel, odd pads
    (2, 2, 6, 6, 3, 3, 3, 1, (0, 0, 0, 0)),      # valid
]


def conv_ref(x, w, b, stride, pads):
    top, bottom, left, right = pads
    return F.conv2d(F.pad(x, (left, right, top, bottom)), w, b, stride=stride)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cfg", CONVS)
def test_conv2d(device, rng, cfg):
    n, c, h, w_, o, kh, kw, s, pads = cfg
    x, w, b = rand(rng, n, c, h, w_), rand(rng, o, c, kh, kw), rand(rng, o)
    ref = conv_ref(t(x), t(w), t(b), s, pads)
    (y,) = op("conv2d_forward", device, x, w, b, stride=s, pads=pads)
    assert rel(y, ref) <= FWD
    (y0,) = op("conv2d_forward", device, x, w, None, stride=s, pads=pads)
    assert rel(y0, conv_ref(t(x), t(w), None, s, pads)) <= FWD
    g = rand(rng, *ref.shape)
    (dx,) = grads(lambda x: conv_ref(x, t(w), None, s, pads), [x], g)
    (ours,) = op("conv2d_backward", device, g, w, stride=s, pads=pads, x_shape=x.shape)
    assert rel(ours, dx) <= BWD


@pytest.mark.parametrize("device", DEVICES)
def test_conv2d_several_tiles(device, rng):
    # 32 x 3 x 3 columns of a 250-wide map: 16 MB of scratch holds 58 output
    # rows, so the 250 rows take five tiles, the last one partial. (Uneven
    # pads keep it on im2col: "same" 3x3 convolutions this large go to
    # Winograd's method, tested below.)
    x, w, b = rand(rng, 1, 32, 250, 250), rand(rng, 4, 32, 3, 3), rand(rng, 4)
    pads = (1, 1, 2, 0)
    ref = conv_ref(t(x), t(w), t(b), 1, pads)
    assert rel(op("conv2d_forward", device, x, w, b, pads=pads)[0], ref) <= FWD
    g = rand(rng, *ref.shape)
    (dx,) = grads(lambda x: conv_ref(x, t(w), None, 1, pads), [x], g)
    assert rel(op("conv2d_backward", device, g, w, pads=pads, x_shape=x.shape)[0], dx) <= BWD


# The CPU's 3x3 stride-1 pad-1 convolutions with at least 256 2x2 output
# tiles, or 64 when the weight's Winograd form is small, and at least 16
# channels to sum over, run Winograd's F(2x2, 3x3): odd sizes (half tiles
# at the edges), batches, a layer wide enough that its tiles take two
# blocks, and 64 tiles; 4 input channels (a UNet's first convolution: im2col
# forward, Winograd backward) and 4 outputs (its last: the reverse).
WINOGRAD = [
    # N, C, H, W, O
    (2, 17, 33, 35, 19),
    (1, 4, 33, 32, 20),
    (1, 20, 32, 33, 4),
    (1, 256, 34, 33, 320),
    (1, 16, 16, 15, 8),
    (1, 520, 16, 16, 24),  # an input gradient of more than 512 channels: its products by sgemm
]


@pytest.mark.parametrize("cfg", WINOGRAD)
def test_conv2d_winograd(rng, cfg):
    n, c, h, w_, o = cfg
    x, w, b = rand(rng, n, c, h, w_), rand(rng, o, c, 3, 3), rand(rng, o)
    pads = (1, 1, 1, 1)
    ref = conv_ref(t(x), t(w), t(b), 1, pads)
    (y,) = op("conv2d_forward", "cpu", x, w, b, pads=pads)
    assert rel(y, ref) <= FWD
    (y0,) = op("conv2d_forward", "cpu", x, w, None, pads=pads)
    assert rel(y0, conv_ref(t(x), t(w), None, 1, pads)) <= FWD
    g = rand(rng, *ref.shape)
    (dx,) = grads(lambda x: conv_ref(x, t(w), None, 1, pads), [x], g)
    (ours,) = op("conv2d_backward", "cpu", g, w, pads=pads, x_shape=x.shape)
    assert rel(ours, dx) <= BWD


# ------------------------------------------------------------------- norms


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape,groups,affine", [((2, 12, 5, 7), 4, True), ((1, 8, 9, 3), 2, False),
                                                 ((2, 6, 11), 3, True)])
def test_group_norm(device, rng, shape, groups, affine):
    x = rand(rng, *shape) * 3 + 1
    c = shape[1]
    gamma, beta = (rand(rng, c), rand(rng, c)) if affine else (None, None)
    eps = 1e-6
    ref = F.group_norm(t(x), groups, t(gamma) if affine else None, t(beta) if affine else None, eps)
    assert rel(op("group_norm_forward", device, x, gamma, beta, groups=groups, eps=eps)[0], ref) <= FWD
    g = rand(rng, *shape)
    (dx,) = grads(lambda x: F.group_norm(x, groups, t(gamma) if affine else None, None, eps), [x], g)
    assert rel(op("group_norm_backward", device, g, x, gamma, groups=groups, eps=eps)[0], dx) <= BWD


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape,affine", [((2, 7, 24), True), ((13, 10), False), ((3, 37), True)])
def test_layer_norm(device, rng, shape, affine):
    x = rand(rng, *shape) * 2 - 0.5
    c = shape[-1]
    gamma, beta = (rand(rng, c), rand(rng, c)) if affine else (None, None)
    eps = 1e-5
    ref = F.layer_norm(t(x), (c,), t(gamma) if affine else None, t(beta) if affine else None, eps)
    assert rel(op("layer_norm_forward", device, x, gamma, beta, eps=eps)[0], ref) <= FWD
    g = rand(rng, *shape)
    (dx,) = grads(lambda x: F.layer_norm(x, (c,), t(gamma) if affine else None, None, eps), [x], g)
    assert rel(op("layer_norm_backward", device, g, x, gamma, eps=eps)[0], dx) <= BWD


# ------------------------------------------------------------- activations

ACTS = {
    "silu": F.silu,
    "gelu": F.gelu,
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("act", list(ACTS))
def test_act(device, rng, act):
    x = rand(rng, 3, 17, 9) * 3
    assert rel(op("act_forward", device, x, act=act)[0], ACTS[act](t(x))) <= FWD
    g = rand(rng, 3, 17, 9)
    (dx,) = grads(ACTS[act], [x], g)
    assert rel(op("act_backward", device, g, x, act=act)[0], dx) <= BWD


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("act", sorted(ACTS))
def test_act_element_by_element(device, act):
    """Every element, not a norm: on [-10, 10], each value and derivative
    within 1e-6 of float64 torch absolutely (scaled by |x| past 1), and each value within 1e-4 relatively wherever
    it is above 1e-3 (below, GELU's 1 + erf(x / sqrt 2) cancels in float32,
    as torch's own float32 GELU does)."""
    x = np.linspace(-10, 10, 3 * 4096 + 5, dtype=np.float32)
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    ref = ACTS[act](xt)
    ref.sum().backward()
    ref = ref.detach().numpy()
    y = op("act_forward", device, x, act=act)[0].astype(np.float64)
    assert np.max(np.abs(y - ref)) <= 1e-6 * np.maximum(1.0, np.abs(x)).max()
    big = np.abs(ref) > 1e-3
    assert np.max(np.abs(y - ref)[big] / np.abs(ref[big])) <= 1e-4
    dx = op("act_backward", device, np.ones_like(x), x, act=act)[0].astype(np.float64)
    assert np.max(np.abs(dx - xt.grad.numpy())) <= 1e-6 * np.maximum(1.0, np.abs(x)).max()


def geglu_ref(x):
    a, gate = x.chunk(2, dim=-1)  # diffusers GEGLU: hidden_states, gate
    return a * F.gelu(gate)


@pytest.mark.parametrize("device", DEVICES)
def test_geglu(device, rng):
    x = rand(rng, 2, 7, 2 * 19) * 2
    assert rel(op("geglu_forward", device, x)[0], geglu_ref(t(x))) <= FWD
    g = rand(rng, 2, 7, 19)
    (dx,) = grads(geglu_ref, [x], g)
    assert rel(op("geglu_backward", device, g, x)[0], dx) <= BWD


# ------------------------------------------------------------------ layout


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(2, 5, 7, 9), (1, 37, 33, 35)])
def test_nchw_nlc(device, rng, shape):
    n, c, h, w = shape
    x = rand(rng, *shape)
    to_nlc = lambda x: x.permute(0, 2, 3, 1).reshape(n, h * w, c)  # noqa: E731
    to_nchw = lambda y: y.reshape(n, h, w, c).permute(0, 3, 1, 2)  # noqa: E731
    (y,) = op("nchw_to_nlc", device, x)
    assert np.array_equal(y, to_nlc(t(x)).numpy())
    (back,) = op("nlc_to_nchw", device, y, hw=(h, w))
    assert np.array_equal(back, x)
    g = rand(rng, n, h * w, c)
    (dx,) = grads(to_nlc, [x], g)
    assert rel(op("nchw_to_nlc_backward", device, g, hw=(h, w))[0], dx) <= BWD
    g2 = rand(rng, *shape)
    (dy,) = grads(to_nchw, [y], g2)
    assert rel(op("nlc_to_nchw_backward", device, g2)[0], dy) <= BWD


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n", [1, 2])
def test_concat_channels(device, rng, n):
    a, b = rand(rng, n, 3, 5, 6), rand(rng, n, 4, 5, 6)
    assert np.array_equal(op("concat_channels_forward", device, a, b)[0], torch.cat([t(a), t(b)], 1).numpy())
    g = rand(rng, n, 7, 5, 6)
    da, db = grads(lambda a, b: torch.cat([a, b], 1), [a, b], g)
    ours_a, ours_b = op("concat_channels_backward", device, g, ca=3)
    assert rel(ours_a, da) <= BWD and rel(ours_b, db) <= BWD
    only_a, none_b = op("concat_channels_backward", device, g, ca=3, want_db=0)
    assert none_b is None and np.array_equal(only_a, ours_a)
    none_a, only_b = op("concat_channels_backward", device, g, ca=3, want_da=0)
    assert none_a is None and np.array_equal(only_b, ours_b)


@pytest.mark.parametrize("device", DEVICES)
def test_upsample2x(device, rng):
    x = rand(rng, 2, 3, 5, 7)
    ref = lambda x: F.interpolate(x, scale_factor=2.0, mode="nearest")  # noqa: E731
    assert np.array_equal(op("upsample2x_forward", device, x)[0], ref(t(x)).numpy())
    g = rand(rng, 2, 3, 10, 14)
    (dx,) = grads(ref, [x], g)
    assert rel(op("upsample2x_backward", device, g)[0], dx) <= BWD


# --------------------------------------------------------------- attention


def attention_ref(q, k, v, heads, causal, scale):
    n, lq, hd = q.shape
    lk, d = k.shape[1], hd // heads
    qh = q.reshape(n, lq, heads, d).transpose(1, 2)
    kh = k.reshape(n, lk, heads, d).transpose(1, 2)
    vh = v.reshape(n, lk, heads, d).transpose(1, 2)
    s = scale * qh @ kh.transpose(-1, -2)
    if causal:
        mask = torch.ones(lq, lk, dtype=torch.bool).triu(1)
        s = s.masked_fill(mask, float("-inf"))
    e = torch.exp(s - s.max(dim=-1, keepdim=True).values)
    p = e / e.sum(dim=-1, keepdim=True)
    out = (p @ vh).transpose(1, 2).reshape(n, lq, hd)
    return out, p


ATTNS = [
    # N, Lq, Lk, heads, D, causal
    (2, 37, 29, 3, 8, 0),    # cross attention shapes
    (1, 33, 33, 4, 5, 1),    # causal self attention (text encoder)
    (1, 300, 50, 2, 8, 0),   # more queries than one chunk
    (2, 270, 270, 1, 4, 1),  # causal across a chunk boundary
    (1, 96, 256, 2, 8, 0),   # keys a multiple of 256: CPU scratch rows of P padded
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cfg", ATTNS)
def test_attention_forward(device, rng, cfg):
    n, lq, lk, h, d, causal = cfg
    q, k, v = rand(rng, n, lq, h * d), rand(rng, n, lk, h * d), rand(rng, n, lk, h * d)
    scale = d**-0.5
    ref_out, ref_p = attention_ref(t(q), t(k), t(v), h, causal, scale)
    out, probs = op("attention_forward", device, q, k, v, heads=h, causal=causal, scale=scale, want_probs=1)
    assert rel(out, ref_out) <= FWD
    assert rel(probs, ref_p) <= FWD
    out2, none = op("attention_forward", device, q, k, v, heads=h, causal=causal, scale=scale)
    assert none is None
    # GNR_SPEC.md section 5: the output does not depend on whether P is kept.
    assert out2.tobytes() == out.tobytes()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cfg", ATTNS)
@pytest.mark.parametrize("with_dprobs", [False, True])
def test_attention_backward(device, rng, cfg, with_dprobs):
    n, lq, lk, h, d, causal = cfg
    q, k, v = rand(rng, n, lq, h * d), rand(rng, n, lk, h * d), rand(rng, n, lk, h * d)
    scale = d**-0.5
    g = rand(rng, n, lq, h * d)
    gp = rand(rng, n, h, lq, lk) if with_dprobs else None
    dq, dk, dv = grads(lambda q, k, v: attention_ref(q, k, v, h, causal, scale), [q, k, v], (g, gp))
    _, probs = op("attention_forward", device, q, k, v, heads=h, causal=causal, scale=scale, want_probs=1)
    ours = op("attention_backward", device, q, k, v, probs, g, gp, heads=h, scale=scale)
    for o, r in zip(ours, (dq, dk, dv)):
        assert rel(o, r) <= BWD
    # each gradient may be skipped; the others do not change
    only_k = op("attention_backward", device, q, k, v, probs, g, gp, heads=h, scale=scale, want_dq=0, want_dv=0)
    assert only_k[0] is None and only_k[2] is None and np.array_equal(only_k[1], ours[1])
    only_v = op("attention_backward", device, q, k, v, probs, g, gp, heads=h, scale=scale, want_dq=0, want_dk=0)
    assert np.array_equal(only_v[2], ours[2])
    # without probs, P is recomputed chunk by chunk exactly as the forward made it
    rec = op("attention_backward", device, q, k, v, None, g, gp, heads=h, causal=causal, scale=scale)
    for o, r in zip(rec, ours):
        assert o.tobytes() == r.tobytes()


# The CPU forward walks keys in tiles of 512 with an online softmax, and the
# CPU backend's exponentials and maxima exist in an AVX-512, an AVX2 and a
# baseline version picked at run time: each version this CPU has, on keys
# spanning several tiles (the running max grows from tile to tile), with
# peaky scores.
LEVELS = [lv for lv in ("baseline", "avx2", "avx512")
          if ("baseline", "avx2", "avx512").index(lv) <= ("baseline", "avx2", "avx512").index(gnr._C._cpu_vector_level())]
MULTI_TILE = [
    # N, Lq, Lk, heads, D, causal
    (1, 130, 1300, 2, 6, 0),
    (1, 1100, 1100, 1, 4, 1),
    (2, 100, 1100, 2, 40, 0),  # SD's head size; a last block of 36 queries (whole vectors and a remainder)
    (1, 70, 700, 1, 24, 0),    # one head (a VAE's): its keys and values read where they lie
]


@pytest.fixture
def vector_level(request):
    best = gnr._C._cpu_vector_level()
    gnr._C._cpu_vector_level(request.param)
    yield request.param
    gnr._C._cpu_vector_level(best)


@pytest.mark.parametrize("vector_level", LEVELS, indirect=True)
@pytest.mark.parametrize("cfg", MULTI_TILE)
def test_attention_across_key_tiles_on_each_vector_level(rng, cfg, vector_level):
    n, lq, lk, h, d, causal = cfg
    q, k, v = rand(rng, n, lq, h * d), rand(rng, n, lk, h * d), rand(rng, n, lk, h * d)
    scale = 1.5  # peaky rows: the max moves between tiles, and exp(s - m) spans the float range
    ref_out, ref_p = attention_ref(t(q), t(k), t(v), h, causal, scale)
    out, probs = op("attention_forward", "cpu", q, k, v, heads=h, causal=causal, scale=scale, want_probs=1)
    assert rel(out, ref_out) <= FWD
    assert rel(probs, ref_p) <= FWD
    out2, _ = op("attention_forward", "cpu", q, k, v, heads=h, causal=causal, scale=scale)
    assert out2.tobytes() == out.tobytes()
    g = rand(rng, n, lq, h * d)
    ref = grads(lambda q, k, v: attention_ref(q, k, v, h, causal, scale)[0], [q, k, v], g)
    ours = op("attention_backward", "cpu", q, k, v, probs, g, None, heads=h, scale=scale)
    for o, r in zip(ours, ref):
        assert rel(o, r) <= BWD
    rec = op("attention_backward", "cpu", q, k, v, None, g, None, heads=h, causal=causal, scale=scale)
    for o, r in zip(rec, ours):
        assert o.tobytes() == r.tobytes()


@pytest.mark.parametrize("vector_level", LEVELS, indirect=True)
def test_cpu_vector_exp_is_within_two_ulp(vector_level):
    # every float the softmax meets (x - shift in [-87, 0]), odd lengths for
    # the vector tails, against exp in double
    x = np.concatenate([np.linspace(-87.0, 0.0, 200_003, dtype=np.float32), [0.0, -1e-30, -0.5]]).astype(np.float32)
    shifted = x + np.float32(3.0)
    y, total = gnr._C._cpu_vector_exp(shifted, 3.0)
    ref = np.exp((shifted - np.float32(3.0)).astype(np.float64))  # the kernel subtracts in float32
    ulp = np.spacing(ref.astype(np.float32)).astype(np.float64)
    assert np.max(np.abs(y - ref) / ulp) <= 2.0
    assert abs(total - ref.sum()) <= 1e-5 * ref.sum()
    y7, t7 = gnr._C._cpu_vector_exp(shifted[-7:], 3.0)
    assert np.array_equal(y7, y[-7:]) and abs(t7 - y7.astype(np.float64).sum()) <= 1e-6 * t7


def test_cpu_vector_level_is_reported_and_checked():
    assert gnr.build_info()["cpu_vector"] == gnr._C._cpu_vector_level() == LEVELS[-1]
    with pytest.raises(ValueError, match="expected baseline, avx2 or avx512"):
        gnr._C._cpu_vector_level("sse9")
    assert gnr._C._cpu_vector_level() == LEVELS[-1]


# Products against few columns (at most 256: small maps, Winograd's
# products, the low-resolution levels' tokens) read the weight in place
# with the CPU backend's own vector kernels (narrow_gemm.c) instead of
# sgemm: on each vector level, with sums over several blocks of k, rows
# that leave partial tiles (13, 17, 19, 21, 70 outputs) and columns that
# leave partial vectors (25, 33, 35, 225 columns), forward and (transposed)
# backward; Winograd's transforms (row kernels per vector level) on a map
# whose rows are longer than a vector, odd in both sizes.
NARROW_CONVS = [
    # N, C, H, W, O, K, stride, pads
    (1, 40, 8, 8, 13, 3, 1, (1, 1, 1, 1)),      # im2col, 64 columns, k = 360
    (2, 29, 5, 7, 17, 3, 1, (1, 1, 1, 1)),      # 35 columns
    (1, 33, 9, 9, 10, 3, 2, (1, 1, 1, 1)),      # downsampler: 25 columns
    (1, 1100, 4, 4, 9, 1, 1, (0, 0, 0, 0)),     # 1 x 1: 16 columns, k = 1100 (blocks of 1024)
    (1, 1100, 16, 16, 21, 3, 1, (1, 1, 1, 1)),  # Winograd, 64 tiles, k = 1100 (blocks of 1024)
    (1, 40, 15, 15, 19, 3, 1, (1, 1, 2, 0)),    # im2col, 225 columns, k = 360 (blocks of 291)
    (1, 24, 17, 35, 20, 3, 1, (1, 1, 1, 1)),    # Winograd, odd sizes: 9 x 18 tiles, half tiles at two edges
    (1, 600, 8, 8, 30, 3, 1, (1, 1, 1, 1)),     # backward along W's rows, 5400 columns: panels of 2048 a thread
    (1, 1000, 3, 5, 20, 3, 1, (1, 1, 1, 1)),    # backward along W's rows, 9000 columns: tiles down 15 rows first
]


@pytest.mark.parametrize("vector_level", LEVELS, indirect=True)
@pytest.mark.parametrize("cfg", NARROW_CONVS)
def test_narrow_conv_products_on_each_vector_level(rng, cfg, vector_level):
    n, c, h, w_, o, k, s, pads = cfg
    x, w, b = rand(rng, n, c, h, w_), rand(rng, o, c, k, k), rand(rng, o)
    ref = conv_ref(t(x), t(w), t(b), s, pads)
    assert rel(op("conv2d_forward", "cpu", x, w, b, stride=s, pads=pads)[0], ref) <= FWD
    g = rand(rng, *ref.shape)
    (dx,) = grads(lambda x: conv_ref(x, t(w), None, s, pads), [x], g)
    assert rel(op("conv2d_backward", "cpu", g, w, stride=s, pads=pads, x_shape=x.shape)[0], dx) <= BWD


@pytest.mark.parametrize("vector_level", LEVELS, indirect=True)
@pytest.mark.parametrize("shape,groups", [((2, 640, 5), 32), ((1, 12, 37, 3), 4), ((3, 1, 77), 0), ((5, 333), 0)])
def test_norms_on_each_vector_level(rng, shape, groups, vector_level):
    """Group norms (groups > 0) and layer norms (groups 0) on every vector
    level their segments are compiled for (norm.c), on rows and groups that
    leave partial vectors, against torch."""
    x = rand(rng, *shape) * 3 + 1
    c = shape[1] if groups else shape[-1]
    gamma, beta, g = rand(rng, c), rand(rng, c), rand(rng, *shape)
    if groups:
        fwd = lambda x, b: F.group_norm(x, groups, t(gamma), b, 1e-5)  # noqa: E731
        ours = op("group_norm_forward", "cpu", x, gamma, beta, groups=groups, eps=1e-5)[0]
        dours = op("group_norm_backward", "cpu", g, x, gamma, groups=groups, eps=1e-5)[0]
    else:
        fwd = lambda x, b: F.layer_norm(x, (c,), t(gamma), b, 1e-5)  # noqa: E731
        ours = op("layer_norm_forward", "cpu", x, gamma, beta, eps=1e-5)[0]
        dours = op("layer_norm_backward", "cpu", g, x, gamma, eps=1e-5)[0]
    assert rel(ours, fwd(t(x), t(beta))) <= FWD
    (dx,) = grads(lambda x: fwd(x, None), [x], g)
    assert rel(dours, dx) <= BWD


@pytest.mark.parametrize("vector_level", LEVELS, indirect=True)
def test_silu_on_each_vector_level(vector_level):
    """SiLU on the vector kernels (exp as exp_poly), every element against
    float64 torch: relative 1e-6 wherever the value is above 1e-30, over both
    saturations, on a length that leaves partial pieces and vectors."""
    x = np.concatenate([np.linspace(-100, 100, 2 * 4096 + 37, dtype=np.float32), np.float32([0.0, -0.0, 1e-30])])
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    ref = F.silu(xt)
    ref.sum().backward()
    ref, dref = ref.detach().numpy(), xt.grad.numpy()
    y = op("act_forward", "cpu", x, act="silu")[0].astype(np.float64)
    big = np.abs(ref) > 1e-30
    assert np.max(np.abs(y - ref)[big] / np.abs(ref[big])) <= 1e-6
    dx = op("act_backward", "cpu", np.ones_like(x), x, act="silu")[0].astype(np.float64)
    assert np.max(np.abs(dx - dref)) <= 1e-6


@pytest.mark.parametrize("vector_level", LEVELS, indirect=True)
def test_geglu_across_the_erf_ranges_on_each_vector_level(rng, vector_level):
    """GEGLU's vector erf (simd.c: a polynomial near 0, exp of one beyond
    0.875, 0 and 2 for 1 + erf past 4) against float64 torch, element by
    element, on a dense grid over both tails and every branch boundary."""
    g = np.concatenate([np.linspace(-12, 12, 24001, dtype=np.float32),
                        np.float32([0.0, -0.0, 1e-30, -1e-30, 0.875 * 2**0.5, -0.875 * 2**0.5, 4 * 2**0.5])])
    n = g.size
    a, dy = rand(rng, 1, n), rand(rng, 1, n)
    x = np.concatenate([a, g[None]], axis=1)
    g64 = torch.tensor(g, dtype=torch.float64, requires_grad=True)
    gelu = F.gelu(g64)
    (dgelu,) = torch.autograd.grad(gelu.sum(), g64)
    gelu, dgelu = gelu.detach().numpy(), dgelu.numpy()
    inner = np.abs(g) <= 5.5  # beyond, gelu(g) is 0 (below) or g (above) to float precision
    y = op("geglu_forward", "cpu", x)[0][0]
    assert np.all(np.abs(y - a[0] * gelu)[inner] <= 5e-6 * np.abs(a[0] * gelu)[inner] + 1e-30)
    assert np.all(y[g < -5.66] == 0) and np.array_equal(y[g > 5.66], (a[0] * g)[g > 5.66])
    da, dg = np.split(op("geglu_backward", "cpu", dy, x)[0][0], 2)
    assert np.all(np.abs(da - dy[0] * gelu)[inner] <= 5e-6 * np.abs(dy[0] * gelu)[inner] + 1e-30)
    assert np.max(np.abs(dg - dy[0] * a[0] * dgelu) / np.abs(dy[0] * a[0])) <= 1e-6


# Up to 256 rows: W read in place against the rows (narrow), and in the
# backward W read along its rows (the stream product: in panels of C from
# 32 rows, in blocks of 16 of k below); more: the rows read in place
# against W's (and W^T's) rows in pieces of at most 256 columns (wide).
# Partial vectors, pieces, panels and blocks of k, with and without bias.
LINEARS = [
    ((3, 11, 1100), 70, True),   # narrow, k = 1100 (several blocks)
    ((1, 300), 70, True),        # one row (linear.c's one-row kernel), a partial vector of k
    ((1, 1, 37), 130, False),    # one row, three blocks of outputs, the last partial
    ((2, 100, 300), 70, False),  # narrow, 200 rows; the backward's panels of 64 columns
    ((1, 300, 40), 600, True),   # wide, 300 rows: pieces of 208, 208, 184 columns
    ((2, 150, 70), 37, False),   # wide, one piece of 37 columns (a partial vector)
    ((1, 520, 1100), 33, True),  # wide, k = 1100; the backward's 1100 columns in 5 pieces
    ((1, 37, 1300), 45, False),  # backward in panels of 192 columns, the last partial
    ((1, 40, 1100), 300, False),  # backward in panels, k = 300 in blocks of 128 (the next one fetched ahead)
    ((1, 20, 1300), 45, False),  # backward on 20 rows: blocks of 16 of k = 45
]


@pytest.mark.parametrize("vector_level", LEVELS, indirect=True)
@pytest.mark.parametrize("xshape, out, bias", LINEARS)
def test_narrow_and_wide_linear_products_on_each_vector_level(rng, xshape, out, bias, vector_level):
    x, w, b = rand(rng, *xshape), rand(rng, out, xshape[-1]), rand(rng, out) if bias else None
    ref = F.linear(t(x), t(w), t(b) if bias else None)
    assert rel(op("linear_forward", "cpu", x, w, b)[0], ref) <= FWD
    g = rand(rng, *ref.shape)
    (dx,) = grads(lambda x: F.linear(x, t(w)), [x], g)
    assert rel(op("linear_backward", "cpu", g, w)[0], dx) <= BWD


# The GEGLU feed-forward in one op: on the CPU, up to 256 rows keep the
# hidden features down the rows between the products (cpu/ffn.c); more rows,
# and CUDA, run the three ops. Partial vectors, with and without biases.
FFNS = [
    # x shape, F, Out, biases
    ((1, 37, 24), 40, 24, True),   # narrow, odd rows and widths
    ((2, 150, 16), 24, 20, True),  # 300 rows: the three ops
    ((1, 64, 32), 64, 48, False),  # whole vectors, no biases
    ((3, 5, 70), 130, 9, True),    # 15 rows, wide hidden features
]


def ffn_ref(x, w1, b1, w2, b2):
    return F.linear(geglu_ref(F.linear(x, w1, b1)), w2, b2)


def ffn_inputs(rng, xshape, f, out, bias):
    x, w1, w2 = rand(rng, *xshape), rand(rng, 2 * f, xshape[-1]), rand(rng, out, f)
    b1, b2 = (rand(rng, 2 * f), rand(rng, out)) if bias else (None, None)
    return x, w1, b1, w2, b2


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("xshape, f, out, bias", FFNS)
def test_geglu_ffn(device, rng, xshape, f, out, bias):
    x, w1, b1, w2, b2 = ffn_inputs(rng, xshape, f, out, bias)
    ref = ffn_ref(t(x), t(w1), t(b1) if bias else None, t(w2), t(b2) if bias else None)
    assert rel(op("geglu_ffn_forward", device, x, w1, b1, w2, b2)[0], ref) <= FWD


@pytest.mark.parametrize("vector_level", LEVELS, indirect=True)
@pytest.mark.parametrize("xshape, f, out, bias", [((1, 64, 32), 64, 48, True), ((2, 8, 40), 24, 16, False),
                                                  ((1, 37, 24), 40, 24, True)])
def test_geglu_ffn_is_the_three_ops_to_the_bit(rng, xshape, f, out, bias, vector_level):
    """The op keeps the hidden features in its own layout on the CPU; its
    values must stay the three ops' (linear, geglu, linear), which the
    backward recomputes the hidden features with. AVX2 computes the tail of
    a call to the gate (n % 8 values) with the baseline kernel, so there
    only whole vectors of rows are the same bits."""
    x, w1, b1, w2, b2 = ffn_inputs(rng, xshape, f, out, bias)
    h = op("linear_forward", "cpu", x, w1, b1)[0]
    three = op("linear_forward", "cpu", op("geglu_forward", "cpu", h)[0], w2, b2)[0]
    fused = op("geglu_ffn_forward", "cpu", x, w1, b1, w2, b2)[0]
    rows = int(np.prod(xshape[:-1]))
    if vector_level == "avx2" and rows % 8:
        assert rel(fused, t(three)) <= 1e-6
    else:
        np.testing.assert_array_equal(fused, three)


@pytest.mark.parametrize("vector_level", LEVELS, indirect=True)
@pytest.mark.parametrize("k, out, bias", [(1280, 1280, True), (37, 130, False), (300, 70, True)])
def test_one_row_linear_is_the_same_bits_as_in_a_batch(rng, k, out, bias, vector_level):
    """A one-row linear layer (a time embedding's projection) has a kernel
    of its own (linear.c): each row must come out to the bit as it does in
    a batch of several rows, which batched passes (an editor's guidance
    passes) are compared against."""
    x, w, b = rand(rng, 3, k), rand(rng, out, k), rand(rng, out) if bias else None
    batch = op("linear_forward", "cpu", x, w, b)[0]
    rows = np.concatenate([op("linear_forward", "cpu", x[i:i + 1], w, b)[0] for i in range(3)])
    np.testing.assert_array_equal(rows, batch)


# The CUDA forward without probs has two kernels until a GPU measurement
# picks one: products per chunk of rows (the default) and one fused flash
# kernel (float32, heads up to 256 wide). Both against torch, on the
# shapes above, head sizes of SD's levels, and keys spanning many tiles.
FLASH = ATTNS + [
    (1, 70, 77, 8, 40, 0),     # SD 1.x cross attention, level 1
    (1, 64, 64, 8, 160, 0),    # the widest SD 1.x heads (tiles of 16 keys)
    (2, 100, 300, 5, 64, 0),   # SD 2.x heads
    (1, 45, 130, 2, 256, 1),   # the widest the kernel takes, causal
]


@pytest.fixture
def cuda_attention_kernel():
    from gnr import _C_cuda

    before = _C_cuda.attention_kernel()
    yield _C_cuda.attention_kernel
    _C_cuda.attention_kernel(before)


@pytest.mark.skipif(not HAS_CUDA, reason="no GPU")
@pytest.mark.parametrize("cfg", FLASH)
def test_cuda_flash_attention_forward(rng, cfg, cuda_attention_kernel):
    n, lq, lk, h, d, causal = cfg
    q, k, v = rand(rng, n, lq, h * d), rand(rng, n, lk, h * d), rand(rng, n, lk, h * d)
    scale = 1.5 * d**-0.5  # peakier than the model's: the running max moves between tiles
    ref_out, _ = attention_ref(t(q), t(k), t(v), h, causal, scale)
    assert cuda_attention_kernel() == "cublas"
    (chunked, _) = op("attention_forward", "cuda", q, k, v, heads=h, causal=causal, scale=scale)
    assert cuda_attention_kernel("flash") == "flash"
    (flash, _) = op("attention_forward", "cuda", q, k, v, heads=h, causal=causal, scale=scale)
    assert rel(flash, ref_out) <= FWD and rel(chunked, ref_out) <= FWD
    assert not np.array_equal(flash, chunked)  # really the other kernel
    with pytest.raises(ValueError, match="expected cublas or flash"):
        cuda_attention_kernel("fast")


# -------------------------------------------------- attention-map energy

# N, L (queries = keys: self-attention), heads, D
MAP_ENERGIES = [
    (2, 37, 3, 8),
    (1, 300, 2, 8),   # more queries than one chunk
    (1, 64, 8, 5),
    (1, 700, 2, 64),  # CPU: chunks of 512 and 188 rows, several 64-row blocks each, run in parallel
    (1, 256, 2, 8),   # keys a multiple of 256: CPU scratch rows of P padded
]


def _self_attention_pair(rng, n, L, h, d):
    """Queries and keys of a current and a reference pass: scaled up so the
    maps are peaky, the reference a perturbation of the current pass so the
    maps differ by a clear but partial amount."""
    q, k = 3 * rand(rng, n, L, h * d), 3 * rand(rng, n, L, h * d)
    return q, k, q + 0.5 * rand(rng, n, L, h * d), k + 0.5 * rand(rng, n, L, h * d)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cfg", MAP_ENERGIES)
def test_attention_map_energy(device, rng, cfg):
    n, L, h, d = cfg
    q, k, qr, kr = _self_attention_pair(rng, n, L, h, d)
    scale = d**-0.5
    _, p = attention_ref(t(q), t(k), t(k), h, 0, scale)
    _, pr = attention_ref(t(qr), t(kr), t(kr), h, 0, scale)
    ref = float(((p.double() - pr.double()) ** 2).mean())
    assert ref > 1e-4, "the maps must differ for the test to mean anything"
    ours = float(op("attention_map_energy", device, q, k, qr, kr, heads=h, scale=scale)[0])
    assert abs(ours - ref) <= FWD * ref
    # equal to sq_diff_mean over the explicit maps of the same backend
    _, pm = op("attention_forward", device, q, k, k, heads=h, scale=scale, want_probs=1)
    _, prm = op("attention_forward", device, qr, kr, kr, heads=h, scale=scale, want_probs=1)
    explicit = float(op("sq_diff_mean", device, pm, prm)[0])
    assert abs(ours - explicit) <= 1e-6 * explicit
    # the same maps: no energy
    assert float(op("attention_map_energy", device, q, k, q, k, heads=h, scale=scale)[0]) == 0.0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cfg", MAP_ENERGIES)
@pytest.mark.parametrize("with_dout", [True, False])
def test_attention_backward_with_a_map_seed(device, rng, cfg, with_dout):
    """The energy's gradient through queries and keys, with no map held:
    against autograd of <out, g> + w * mean((P - P_ref)^2)."""
    n, L, h, d = cfg
    q, k, qr, kr = _self_attention_pair(rng, n, L, h, d)
    v = rand(rng, n, L, h * d)
    scale, w = d**-0.5, 0.7
    g = rand(rng, n, L, h * d) if with_dout else None
    _, pr = attention_ref(t(qr), t(kr), t(kr), h, 0, scale)

    def loss(q, k, v):
        out, p = attention_ref(q, k, v, h, 0, scale)
        e = w * ((p - pr) ** 2).mean()
        return e + ((out * t(g)).sum() if g is not None else 0.0)

    ts = [t(a, True) for a in (q, k, v)]
    loss(*ts).backward()
    coef = w * 2.0 / (n * h * L * L)
    ours = op("attention_backward", device, q, k, v, None, g, None, qr, kr, heads=h, scale=scale, coef=coef)
    for name, o, r in zip("qk", ours[:2], ts[:2]):
        assert rel(o, r.grad) <= BWD, name
    if with_dout:
        assert rel(ours[2], ts[2].grad) <= BWD
    else:
        assert not np.any(ours[2]), "no output gradient: V gets none"
    # the same as the explicit map's gradient through dprobs
    _, p = op("attention_forward", device, q, k, v, heads=h, scale=scale, want_probs=1)
    _, prm = op("attention_forward", device, qr, kr, kr, heads=h, scale=scale, want_probs=1)
    dprobs = op("sq_diff_mean_backward", device, p, prm, scale=w)[0].reshape(p.shape)
    explicit = op("attention_backward", device, q, k, v, p, g, dprobs, heads=h, scale=scale)
    for o, r in zip(ours, explicit):
        assert np.allclose(o, r, rtol=1e-5, atol=1e-6 * np.abs(r).max())


# --------------------------------------------------------------- embedding


@pytest.mark.parametrize("device", DEVICES)
def test_embedding(device, rng):
    table = rand(rng, 23, 10)
    ids = [0, 22, 5, 5, 17, 3, 22]
    (y,) = op("embedding_forward", device, table, ids=ids)
    assert np.array_equal(y, F.embedding(torch.tensor(ids), t(table)).numpy())
    with pytest.raises(ValueError, match="outside"):
        op("embedding_forward", device, table, ids=[1, 23])


# -------------------------------------------------------------- reductions


@pytest.mark.parametrize("device", DEVICES)
def test_reductions(device, rng):
    a, b = rand(rng, 3, 41, 37), rand(rng, 3, 41, 37)
    b[0, 0, :5] = a[0, 0, :5]  # ties: sign(0) = 0
    ta, tb = t(a, True), t(b)
    sq = ((ta.double() - tb.double()) ** 2).mean()
    ab = (ta.double() - tb.double()).abs().mean()
    assert rel(op("sq_diff_mean", device, a, b)[0], sq) <= FWD
    assert rel(op("abs_diff_mean", device, a, b)[0], ab) <= FWD
    assert rel(op("sum_sq", device, a)[0], (ta.double() ** 2).sum()) <= FWD
    scale = 2.5
    (da,) = grads(lambda a: scale * F.mse_loss(a, tb), [a], np.float32(1.0))
    assert rel(op("sq_diff_mean_backward", device, a, b, scale=scale)[0], da) <= BWD
    (da,) = grads(lambda a: scale * F.l1_loss(a, tb), [a], np.float32(1.0))
    assert rel(op("abs_diff_mean_backward", device, a, b, scale=scale)[0], da) <= BWD


@pytest.mark.parametrize("device", DEVICES)
def test_reductions_of_nothing(device):
    # the mean of an empty tensor is 0 on every device (a CUDA 0/0 once gave NaN)
    empty = np.zeros((0, 3), np.float32)
    for name in ("sq_diff_mean", "abs_diff_mean"):
        assert op(name, device, empty, empty)[0] == 0.0
    assert op("sum_sq", device, empty)[0] == 0.0


# ----------------------------------------------- backwards add into dx


def backward_cases(r):
    x4, w = rand(r, 2, 4, 7, 6), rand(r, 5, 4, 3, 3)
    q, k, v = rand(r, 2, 9, 12), rand(r, 2, 7, 12), rand(r, 2, 7, 12)
    _, probs = op("attention_forward", "cpu", q, k, v, heads=3, scale=0.4, want_probs=1)
    return {
        "add_channel_backward": ((x4,), {}),
        "linear_backward": ((rand(r, 3, 5), rand(r, 5, 7)), {}),
        "conv2d_backward": ((rand(r, 2, 5, 4, 3), w), dict(stride=2, pads=(1, 1, 1, 1), x_shape=x4.shape)),
        "group_norm_backward": ((x4, rand(r, *x4.shape), rand(r, 4)), dict(groups=2)),
        "layer_norm_backward": ((rand(r, 3, 8), rand(r, 3, 8), rand(r, 8)), {}),
        "act_backward": ((x4, rand(r, *x4.shape)), dict(act="gelu")),
        "geglu_backward": ((rand(r, 3, 4), rand(r, 3, 8)), {}),
        "nchw_to_nlc_backward": ((rand(r, 2, 42, 4),), dict(hw=(7, 6))),
        "nlc_to_nchw_backward": ((x4,), {}),
        "concat_channels_backward": ((x4,), dict(ca=1)),
        "upsample2x_backward": ((rand(r, 2, 4, 8, 6),), {}),
        "attention_backward": ((q, k, v, probs, rand(r, 2, 9, 12), rand(r, *probs.shape)), dict(heads=3, scale=0.4)),
        "sq_diff_mean_backward": ((x4, rand(r, *x4.shape)), dict(scale=3.0)),
        "abs_diff_mean_backward": ((x4, rand(r, *x4.shape)), dict(scale=3.0)),
    }


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(backward_cases(np.random.default_rng(0))))
def test_backward_adds_into_its_output(device, rng, name):
    inputs, params = backward_cases(rng)[name]
    fresh = op(name, device, *inputs, **params)
    start = tuple(rand(rng, *g.shape) for g in fresh)
    added = op(name, device, *inputs, **params, start=start)
    for s, g, a in zip(start, fresh, added):
        np.testing.assert_allclose(a, s + g, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------- determinism


@pytest.mark.parametrize("device", DEVICES)
def test_deterministic(device, rng):
    x, w = rand(rng, 2, 8, 23, 19), rand(rng, 6, 8, 3, 3)
    q, k, v = rand(rng, 1, 300, 16), rand(rng, 1, 77, 16), rand(rng, 1, 77, 16)
    a, b = rand(rng, 300_001), rand(rng, 300_001)
    g = rand(rng, 2, 6, 23, 19)

    def run_all():
        out = []
        out += op("conv2d_forward", device, x, w, None, pads=(1, 1, 1, 1))
        out += op("conv2d_backward", device, g, w, pads=(1, 1, 1, 1), x_shape=x.shape)
        out += op("group_norm_forward", device, x, None, None, groups=4)
        out += op("group_norm_backward", device, x, x, None, groups=4)
        att = op("attention_forward", device, q, k, v, heads=2, scale=0.3, want_probs=1)
        out += att
        out += op("attention_backward", device, q, k, v, att[1], q, None, heads=2, scale=0.3)
        out += op("sq_diff_mean", device, a, b)
        out += op("sum_sq", device, a)
        return [o.tobytes() for o in out]

    assert run_all() == run_all()


def test_reductions_independent_of_threads(rng):
    # Fixed chunking: the non-BLAS reductions give the same bytes on 1 and 2 threads.
    a, b = rand(rng, 500_003), rand(rng, 500_003)
    x = rand(rng, 1, 64, 40, 40)
    before = gnr.build_info()["threads"]
    results = []
    try:
        for n in (1, 2):
            gnr.set_num_threads(n)
            results.append([op("sq_diff_mean", "cpu", a, b)[0].tobytes(), op("sum_sq", "cpu", a)[0].tobytes(),
                            op("group_norm_forward", "cpu", x, None, None, groups=32)[0].tobytes()])
    finally:
        gnr.set_num_threads(before)
    assert results[0] == results[1]


# -------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("call,match", [
    (lambda d, r: op("conv2d_forward", d, rand(r, 1, 3, 8, 8), rand(r, 4, 5, 3, 3), None), "conv2d_forward"),
    (lambda d, r: op("conv2d_backward", d, rand(r, 1, 4, 8, 8), rand(r, 4, 3, 3, 3), pads=1, x_shape=(1, 3, 9, 8)),
     "conv2d_backward"),
    (lambda d, r: op("linear_forward", d, rand(r, 5, 7), rand(r, 3, 6), None), "linear_forward"),
    (lambda d, r: op("linear_forward", d, rand(r, 5, 6), rand(r, 3, 6), rand(r, 4)), "linear_forward"),
    (lambda d, r: op("add", d, rand(r, 5, 6), rand(r, 5, 7)), "add"),
    (lambda d, r: op("group_norm_forward", d, rand(r, 1, 6, 4, 4), None, None, groups=4), "group_norm_forward"),
    (lambda d, r: op("layer_norm_forward", d, rand(r, 2, 6), rand(r, 5), None), "layer_norm_forward"),
    (lambda d, r: op("attention_forward", d, rand(r, 1, 5, 12), rand(r, 1, 6, 12), rand(r, 1, 6, 12), heads=5),
     "attention_forward"),
    (lambda d, r: op("attention_forward", d, rand(r, 1, 5, 12), rand(r, 1, 6, 12), rand(r, 1, 7, 12), heads=2),
     "attention_forward"),
    (lambda d, r: op("add_channel_forward", d, rand(r, 1, 6, 4, 4), rand(r, 1, 5)), "add_channel_forward"),
    (lambda d, r: op("geglu_forward", d, rand(r, 3, 7)), "geglu_forward"),
    (lambda d, r: op("geglu_ffn_forward", d, rand(r, 3, 6), rand(r, 8, 6), None, rand(r, 5, 3), None),
     "geglu_ffn_forward"),
    (lambda d, r: op("geglu_ffn_forward", d, rand(r, 3, 6), rand(r, 8, 6), rand(r, 7), rand(r, 5, 4), None),
     "b1"),
    (lambda d, r: op("sq_diff_mean", d, rand(r, 3, 7), rand(r, 3, 6)), "sq_diff_mean"),
    (lambda d, r: op("nlc_to_nchw", d, rand(r, 1, 12, 3), hw=(3, 5)), "nlc_to_nchw"),
])
def test_bad_shapes_raise(device, rng, call, match):
    with pytest.raises(ValueError, match=match):
        call(device, rng)


def test_unknown_op_lists_known_ones():
    with pytest.raises(ValueError, match="conv2d_forward"):
        op("conv3d_forward", "cpu")


def test_missing_input_and_unknown_param():
    with pytest.raises(ValueError, match="required"):
        gnr._C._op("add", "cpu", (np.ones(3, np.float32),), {})
    with pytest.raises(ValueError, match="unknown op param"):
        op("scale", "cpu", np.ones(3, np.float32), alpah=2.0)
