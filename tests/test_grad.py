"""Reverse mode: E and dE/dz, dE/dc against torch.autograd through the
diffusers UNet (DECISIONS.md section 1: E relative 1e-4, gradients 1e-3), with
and without gradient checkpointing, and a finite-difference check."""
import numpy as np
import pytest

import gnr
from conftest import rel_err


@pytest.fixture(scope="module")
def setup(tiny_model_dir, torch_threads):
    from diffusers import UNet2DConditionModel
    from torch_reference import Recorder

    ours = gnr.load_model(tiny_model_dir)
    unet = UNet2DConditionModel.from_pretrained(tiny_model_dir / "unet").eval()
    for p in unet.parameters():
        p.requires_grad_(False)
    nb = len(unet.config.block_out_channels)
    feats = ["up_blocks.1.resnets.1", f"up_blocks.{nb - 1}", "conv_norm_out", "mid_block", "down_blocks.1.resnets.0",
             "up_blocks.0"]
    rec = Recorder(unet, feats)
    return ours, unet, rec, nb


def inputs(seed, hw=(16, 16)):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((1, 4, *hw), dtype=np.float32)
    c = rng.standard_normal((1, 77, 32), dtype=np.float32)
    # The reference pass is a nearby point, as inv_inv is to cur_inv in an edit.
    z_ref = (z + 0.3 * rng.standard_normal(z.shape)).astype(np.float32)
    c_ref = (c + 0.3 * rng.standard_normal(c.shape)).astype(np.float32)
    return z, c, z_ref, c_ref


ALL = [[0, 6], [0, 1], [0, 9]]
CASES = [
    ("all maps", [{"kind": "attn_map_l2", "scale": 1e4, "layers": ALL}]),
    ("down only", [{"kind": "attn_map_l2", "scale": 3e3, "layers": [[1, 6], [0, 0], [0, 0]]}]),
    ("mid+up slice", [{"kind": "attn_map_l2", "scale": 3e3, "layers": [[0, 0], [0, 1], [1, 3]]}]),
    ("feature l2 up", [{"kind": "feature_l2", "scale": 2.5, "at": "up_blocks.1.resnets.1"}]),
    ("feature l1 last", [{"kind": "feature_l1", "scale": 5.0, "at": "up_blocks.-1"}]),
    ("feature l1 conv_norm_out", [{"kind": "feature_l1", "scale": 5.0, "at": "conv_norm_out"}]),
    ("mixed", [{"kind": "attn_map_l2", "scale": 1e4, "layers": [[0, 6], [0, 1], [0, 4]]},
               {"kind": "feature_l2", "scale": 2.0, "at": "mid_block"},
               {"kind": "feature_l1", "scale": 1.0, "at": "down_blocks.1.resnets.0"}]),
]


def to_reference_terms(terms, nb):
    out = []
    for t in terms:
        t = dict(t)
        if "at" in t:
            t["at"] = t["at"].replace("up_blocks.-1", f"up_blocks.{nb - 1}")
        out.append(t)
    return out


def matches_autograd(setup, terms, seed, t, wrt, checkpointing):
    """gnr's E and gradients against torch.autograd's on inputs(seed): E
    within 1e-4 and each gradient asked for within 1e-3. Returns both sides'
    (E, grads) and the inputs."""
    from torch_reference import energy_and_grads

    ours, unet, rec, nb = setup
    z, c, z_ref, c_ref = inputs(seed)
    e_ref, g_ref = energy_and_grads(unet, rec, z, t, c, z_ref, c_ref, to_reference_terms(terms, nb), wrt)
    e, g = ours.energy_grad(z, t, c, z_ref, c_ref, terms, wrt=wrt, checkpointing=checkpointing)
    assert abs(e - e_ref) / e_ref < 1e-4
    for name in wrt:
        assert rel_err(g[name], g_ref[name]) < 1e-3, name
    return (e, g), (e_ref, g_ref), (z, c)


@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("name, terms", CASES, ids=[c[0] for c in CASES])
def test_energy_grad_matches_autograd(setup, name, terms, checkpointing):
    t = [981, 501, 21][len(name) % 3]
    (_, g), (e_ref, g_ref), (z, c) = matches_autograd(setup, terms, len(name), t, ("latent", "context"), checkpointing)
    assert e_ref > 0
    assert g["latent"].shape == z.shape and g["context"].shape == c.shape
    assert np.linalg.norm(g_ref["latent"]) > 0


@pytest.mark.parametrize("checkpointing", [False, True])
def test_latent_alone_matches_autograd(setup, checkpointing):
    """With the latent alone differentiated the context is a constant of the
    tape, whose cross-attention keys and values the backward computes again
    instead of keeping: the same tolerances against torch.autograd."""
    terms = [{"kind": "attn_map_l2", "scale": 1e4, "layers": ALL},
             {"kind": "feature_l2", "scale": 2.0, "at": "mid_block"}]
    (_, g), _, _ = matches_autograd(setup, terms, 23, 301, ("latent",), checkpointing)
    assert set(g) == {"latent"}


