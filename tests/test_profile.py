"""gnr.profile(): per-op call counts and times of the engine, counted at the
one dispatch point of every op (csrc/ops.c). The CUDA side (same counts as
the CPU, times per op) is in tests/gpu/test_cuda_engine.py."""
import threading

import numpy as np
import pytest

import gnr


def op(name, *inputs, **params):
    return gnr._C._op(name, "cpu", tuple(inputs), params)


# What the op binding itself runs around each op: its inputs in, NaN-filled
# outputs, its outputs back.
BINDING_OPS = {"upload", "fill", "download"}


def calls(prof, skip=BINDING_OPS):
    return {(r.op, r.device): r.calls for r in prof.rows if r.op not in skip}


def test_counts_each_call_of_each_op_and_nothing_outside_the_block():
    x = np.ones(1000, np.float32)
    op("add", x, x)  # before: not counted
    with gnr.profile() as prof:
        for _ in range(3):
            op("add", x, x)
        op("scale", x, alpha=2.0)
    op("add", x, x)  # after: not counted
    assert calls(prof) == {("add", "cpu"): 3, ("scale", "cpu"): 1}
    assert all(r.seconds > 0 for r in prof.rows)
    assert prof.ops_seconds <= prof.wall
    assert prof.rows == sorted(prof.rows, key=lambda r: -r.seconds)


def test_a_new_profile_starts_from_zero():
    x = np.ones(10, np.float32)
    with gnr.profile():
        op("add", x, x)
    with gnr.profile() as prof:
        op("add", x, x)
    assert calls(prof) == {("add", "cpu"): 1}


def test_ops_on_several_threads_add_up():
    x = np.ones(4096, np.float32)

    def work():
        for _ in range(200):
            op("add", x, x)

    with gnr.profile() as prof:
        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert calls(prof) == {("add", "cpu"): 800}


def test_profiles_do_not_nest_and_an_error_in_the_block_ends_the_profile():
    x = np.ones(10, np.float32)
    with gnr.profile() as outer:
        with pytest.raises(RuntimeError, match="already running"):
            with gnr.profile():
                pass
        op("add", x, x)
    assert calls(outer) == {("add", "cpu"): 1}
    with pytest.raises(ZeroDivisionError):
        with gnr.profile() as failed:
            op("add", x, x)
            1 / 0
    assert calls(failed) == {("add", "cpu"): 1}
    with gnr.profile() as after:  # the failed block's profile was stopped
        pass
    assert after.rows == []


def test_a_unet_pass_counts_one_self_and_one_cross_attention_per_transformer_block(tiny_a_dir):
    """The counts against the model's structure, read from its weights: two
    attentions per transformer block, one group norm per resnet norm, the
    transformer norms and the output norm. And profiling changes nothing:
    the pass is bit-identical with and without it."""
    m = gnr.load_model(tiny_a_dir)
    rng = np.random.default_rng(0)
    z = rng.standard_normal((1, 4, 16, 16), dtype=np.float32)
    c = rng.standard_normal((77, m.config["unet"]["cross_attention_dim"]), dtype=np.float32)
    plain = m.unet(z, 500, c)
    with gnr.profile() as prof:
        profiled = m.unet(z, 500, c)
    np.testing.assert_array_equal(profiled, plain)
    names = [n for n, _ in m._c.weight_specs() if n.startswith("unet.")]
    blocks = sum(n.endswith(".attn1.to_q.weight") for n in names)
    resnet_norms = sum(".resnets." in n and n.endswith((".norm1.weight", ".norm2.weight")) for n in names)
    transformer_norms = sum(n.endswith(".norm.weight") and ".attentions." in n for n in names)
    got = calls(prof, skip=())
    assert blocks > 0
    assert got[("attention_forward", "cpu")] == 2 * blocks
    assert got[("layer_norm_forward", "cpu")] == 3 * blocks
    assert got[("group_norm_forward", "cpu")] == resnet_norms + transformer_norms + 1  # + conv_norm_out
    assert not any(r.op.endswith("_backward") for r in prof.rows)  # a plain pass records no tape
    text = str(prof)
    assert "attention_forward" in text and "(wall)" in text
