"""The Editor's behaviour around the loop: inversion reuse, determinism,
progress and callbacks, cancellation (Ctrl-C and callback), threads, and
validation before any work. Numeric agreement with the reference is in
test_edit_reference.py."""
import _thread
import threading

import numpy as np
import pytest

import gnr

N = 8


def small(name="nonstyle", **over):
    cfg = gnr.configs.get(name)
    cfg["num_steps"] = N
    for g in cfg["guiders"]:
        if isinstance(g["g_scale"], list):
            g["g_scale"] = g["g_scale"][:N]
    cfg.update(over)
    return cfg


@pytest.fixture(scope="module")
def editor(tiny_a_dir):
    return gnr.Editor(tiny_a_dir)


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)


def test_edit_returns_image_and_latent(editor, image):
    out, z = editor.edit(image, "a red circle", "a green circle", config=small(), progress=False,
                         return_latent=True)
    assert out.shape == image.shape and out.dtype == np.uint8 and out.flags.c_contiguous
    assert z.shape == (1, 4, 8, 8) and z.dtype == np.float32 and np.isfinite(z).all()
    t = editor.last_timings
    assert t["guided_count"] + t["unguided_count"] == N and t["guided_count"] >= 1


def test_guidance_changes_the_result(editor, image):
    """The guiders must matter by far more than any tolerance: nonstyle vs
    cfg only, and style vs cfg only."""
    cfg_only = small()
    cfg_only["guiders"] = cfg_only["guiders"][:1]
    _, z_cfg = editor.edit(image, "a cat", "a dog", config=cfg_only, progress=False, return_latent=True)
    for name in ("nonstyle", "style"):
        _, z = editor.edit(image, "a cat", "a dog", config=small(name), progress=False, return_latent=True)
        assert np.linalg.norm(z - z_cfg) / np.linalg.norm(z_cfg) > 0.05, name


def test_deterministic(editor, image):
    a = editor.edit(image, "a cat", "a dog", config=small(), progress=False, return_latent=True)[1]
    b = editor.edit(image, "a cat", "a dog", config=small(), progress=False, return_latent=True)[1]
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", ["nonstyle", "source_cfg"])  # STYLE records both current passes
def test_batched_passes_match_one_at_a_time(editor, image, monkeypatch, name):
    """A step's plain passes (eps_u and the current passes no energy reads)
    run as one batch; GNR_BATCH_PASSES=0 runs them one by one. The two agree
    up to the rounding of products of another shape (2e-6 on one pass, 4e-4
    after eight strongly guided steps of this tiny model), far inside a whole
    edit's 1e-2 against the reference."""
    cfg = small("nonstyle" if name == "source_cfg" else name)
    if name == "source_cfg":  # eps_src joins eps_u; the energy records the target pass
        cfg["guiders"] = [{"name": "cfg", "g_scale": 5.0, "kwargs": {"is_source_guidance": True}},
                          {"name": "features_map_l2", "g_scale": 3.0, "kwargs": {"block": "mid"}}]
    args = (image, "a red circle", "a green circle")
    _, batched = editor.edit(*args, config=cfg, progress=False, return_latent=True)
    monkeypatch.setenv("GNR_BATCH_PASSES", "0")
    _, single = editor.edit(*args, config=cfg, progress=False, return_latent=True)
    assert np.linalg.norm(batched - single) / np.linalg.norm(single) < 2e-3


def test_a_batch_over_max_memory_runs_one_pass_at_a_time(editor, image, monkeypatch):
    """max_memory at what one pass at a time needs: every step's batch is
    refused by the cap and its passes run one by one, bit-identical to
    GNR_BATCH_PASSES=0, and nothing is raised."""
    cfg = small()
    cfg["guiders"] = cfg["guiders"][:1]  # cfg only: batches of eps_u and eps_trg, nothing recorded
    inv = editor.invert(image, "a red circle", config=cfg, progress=False)
    m = editor.model

    def steps(batching, cap):
        monkeypatch.setenv("GNR_BATCH_PASSES", batching)
        m._c.set_max_memory(cap)
        m.reset_peak()
        try:
            return editor._steps(inv, "a green circle", cfg, 0, N)[0], m.peak_bytes
        finally:
            m._c.set_max_memory(0)

    single, single_peak = steps("0", 0)
    _, batched_peak = steps("1", 0)
    assert batched_peak > single_peak  # the batch is larger than one pass: it really batched
    capped, _ = steps("1", single_peak)
    np.testing.assert_array_equal(capped, single)