@pytest.fixture
def feed_forward_in_small_blocks():
    """The feed-forward's blocks at their least, 64 rows: on these models'
    16 x 16 latents the top level's 256 tokens go in four blocks (at SD
    shapes a block is 256 rows at 256 x 256)."""
    before = gnr._C._feed_forward_block_bytes(1)
    yield
    gnr._C._feed_forward_block_bytes(before)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_feed_forward_in_row_blocks_matches_autograd(setup, feed_forward_in_small_blocks, checkpointing):
    """The feed-forward computed a block of rows at a time, forward and
    backward (feed_forward.h): the same tolerances against torch.autograd."""
    terms = [{"kind": "attn_map_l2", "scale": 1e4, "layers": ALL},
             {"kind": "feature_l1", "scale": 5.0, "at": "up_blocks.-1"}]
    matches_autograd(setup, terms, 21, 501, ("latent", "context"), checkpointing)


def test_checkpointing_same_result_less_memory(setup):
    """With checkpointing, the whole pass stays within 2.4x (model a) and
    2.85x (model b) an inference pass's footprint: measured 2.25x and 2.72x,
    and 2.47x and 2.93x with every input a backward reads kept (nothing
    computed again)."""
    ours, *_ = setup
    z, c, z_ref, c_ref = inputs(11, (32, 32))
    terms = [{"kind": "attn_map_l2", "scale": 1e4, "layers": ALL}]
    ours.reset_peak()
    ours.unet(z, 500, c)
    inference = ours.peak_bytes
    ours.reset_peak()
    e1, g1 = ours.energy_grad(z, 500, c, z_ref, c_ref, terms)
    full = ours.peak_bytes
    ours.reset_peak()
    e2, g2 = ours.energy_grad(z, 500, c, z_ref, c_ref, terms, checkpointing=True)
    light = ours.peak_bytes
    # The forward is replayed with the same kernels (E is bit-identical); the
    # input gradients of a block are summed in another order, so dE/dz
    # differs by rounding only.
    assert e1 == e2
    assert rel_err(g2["latent"], g1["latent"]) < 1e-6
    assert light < full
    bound = 2.4 if len(ours.config["unet"]["block_out_channels"]) == 2 else 2.85  # models a and b
    assert light <= bound * inference, (light, inference)


def test_reverse_mode_keeps_only_what_the_backward_reads(setup):
    """The weights are frozen, so the recorded pass keeps nothing of
    convolutions and linear layers, and of what norms, activations, the
    feed-forward and attention read, only what cannot be computed again from
    another kept value through norms, linear layers and layout changes (the
    SiLUs' and the feed-forward's inputs, q, k and v, a transformer's first
    layer norm's input, cross-attention's keys and values of the constant
    context are computed again in the backward). It releases its scopes as
    inference does, and the backward hands gradient memory back to the arena
    as its live set shrinks: with all maps, its whole footprint (reference
    pass, recorded pass, backward) stays within 2.7x an inference pass's on
    model a and 3.55x on b (measured 2.57x and 3.41x; 4.27x and 6.19x with
    every input a backward reads kept; 13x and 24x, against the inference
    pass of the time, when the tape kept every intermediate)."""
    ours, *_ = setup
    z, c, z_ref, c_ref = inputs(11, (32, 32))
    ours.reset_peak()
    ours.unet(z, 500, c)
    inference = ours.peak_bytes
    ours.reset_peak()
    ours.energy_grad(z, 500, c, z_ref, c_ref, [{"kind": "attn_map_l2", "scale": 1e4, "layers": ALL}])
    bound = 2.7 if len(ours.config["unet"]["block_out_channels"]) == 2 else 3.55  # models a and b
    assert ours.peak_bytes <= bound * inference, (ours.peak_bytes, inference)


def test_inference_holds_only_the_waiting_skips(setup):
    """An inference pass uses the arena as a stack: a down step leaves only
    its skip connection, and the up step that consumes it frees it with
    everything above, and a transformer block's residual steps and the
    feed-forward's blocks of rows free their temporaries as they go. Its
    peak against the skips' bytes: measured 10.1x on model a and 5.9x on b
    (11.9x and 6.9x while a transformer block held all its temporaries to
    its end; 15.9x and 11.5x while finished steps' outputs stayed until the
    pass ended)."""
    ours, *_ = setup
    u = ours.config["unet"]
    channels, layers = u["block_out_channels"], u["layers_per_block"]
    h = 64
    skips = channels[0] * h * h * 4
    for i, ch in enumerate(channels):
        skips += layers * ch * h * h * 4
        if i < len(channels) - 1:
            h //= 2
            skips += ch * h * h * 4
    ours.reset_peak()
    ours.unet(np.zeros((1, 4, 64, 64), np.float32), 10, np.zeros((77, u["cross_attention_dim"]), np.float32))
    bound = 10.8 if len(channels) == 2 else 6.4  # models a and b
    assert ours.peak_bytes <= bound * skips, (ours.peak_bytes, skips)


