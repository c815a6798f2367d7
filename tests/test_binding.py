"""The binding's own guarantees (csrc/python): arguments are range-checked,
never truncated or wrapped; what the engine reads while the GIL is released
is the binding's own copy; a model in use cannot be re-initialised under the
call using it."""
import copy
import threading

import numpy as np
import pytest

import gnr
from gnr import _C
from gnr.model import read_model_configs


@pytest.fixture(scope="module")
def resolved(tiny_a_dir):
    return read_model_configs(tiny_a_dir)[1]


def still_works(m):
    out = m.unet(np.ones((1, 4, 8, 8), np.float32), 10, np.ones((77, 32), np.float32))
    assert np.isfinite(out).all()


# -------------------------------------------------------------- ranges --

def test_negative_max_memory_is_refused_not_wrapped(tiny_a_dir, resolved):
    with pytest.raises(ValueError, match=r"max_memory must be an integer in \[0, \d+\], got -1"):
        _C.Model(resolved, "cpu", 0, -1, "float32")
    m = gnr.load_model(tiny_a_dir)
    with pytest.raises(ValueError, match=r"max_memory must be an integer in \[0, \d+\], got -1"):
        m._c.set_max_memory(-1)
    still_works(m)


@pytest.fixture
def restore_threads():
    before = gnr.build_info()["threads"]
    yield before
    gnr.set_num_threads(before)


def test_thread_count_beyond_c_int_is_refused(restore_threads):
    with pytest.raises((ValueError, OverflowError), match="num_threads"):
        gnr.set_num_threads(2**32 + 1)  # would be 1 thread if cut to 32 bits
    assert gnr.build_info()["threads"] == restore_threads


def test_config_value_beyond_c_int_is_refused(resolved):
    cfg = copy.deepcopy(resolved)
    cfg["unet"]["block_out_channels"][0] += 2**32  # the same value if cut to 32 bits
    # gnr.model refuses it first (naming the file), so here it is a bug in gnr
    with pytest.raises(RuntimeError, match=r"internal error in gnr.*block_out_channels'\[0\] must be an integer in"):
        _C.Model(cfg, "cpu", 0, 0, "float32")


def test_op_param_beyond_c_int_is_refused():
    x = np.ones((1, 4, 2, 2), np.float32)
    with pytest.raises((ValueError, OverflowError), match=r"params\['groups'\]"):
        _C._op("group_norm_forward", "cpu", (x,), {"groups": 2**32 + 2})  # 2 groups if cut


def test_a_config_gnr_model_never_builds_is_an_internal_error(resolved):
    cfg = copy.deepcopy(resolved)
    del cfg["vae"]["use_quant_conv"]
    with pytest.raises(RuntimeError, match="internal error in gnr.*use_quant_conv"):
        _C.Model(cfg, "cpu", 0, 0, "float32")


# ------------------------------------------------------- re-initialising --

def test_reinit_while_another_thread_runs_a_call_is_refused(tiny_a_dir, resolved):
    m = gnr.load_model(tiny_a_dir)
    rng = np.random.default_rng(0)
    z0 = rng.standard_normal((1, 4, 8, 8), dtype=np.float32)
    c = rng.standard_normal((77, 32), dtype=np.float32)
    expected = m._c._invert(z0, c, 3, None, False)
    started, release = threading.Event(), threading.Event()

    def hold(phase, done, total, guided, latent):  # keeps the call running, the GIL released
        started.set()
        release.wait(60)

    result = {}

    def run():
        try:
            result["chain"] = m._c._invert(z0, c, 3, hold, False)
        except BaseException as e:  # noqa: B036 - reported below
            result["error"] = e

    worker = threading.Thread(target=run)
    worker.start()
    try:
        assert started.wait(60)
        with pytest.raises(RuntimeError, match="in use"):
            m._c.__init__(resolved, "cpu", 0, 0, "float32")
    finally:
        release.set()
        worker.join(60)
    assert "error" not in result, result.get("error")
    np.testing.assert_array_equal(result["chain"], expected)
    still_works(m)


def test_reinit_from_the_calls_own_callback_is_refused(tiny_a_dir, resolved):
    m = gnr.load_model(tiny_a_dir)
    z0 = np.ones((1, 4, 8, 8), np.float32)
    c = np.ones((77, 32), np.float32)

    def reinit(phase, done, total, guided, latent):
        m._c.__init__(resolved, "cpu", 0, 0, "float32")

    with pytest.raises(RuntimeError, match="in use"):
        m._c._invert(z0, c, 3, reinit, False)
    still_works(m)


def test_reinit_of_an_idle_model_replaces_it(tiny_a_dir, resolved):
    m = gnr.load_model(tiny_a_dir)
    specs = m._c.weight_specs()
    m._c.__init__(resolved, "cpu", 0, 0, "float32")  # a new model, no weights yet
    assert m._c.weight_specs() == specs
    with pytest.raises(ValueError, match="not loaded"):
        still_works(m)


# ------------------------------------------------------- capture names --

def test_capture_names_changed_during_an_edit_are_not_read(tiny_e2e_dir):
    """The plan's capture names are the binding's copies: a callback (or
    another thread) that empties the plan's lists while the edit runs, and
    reuses their memory, changes nothing."""
    m = gnr.load_model(tiny_e2e_dir)
    n = 3
    rng = np.random.default_rng(1)
    c_src, c_trg, c_null = m.encode_prompt("a cat"), m.encode_prompt("a dog"), m.encode_prompt("")
    chain = m._c._invert(rng.standard_normal((1, 4, 8, 8), dtype=np.float32), c_src, n, None, False)
    feature = m.feature_captures[-1]

    def plan():
        # fresh str objects, owned by the plan alone
        maps = [s.encode().decode() for part in m.attention_maps for s in part]
        return {"num_steps": n, "maps": maps, "range_rescale": False, "lo": 1.0, "hi": 1.0,
                "checkpointing": False, "begin": 0, "end": n,
                "guiders": [{"kind": 0, "scale": [5.0] * n, "source": False, "feature": None},
                            {"kind": 3, "scale": [1e4] * n, "source": False, "feature": None},
                            {"kind": 2, "scale": [1e3] * n, "source": False, "feature": feature.encode().decode()}]}

    expected, _ = m._c._edit(plan(), chain, c_null, c_src, c_trg, None, False)
    p = plan()
    reused = []

    def mutate(phase, done, total, guided, latent):
        if reused:
            return
        lengths = [len(s) for s in p["maps"]] + [len(p["guiders"][2]["feature"])]
        p["maps"].clear()
        p["guiders"][2]["feature"] = None
        # new strings of the same sizes take the freed memory
        reused.extend("#" * k for k in lengths for _ in range(8))

    got, _ = m._c._edit(p, chain, c_null, c_src, c_trg, mutate, False)
    assert reused
    np.testing.assert_array_equal(got, expected)