def test_inversion_reuse_is_bit_identical(editor, image):
    inv = editor.invert(image, "a cat", config=small(), progress=False)
    assert inv.latents.shape == (N + 1, 4, 8, 8) and not inv.latents.flags.writeable
    for target in ("a dog", "a tiger"):
        fresh = editor.edit(image, "a cat", target, config=small(), progress=False, return_latent=True)[1]
        reused = editor.edit(inv, target_prompt=target, config=small(), progress=False, return_latent=True)[1]
        np.testing.assert_array_equal(fresh, reused)


@pytest.mark.parametrize("over, key", [({"num_steps": N + 1}, "num_steps"),
                                       ({"inversion_type": "npinv"}, "inversion_type")])
def test_inversion_config_mismatch(editor, image, over, key):
    inv = editor.invert(image, "a cat", config=small(), progress=False)
    cfg = small(**over)
    if "num_steps" in over:
        cfg = gnr.configs.get("nonstyle")
        cfg["num_steps"] = over["num_steps"]
    with pytest.raises(ValueError, match=key):
        editor.edit(inv, target_prompt="a dog", config=cfg, progress=False)
    with pytest.raises(ValueError, match="source_prompt"):
        editor.edit(inv, "a bird", "a dog", config=small(), progress=False)


def test_npinv_differs_from_dummy(editor, image):
    a = editor.edit(image, "a cat", "a dog", config=small(), progress=False, return_latent=True)[1]
    b = editor.edit(image, "a cat", "a dog", config=small(inversion_type="npinv"), progress=False,
                    return_latent=True)[1]
    assert np.linalg.norm(a - b) > 1e-3 * np.linalg.norm(a)


def test_random_start_latent_is_seeded(editor, image):
    a = editor.edit(image, "a cat", "a dog", config=small(start_latent="random", seed=3), progress=False,
                    return_latent=True)[1]
    b = editor.edit(image, "a cat", "a dog", config=small(start_latent="random", seed=3), progress=False,
                    return_latent=True)[1]
    c = editor.edit(image, "a cat", "a dog", config=small(start_latent="random", seed=4), progress=False,
                    return_latent=True)[1]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_callback_sees_every_step(editor, image):
    seen = []

    def cb(step, total, latent):
        seen.append((step, total, latent.shape, latent.dtype))

    _, z = editor.edit(image, "a cat", "a dog", config=small(), progress=False, callback=cb, return_latent=True)
    assert [s[0] for s in seen] == list(range(N))
    assert all(s[1] == N and s[2] == (1, 4, 8, 8) and s[3] == np.float32 for s in seen)


def test_callback_false_cancels_and_editor_stays_usable(editor, image):
    with pytest.raises(gnr.EditCancelled, match="step 2"):
        editor.edit(image, "a cat", "a dog", config=small(), progress=False,
                    callback=lambda step, total, latent: step < 2)
    out = editor.edit(image, "a cat", "a dog", config=small(), progress=False)
    assert out.shape == image.shape


def test_callback_exception_propagates(editor, image):
    def boom(step, total, latent):
        raise ZeroDivisionError("boom")

    with pytest.raises(ZeroDivisionError, match="boom"):
        editor.edit(image, "a cat", "a dog", config=small(), progress=False, callback=boom)
    editor.edit(image, "a cat", "a dog", config=small(), progress=False)


def test_ctrl_c_stops_within_a_pass_and_editor_stays_usable(editor, image):
    steps = []
    timer = threading.Timer(0.3, _thread.interrupt_main)
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            cfg = small()
            cfg["num_steps"] = 200
            editor.edit(image, "a cat", "a dog", config=cfg, progress=False,
                        callback=lambda s, t, z: steps.append(s))
    finally:
        timer.cancel()
    assert len(steps) < 200
    reference = editor.edit(image, "a cat", "a dog", config=small(), progress=False, return_latent=True)[1]
    assert np.isfinite(reference).all()


def test_progress_bar(editor, image, capsys):
    editor.edit(image, "a cat", "a dog", config=small(), progress=True)
    err = capsys.readouterr().err
    assert "editing" in err and "inverting" in err