def test_identical_inputs_give_exactly_zero(setup):
    """GNR_SPEC.md section 5: identical inputs must give bit-identical
    internals with and without recording, so the energy is exactly 0."""
    ours, *_ = setup
    z, c, _, _ = inputs(12)
    e, g = ours.energy_grad(z, 981, c, z, c, [{"kind": "attn_map_l2", "scale": 3e5, "layers": ALL},
                                              {"kind": "feature_l1", "scale": 500.0, "at": "up_blocks.-1"}])
    assert e == 0.0


def test_map_energy_from_the_backward_equals_the_energy_op(setup):
    """A map's energy comes out of the seeded attention backward, which makes
    both maps anyway; where that backward does not run (a layer whose queries
    and keys carry no gradient: the first self-attention when only the
    context is differentiated) the energy op computes it. Same kernels, same
    order of the sum: the same value to the bit, layer by layer and summed."""
    ours, *_ = setup
    z, c, z_ref, c_ref = inputs(16)
    first = [{"kind": "attn_map_l2", "scale": 1.0, "layers": [[0, 1], [0, 0], [0, 0]]}]
    every = [{"kind": "attn_map_l2", "scale": 1e4, "layers": ALL},
             {"kind": "feature_l1", "scale": 5.0, "at": "up_blocks.-1"}]
    for terms in (first, every):
        e_backward, _ = ours.energy_grad(z, 301, c, z_ref, c_ref, terms, wrt="latent")
        for checkpointing in (False, True):
            e_op, g = ours.energy_grad(z, 301, c, z_ref, c_ref, terms, wrt="context", checkpointing=checkpointing)
            assert e_backward == e_op > 0
            if terms is every:  # the later layers' backward did run
                assert np.linalg.norm(g["context"]) > 0


def test_finite_differences(setup):
    """Central differences of gnr's own E (float32 passes, E accumulated in
    float64) on the coordinates with the largest gradient: within 2 % of dE/dz."""
    ours, *_ = setup
    z, c, z_ref, c_ref = inputs(13, (8, 8))
    terms = [{"kind": "attn_map_l2", "scale": 1e4, "layers": ALL},
             {"kind": "feature_l2", "scale": 2.0, "at": "up_blocks.-1"}]
    _, g = ours.energy_grad(z, 301, c, z_ref, c_ref, terms)
    g = g["latent"].ravel()
    h = 1e-2
    for i in np.argsort(-np.abs(g))[:5]:
        zp, zm = z.copy().ravel(), z.copy().ravel()
        zp[i] += h
        zm[i] -= h
        ep, _ = ours.energy_grad(zp.reshape(z.shape), 301, c, z_ref, c_ref, terms)
        em, _ = ours.energy_grad(zm.reshape(z.shape), 301, c, z_ref, c_ref, terms)
        fd = (ep - em) / (2 * h)
        assert abs(fd - g[i]) <= 0.02 * abs(g[i]), (i, fd, g[i])


@pytest.mark.parametrize("terms, msg", [
    ([{"kind": "attn_map_l3", "scale": 1.0}], "unknown kind"),
    ([{"kind": "feature_l2", "scale": 1.0, "at": "up_blocks.9"}], "unknown capture point.*up_blocks.0"),
    ([{"kind": "feature_l2", "scale": 1.0, "at": "decoder.up"}], "unknown capture point"),
    ([{"kind": "feature_l2", "scale": 1.0}], "needs 'at'"),
    ([{"kind": "attn_map_l2", "scale": 1.0, "layers": [[2, 1], [0, 1], [0, 9]]}], "a <= b"),
    ([{"kind": "attn_map_l2", "scale": 1.0, "layers": [[0, 6], 1, [0, 9]]}], "self_attn_layers_num"),
    ([{"kind": "attn_map_l2", "scale": float("nan")}], "finite"),
    ([{"kind": "attn_map_l2", "scale": 1.0, "block": "up"}], "unknown keys"),
    ([], "non-empty"),
])
def test_bad_terms(setup, terms, msg):
    ours, *_ = setup
    z, c, z_ref, c_ref = inputs(14, (8, 8))
    with pytest.raises(ValueError, match=msg):
        ours.energy_grad(z, 1, c, z_ref, c_ref, terms)
    e, _ = ours.energy_grad(z, 1, c, z_ref, c_ref, [{"kind": "feature_l2", "scale": 1.0, "at": "mid_block"}])
    assert e > 0


def test_bare_layer_form_and_clipping(setup):
    ours, *_ = setup
    z, c, z_ref, c_ref = inputs(15, (8, 8))
    a, _ = ours.energy_grad(z, 5, c, z_ref, c_ref, [{"kind": "attn_map_l2", "scale": 1.0, "layers": [6, 1, 9]}])
    b, _ = ours.energy_grad(z, 5, c, z_ref, c_ref, [{"kind": "attn_map_l2", "scale": 1.0, "layers": [[0, 60], [0, 1], [0, 90]]}])
    assert a == b > 0