def test_two_editors_in_two_threads(tiny_a_dir, image):
    eds = [gnr.Editor(tiny_a_dir), gnr.Editor(tiny_a_dir)]
    targets = ["a dog", "a tiger"]
    expected = [eds[0].edit(image, "a cat", t, config=small(), progress=False, return_latent=True)[1]
                for t in targets]
    got = [None, None]

    def run(i):
        got[i] = eds[i].edit(image, "a cat", targets[i], config=small(), progress=False, return_latent=True)[1]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for e, g in zip(expected, got):
        np.testing.assert_array_equal(e, g)


def test_one_editor_from_two_threads_is_safe(editor, image):
    """Each engine call takes the model for its duration; calls from two
    threads interleave but never share state, so both results are right."""
    expected = editor.edit(image, "a cat", "a dog", config=small(), progress=False, return_latent=True)[1]
    got, errors = [], []

    def run():
        try:
            got.append(editor.edit(image, "a cat", "a dog", config=small(), progress=False, return_latent=True)[1])
        except ValueError as e:  # refused while the other thread holds the model
            assert "busy" in str(e)
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) + len(errors) == 2 and got
    for g in got:
        np.testing.assert_array_equal(g, expected)


@pytest.mark.parametrize("mutate, exc, msg", [
    (lambda c: c.update(bogus=1), ValueError, "bogus"),
    (lambda c: c["guiders"].append({"name": "nope", "g_scale": 1.0}), ValueError, "nope"),
    (lambda c: c["guiders"][0].update(g_scale=[1.0, 2.0]), ValueError, "g_scale"),
    (lambda c: c["guiders"][0].update(g_scale=float("inf")), ValueError, "g_scale"),
    (lambda c: c.update(self_attn_layers_num=[[3, 1], [0, 1], [0, 9]]), ValueError, "self_attn_layers_num"),
    (lambda c: c.update(inversion_type="magic"), ValueError, "inversion_type"),
    (lambda c: c.update(start_latent="noise"), ValueError, "start_latent"),
    (lambda c: c["noise_rescaling_setup"].update(type="other"), ValueError, "noise_rescaling_setup"),
])
def test_validation_before_work(editor, image, mutate, exc, msg):
    cfg = small()
    mutate(cfg)
    calls = []
    with pytest.raises(exc, match=msg):
        editor.edit(image, "a cat", "a dog", config=cfg, progress=False, callback=lambda *a: calls.append(a))
    assert calls == []


def test_bad_arguments(editor, image):
    with pytest.raises(TypeError, match="uint8"):
        editor.edit(image.astype(np.float32), "a", "b", config=small(), progress=False)
    with pytest.raises(TypeError, match="target_prompt"):
        editor.edit(image, "a", 3, config=small(), progress=False)
    with pytest.raises(ValueError, match="target_prompt"):
        editor.edit(image, "a", config=small(), progress=False)
    with pytest.raises(ValueError, match="dtype"):
        gnr.Editor(editor.model, dtype="float16")


def test_dtype_choices(tiny_e2e_dir):
    """float32 is accepted everywhere; the 16-bit speed modes name the device
    they need; anything else names what is allowed."""
    assert gnr.Editor(str(tiny_e2e_dir), dtype=np.float32).model.dtype == "float32"
    m = gnr.load_model(tiny_e2e_dir, dtype="float32")
    assert m.dtype == "float32" and "float32" in repr(m)
    assert gnr.Editor(m, dtype="fp32").model is m
    for bad16 in ("float16", "bfloat16", np.float16, "bf16"):
        with pytest.raises(ValueError, match="needs device='cuda'"):
            gnr.load_model(tiny_e2e_dir, dtype=bad16)
        with pytest.raises(ValueError, match="needs device='cuda'"):
            gnr.Editor(str(tiny_e2e_dir), dtype=bad16)
    for wrong in ("float64", np.int8, "fp8", 3):
        with pytest.raises(ValueError, match="'float32', 'float16' or 'bfloat16'"):
            gnr.load_model(tiny_e2e_dir, dtype=wrong)


# ----------------------------------------------- the step's algebra, by hand --
# eps_hat of one step recomputed from gnr's own low-level passes (unet and
# energy_grad) with the formulas of GNR_SPEC.md sections 5 to 7.

def one_step(editor, image, cfg, k):
    inv = editor.invert(image, "a cat", config=cfg, progress=False)
    n = cfg["num_steps"]
    z_inv = inv.latents[n - k][None]
    z = (z_inv + 0.1 * np.random.default_rng(k).standard_normal(z_inv.shape)).astype(np.float32)
    _, eps_hat = editor._steps(inv, "a dog", cfg, k, k + 1, z_start=z)
    return z, z_inv, eps_hat


def step_t(cfg, k):
    n = cfg["num_steps"]
    return (n - 1 - k) * (1000 // n)


def test_cfg_and_latents_diff_by_hand(editor, image):
    cfg = small()
    cfg["guiders"] = [{"name": "cfg", "g_scale": 6.0, "kwargs": {"is_source_guidance": False}},
                      {"name": "latents_diff", "g_scale": 0.25, "kwargs": {}}]
    cfg["noise_rescaling_setup"] = {"type": "identity_rescaler", "init_setup": None}
    k = 3
    z, z_inv, eps_hat = one_step(editor, image, cfg, k)
    m, t = editor.model, step_t(cfg, k)
    eps_u = m.unet(z, t, m.encode_prompt(""))
    eps_trg = m.unet(z, t, m.encode_prompt("a dog"))
    expected = eps_u + np.float32(6.0) * (eps_trg - eps_u) + np.float32(0.25) * 2 * (z - z_inv)
    np.testing.assert_allclose(eps_hat, expected, rtol=0, atol=1e-5 * np.abs(expected).max())


@pytest.mark.parametrize("lo, hi", [(0.33, 3.0), (1.5, 1.5), (1e-3, 1e-2)])
def test_range_rescaler_by_hand(editor, image, lo, hi):
    cfg = small()
    cfg["guiders"] = [{"name": "cfg", "g_scale": 7.5, "kwargs": {"is_source_guidance": False}},
                      {"name": "self_attn_map_l2", "g_scale": 1e4, "kwargs": {}}]
    cfg["noise_rescaling_setup"] = {"type": "range_other_on_cfg_norm", "init_setup": [lo, hi]}
    k = 2
    z, z_inv, eps_hat = one_step(editor, image, cfg, k)
    m, t = editor.model, step_t(cfg, k)
    c_src = m.encode_prompt("a cat")
    eps_u = m.unet(z, t, m.encode_prompt(""))
    cfg_term = np.float32(7.5) * (m.unet(z, t, m.encode_prompt("a dog")) - eps_u)
    _, g = m.energy_grad(z, t, c_src, z_inv, c_src, [{"kind": "attn_map_l2", "scale": 1e4}])
    g = g["latent"]
    r = np.linalg.norm(g) / np.linalg.norm(cfg_term)
    scale = min(max(r, lo), hi) / r
    expected = eps_u + cfg_term + np.float32(scale) * g
    assert np.linalg.norm(eps_hat - expected) / np.linalg.norm(expected) < 1e-5
    # and the rescaling really acted: the gradient term's norm is clip(r) x the cfg term's
    np.testing.assert_allclose(np.linalg.norm(scale * g) / np.linalg.norm(cfg_term), min(max(r, lo), hi),
                               rtol=1e-6)


# ---------------------------------------- arguments, presets by name, timings --

class CountingEngine:
    """Stands in for a model's engine object and records every engine call
    that does work (passes: text, UNet, VAE, inversion, edit), not the
    queries of capture names."""

    QUERIES = {"feature_names", "attention_names"}

    def __init__(self, engine):
        self._engine = engine
        self.calls = []

    def __getattr__(self, name):
        attr = getattr(self._engine, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            if name not in self.QUERIES:
                self.calls.append(name)
            return attr(*args, **kwargs)

        return call


@pytest.fixture
def counted(editor, monkeypatch):
    engine = CountingEngine(editor.model._c)
    monkeypatch.setattr(editor.model, "_c", engine)
    return engine


BAD_EDIT_ARGUMENTS = [
    (dict(callback=5), TypeError, "callback must be None or a callable"),
    (dict(progress="yes"), TypeError, "progress must be None, True or False"),
    (dict(return_latent=1), TypeError, "return_latent must be True or False"),
    (dict(target_prompt=3), TypeError, "target_prompt must be a str"),
    (dict(target_prompt=None), ValueError, "target_prompt is required"),
    (dict(source_prompt=None), ValueError, "source_prompt is required"),
    (dict(source_prompt=["a cat"]), TypeError, "source_prompt must be a str"),
    (dict(image=np.zeros((60, 64, 3), np.uint8)), ValueError, "image height = 60 .* nearest valid sizes: 48 or 64"),
    (dict(image=np.zeros((64, 64, 3), np.float32)), TypeError, "uint8"),
    (dict(image=[[0]]), TypeError, "uint8 array of shape \\(H, W, 3\\)"),
    (dict(config=3), TypeError, "config must be a dict or a preset name"),
    (dict(config="fancy"), ValueError, "unknown config 'fancy'"),
]


@pytest.mark.parametrize("bad, exc, msg", BAD_EDIT_ARGUMENTS)
def test_every_edit_argument_is_checked_before_any_work(editor, image, counted, bad, exc, msg):
    """A bad argument raises before the engine runs once (callback=5 used to
    be found only after the inversion), and last_timings keeps nothing."""
    editor.edit(image, "a cat", "a dog", config=small(), progress=False)
    assert editor.last_timings and counted.calls
    counted.calls.clear()
    args = dict(image=image, source_prompt="a cat", target_prompt="a dog", config=small(), progress=False)
    args.update(bad)
    with pytest.raises(exc, match=msg):
        editor.edit(**args)
    assert counted.calls == [] and editor.last_timings == {}


@pytest.mark.parametrize("bad, exc, msg", [b for b in BAD_EDIT_ARGUMENTS if set(b[0]) <= {"image", "config",
                                                                                          "progress"}]
                         + [(dict(source_prompt=3), TypeError, "source_prompt must be a str")])
def test_every_invert_argument_is_checked_before_any_work(editor, image, counted, bad, exc, msg):
    args = dict(image=image, source_prompt="a cat", config=small(), progress=False)
    args.update(bad)
    with pytest.raises(exc, match=msg):
        editor.invert(**args)
    assert counted.calls == []


def test_a_preset_name_is_a_config(editor, image):
    by_name = editor.edit(image, "a cat", "a dog", config="style", progress=False, return_latent=True)[1]
    by_dict = editor.edit(image, "a cat", "a dog", config=gnr.configs.get("style"), progress=False,
                          return_latent=True)[1]
    np.testing.assert_array_equal(by_name, by_dict)
    inv = editor.invert(image, "a cat", config="nonstyle", progress=False)
    assert inv.num_steps == 50
    reused = editor.edit(inv, target_prompt="a dog", config="NONSTYLE", progress=False, return_latent=True)[1]
    np.testing.assert_array_equal(reused, editor.edit(image, "a cat", "a dog", progress=False,
                                                      return_latent=True)[1])


EDIT_TIMINGS = {"encode", "inversion", "guided_steps", "unguided_steps", "guided_count", "unguided_count", "decode"}


def test_last_timings_describe_exactly_the_last_call(editor, image):
    editor.edit(image, "a cat", "a dog", config=small(), progress=False)
    t = editor.last_timings
    assert set(t) == EDIT_TIMINGS and t["inversion"] > 0 and t["guided_count"] + t["unguided_count"] == N
    inv = editor.invert(image, "a cat", config=small(), progress=False)
    assert set(editor.last_timings) == {"encode", "inversion"}       # no keys left from the edit
    editor.edit(inv, target_prompt="a dog", config=small(), progress=False)
    assert set(editor.last_timings) == EDIT_TIMINGS and editor.last_timings["inversion"] == 0.0
    with pytest.raises(gnr.EditCancelled):
        editor.edit(image, "a cat", "a dog", config=small(), progress=False, callback=lambda s, t, z: s < 2)
    t = editor.last_timings
    assert "decode" not in t and t["guided_count"] + t["unguided_count"] == 3   # the phases that ran
    with pytest.raises(TypeError):
        editor.edit(image, "a cat", "a dog", config=small(), callback=5)
    assert editor.last_timings == {}


def test_one_truncation_warning_per_edit(editor, image):
    import warnings

    long_source = "cat " * 75 + "wearing a small hat"
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        editor.edit(image, long_source, "a dog", config=small(), progress=False)
    cut = [w for w in record if issubclass(w.category, gnr.tokenizer.PromptTruncatedWarning)]
    assert len(cut) == 1 and str(cut[0].message).endswith(": 'wearing a small hat'")
    assert cut[0].filename == __file__                    # points at the caller, not inside gnr


@pytest.mark.parametrize("kw, exc, msg", [(dict(threads=-1), ValueError, "threads"),
                                          (dict(threads=1.5), TypeError, "threads"),
                                          (dict(max_memory=-1), ValueError, "max_memory"),
                                          (dict(max_memory="1GB"), TypeError, "max_memory")])
def test_editor_constructor_arguments(tiny_a_dir, kw, exc, msg):
    with pytest.raises(exc, match=msg):
        gnr.Editor(tiny_a_dir, **kw)
