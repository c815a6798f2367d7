"""The published configs and normalize(): values, schedules, every rejection."""
import copy
import math

import numpy as np
import pytest

from gnr import configs

STYLE_SA = [100000.0] * 25 + [0.0] * 25
STYLE_FM = [2.5] * 25 + [0.0] * 25
COMMON = {"scheduler_type": "ddim_50_eps", "inversion_type": "dummy", "model_name": "stable-diffusion-v1-4",
          "pipeline_type": "ours", "start_latent": "inversion", "verbose": False, "num_steps": 50, "seed": 0}


# ----------------------------------------------------------------- published --

def test_nonstyle_values():
    c = configs.NONSTYLE
    for k, v in COMMON.items():
        assert c[k] == v, k
    assert c["edit_types"] == ["animal-2-animal", "face-in-the-wild", "person-in-the-wild"]
    assert c["guiders"] == [
        {"name": "cfg", "g_scale": 7.5, "kwargs": {"is_source_guidance": False}},
        {"name": "self_attn_map_l2_appearance", "g_scale": 1.0,
         "kwargs": {"self_attn_gs": 300000.0, "app_gs": 500.0, "new_features": True, "total_first_steps": 30}},
    ]
    assert c["noise_rescaling_setup"] == {"type": "range_other_on_cfg_norm", "init_setup": [0.33, 3.0]}
    assert "self_attn_layers_num" not in c and "gradient_checkpointing" not in c
    low = configs.NONSTYLE_LOWMEM
    assert low["gradient_checkpointing"] is True
    assert low["self_attn_layers_num"] == [[2, 6], [0, 1], [0, 4]]
    del low["gradient_checkpointing"], low["self_attn_layers_num"]
    assert low == c


def test_style_values():
    c = configs.STYLE
    for k, v in COMMON.items():
        assert c[k] == v, k
    assert c["edit_types"] == "stylisation"
    assert c["guiders"] == [
        {"name": "cfg", "g_scale": 7.5, "kwargs": {"is_source_guidance": False}},
        {"name": "self_attn_map_l2", "g_scale": STYLE_SA, "kwargs": {}},
        {"name": "features_map_l2", "g_scale": STYLE_FM, "kwargs": {}},
    ]
    assert c["noise_rescaling_setup"] == {"type": "range_other_on_cfg_norm", "init_setup": [1.5, 1.5]}
    assert "self_attn_layers_num" not in c
    low = configs.STYLE_LOWMEM
    assert low["gradient_checkpointing"] is True
    assert low["self_attn_layers_num"] == [[2, 6], [0, 1], [0, 4]]
    del low["gradient_checkpointing"], low["self_attn_layers_num"]
    assert low == c


def test_all_numbers_are_floats():
    def walk(x, path):
        if isinstance(x, dict):
            for k, v in x.items():
                if k not in ("num_steps", "seed", "total_first_steps", "self_attn_layers_num"):
                    walk(v, f"{path}.{k}")
        elif isinstance(x, list):
            for i, v in enumerate(x):
                walk(v, f"{path}[{i}]")
        elif isinstance(x, (int, float)) and not isinstance(x, bool):
            assert isinstance(x, float), path
    for name in configs.names():
        walk(configs.get(name), name)


def test_fresh_copies():
    a = configs.NONSTYLE
    a["guiders"][0]["g_scale"] = 1.0
    a["guiders"][1]["kwargs"]["app_gs"] = 0.0
    assert configs.NONSTYLE["guiders"][0]["g_scale"] == 7.5
    assert configs.NONSTYLE["guiders"][1]["kwargs"]["app_gs"] == 500.0
    s = configs.get("style")
    s["guiders"][1]["g_scale"][0] = -1.0
    assert configs.STYLE["guiders"][1]["g_scale"][0] == 100000.0
    assert configs.STYLE is not configs.STYLE
    with pytest.raises(AttributeError):
        configs.NOT_A_CONFIG


def test_get_and_names():
    assert configs.names() == ["nonstyle", "nonstyle_lowmem", "style", "style_lowmem"]
    pairs = {"nonstyle": "ours_nonstyle_best", "nonstyle_lowmem": "ours_nonstyle_best_colab",
             "style": "ours_style_best", "style_lowmem": "ours_style_best_colab"}
    for short, stem in pairs.items():
        ref = getattr(configs, short.upper())
        assert configs.get(short) == ref
        assert configs.get(short.upper()) == ref
        assert configs.get(stem) == ref
        assert configs.get(stem.upper()) == ref
    with pytest.raises(ValueError, match="nonstyle"):
        configs.get("nonstile")


# ----------------------------------------------------------------- normalize --

def test_normalize_published():
    for name in ("nonstyle", "nonstyle_lowmem"):
        n = configs.normalize(configs.get(name))
        assert n["num_steps"] == 50 and n["seed"] == 0
        assert n["inversion_type"] == "dummy" and n["start_latent"] == "inversion"
        assert n["gradient_checkpointing"] is (name == "nonstyle_lowmem")
        assert n["layers"] == ([[2, 6], [0, 1], [0, 4]] if name.endswith("lowmem") else [[0, 6], [0, 1], [0, 9]])
        assert n["rescaler"] == {"type": "range_other_on_cfg_norm", "lo": 0.33, "hi": 3.0}
        assert n["ntinv_guidance"] is None
        cfg, app = n["guiders"]
        assert cfg == {"name": "cfg", "scale": [7.5] * 50, "source": False}
        assert app == {"name": "self_attn_map_l2_appearance", "scale": [1.0] * 50,
                       "self_attn": [300000.0] * 30 + [0.0] * 20, "app": [500.0] * 30 + [0.0] * 20,
                       "new_features": True}
    for name in ("style", "style_lowmem"):
        n = configs.normalize(configs.get(name))
        assert n["gradient_checkpointing"] is (name == "style_lowmem")
        assert n["rescaler"] == {"type": "range_other_on_cfg_norm", "lo": 1.5, "hi": 1.5}
        assert n["guiders"] == [
            {"name": "cfg", "scale": [7.5] * 50, "source": False},
            {"name": "self_attn_map_l2", "scale": STYLE_SA},
            {"name": "features_map_l2", "scale": STYLE_FM, "block": "up"},
        ]


def test_normalize_does_not_touch_input():
    c = configs.NONSTYLE
    before = copy.deepcopy(c)
    configs.normalize(c)
    assert c == before


def test_defaults():
    n = configs.normalize({"guiders": [{"name": "cfg", "g_scale": 7}]})
    assert n == {"num_steps": 50, "seed": 0, "inversion_type": "dummy", "start_latent": "inversion",
                 "gradient_checkpointing": False, "layers": [[0, 6], [0, 1], [0, 9]],
                 "guiders": [{"name": "cfg", "scale": [7.0] * 50, "source": False}],
                 "rescaler": {"type": "identity_rescaler"}, "ntinv_guidance": None}
    assert all(type(v) is float for v in n["guiders"][0]["scale"])


def _app(n, **kw):
    kwargs = {"self_attn_gs": 3.0, "app_gs": 5.0}
    kwargs.update(kw)
    c = {"num_steps": n, "guiders": [{"name": "cfg", "g_scale": 7.5},
                                     {"name": "self_attn_map_l2_appearance", "g_scale": 2, "kwargs": kwargs}]}
    return configs.normalize(c)["guiders"][1]


def test_schedule_first_steps():
    g = _app(50, total_first_steps=30)
    assert g["self_attn"] == [3.0] * 30 + [0.0] * 20 and g["app"] == [5.0] * 30 + [0.0] * 20
    assert g["scale"] == [2.0] * 50 and g["new_features"] is False
    g = _app(20, total_first_steps=30)  # k < 30: every step of 20
    assert g["self_attn"] == [3.0] * 20 and g["app"] == [5.0] * 20
    g = _app(20, total_first_steps=7)
    assert g["self_attn"] == [3.0] * 7 + [0.0] * 13
    g = _app(10, total_first_steps=0)
    assert g["self_attn"] == [0.0] * 10 and g["app"] == [0.0] * 10


def test_schedule_last_steps():
    for n in (1, 10, 49, 50, 60):
        g = _app(50, total_last_steps=n)
        want = [0.0] * max(0, 50 - n) + [3.0] * min(n, 50)
        assert g["self_attn"] == want, n
        assert g["app"] == [5.0 if v else 0.0 for v in want]
    g = _app(20, total_last_steps=5)
    assert g["self_attn"] == [0.0] * 15 + [3.0] * 5


def test_schedule_both_last_wins_and_neither_constant():
    g = _app(50, total_first_steps=30, total_last_steps=10)
    assert g["self_attn"] == [0.0] * 40 + [3.0] * 10 and g["app"] == [0.0] * 40 + [5.0] * 10
    g = _app(50)
    assert g["self_attn"] == [3.0] * 50 and g["app"] == [5.0] * 50
    g = _app(4, self_attn_gs=[1, 2, 3, 4], app_gs=0.5)  # per-step lists without a schedule
    assert g["self_attn"] == [1.0, 2.0, 3.0, 4.0] and g["app"] == [0.5] * 4


def test_style_list_and_other_forms():
    n = configs.normalize(configs.STYLE)
    assert n["guiders"][1]["scale"] == STYLE_SA
    c = {"num_steps": 3, "seed": 7, "inversion_type": "ntinv", "start_latent": "random",
         "gradient_checkpointing": True, "self_attn_layers_num": [1, 0, 2],
         "guiders": [{"name": "cfg", "g_scale": 5, "kwargs": {"is_source_guidance": True}},
                     {"name": "latents_diff", "g_scale": np.array([1.0, 2.0, 3.0])},
                     {"name": "features_map_l2", "g_scale": (1, 2, 3), "kwargs": {"block": "mid"}}],
         "noise_rescaling_setup": {"type": "identity_rescaler", "init_setup": [1.0, 2.0]}}
    n = configs.normalize(c)
    assert n["seed"] == 7 and n["num_steps"] == 3 and n["inversion_type"] == "ntinv"
    assert n["start_latent"] == "random" and n["gradient_checkpointing"] is True
    assert n["layers"] == [[0, 1], [0, 0], [0, 2]]
    assert n["guiders"] == [{"name": "cfg", "scale": [5.0] * 3, "source": True},
                            {"name": "latents_diff", "scale": [1.0, 2.0, 3.0]},
                            {"name": "features_map_l2", "scale": [1.0, 2.0, 3.0], "block": "mid"}]
    assert n["rescaler"] == {"type": "identity_rescaler"}
    assert n["ntinv_guidance"] == 5.0 and type(n["ntinv_guidance"]) is float


def test_bookkeeping_keys_ignored():
    c = {"guiders": [], "scheduler_type": "anything", "model_name": "x", "pipeline_type": "y", "verbose": True,
         "edit_types": ["a"]}
    n = configs.normalize(c)
    assert n["guiders"] == [] and set(n) == {"num_steps", "seed", "inversion_type", "start_latent",
                                             "gradient_checkpointing", "layers", "guiders", "rescaler",
                                             "ntinv_guidance"}


# ---------------------------------------------------------------- rejections --

def _base():
    return configs.get("nonstyle")


def _reject(config, match, exc=(ValueError, TypeError)):
    with pytest.raises(exc, match=match):
        configs.normalize(config)


def test_reject_not_a_dict():
    _reject([1, 2], "config", TypeError)


def test_reject_unknown_key():
    c = _base()
    c["guidance"] = 1
    with pytest.raises(ValueError, match="'guidance'") as e:
        configs.normalize(c)
    assert "noise_rescaling_setup" in str(e.value) and "self_attn_layers_num" in str(e.value)


def test_reject_missing_guiders():
    c = _base()
    del c["guiders"]
    _reject(c, "guiders", ValueError)
    c["guiders"] = {"name": "cfg"}
    _reject(c, "guiders", TypeError)


def test_reject_unknown_guider_name():
    c = _base()
    c["guiders"][1]["name"] = "self_attn_map_l3"
    with pytest.raises(ValueError, match="self_attn_map_l3") as e:
        configs.normalize(c)
    for name in configs.GUIDERS:
        assert name in str(e.value)


def test_reject_bad_guider_entry():
    c = _base()
    c["guiders"][0]["scale"] = 1.0
    _reject(c, "'scale'", ValueError)
    c = _base()
    del c["guiders"][0]["g_scale"]
    _reject(c, "g_scale", ValueError)
    c = _base()
    c["guiders"][1] = {"name": "cfg", "g_scale": 1.0}
    _reject(c, "twice", ValueError)


@pytest.mark.parametrize("name,kw", [
    ("cfg", {"is_source": True}),
    ("latents_diff", {"block": "up"}),
    ("features_map_l2", {"layer": 1}),
    ("self_attn_map_l2", {"self_attn_gs": 1.0}),
    ("self_attn_map_l2_appearance", {"self_attn_gs": 1.0, "app_gs": 1.0, "total_steps": 3}),
])
def test_reject_unknown_guider_kwarg(name, kw):
    c = {"guiders": [{"name": "cfg", "g_scale": 1.0}, {"name": name, "g_scale": 1.0, "kwargs": kw}]}
    if name == "cfg":
        c["guiders"] = c["guiders"][1:]
    bad = [k for k in kw if k not in configs.GUIDERS[name]][0]
    _reject(c, f"'{bad}'.*{name}", ValueError)


def test_reject_missing_appearance_scales():
    c = _base()
    del c["guiders"][1]["kwargs"]["app_gs"]
    _reject(c, "app_gs", ValueError)


def test_reject_bad_kwarg_values():
    c = _base()
    c["guiders"][0]["kwargs"]["is_source_guidance"] = 1
    _reject(c, "is_source_guidance", TypeError)
    c = _base()
    c["guiders"][1]["kwargs"]["new_features"] = "yes"
    _reject(c, "new_features", TypeError)
    c = configs.get("style")
    c["guiders"][2]["kwargs"]["block"] = "left"
    _reject(c, "block", ValueError)


def test_reject_features_whole():
    c = configs.get("style")
    c["guiders"][2]["kwargs"]["block"] = "whole"
    with pytest.raises(ValueError, match="block") as e:
        configs.normalize(c)
    assert "whole" in str(e.value) and "mid" in str(e.value)


def test_reject_unknown_rescaler():
    c = _base()
    c["noise_rescaling_setup"]["type"] = "range_other_on_cfg"
    with pytest.raises(ValueError, match="noise_rescaling_setup.type") as e:
        configs.normalize(c)
    assert "identity_rescaler" in str(e.value) and "range_other_on_cfg_norm" in str(e.value)
    c = _base()
    c["noise_rescaling_setup"]["scale"] = 2
    _reject(c, "'scale'", ValueError)


@pytest.mark.parametrize("rng", [[3.0, 0.33], [0.0, 1.0], [-1.0, 1.0], [1.0], [1.0, 2.0, 3.0], 1.5])
def test_reject_bad_rescaler_range(rng):
    c = _base()
    c["noise_rescaling_setup"]["init_setup"] = rng
    _reject(c, "init_setup", ValueError)


def test_reject_bad_rescaler_numbers():
    for bad, exc in ((float("nan"), ValueError), (float("inf"), ValueError), (True, TypeError), ("1", TypeError)):
        c = _base()
        c["noise_rescaling_setup"]["init_setup"] = [0.5, bad]
        _reject(c, r"init_setup\[1\]", exc)
    c = _base()
    c["noise_rescaling_setup"]["init_setup"] = [1, 1]  # ints accepted, lo == hi allowed
    assert configs.normalize(c)["rescaler"] == {"type": "range_other_on_cfg_norm", "lo": 1.0, "hi": 1.0}


def test_reject_range_rescaler_without_cfg():
    c = _base()
    del c["guiders"][0]
    with pytest.raises(ValueError, match="noise_rescaling_setup") as e:
        configs.normalize(c)
    assert "cfg" in str(e.value)
    c["noise_rescaling_setup"] = {"type": "identity_rescaler"}
    configs.normalize(c)  # fine without the rescaler
    c = {"guiders": [{"name": "latents_diff", "g_scale": 1.0}],
         "noise_rescaling_setup": {"type": "range_other_on_cfg_norm", "init_setup": [1.0, 2.0]}}
    configs.normalize(c)  # no energy guider: nothing to rescale


def test_reject_scale_list_length():
    c = configs.get("style")
    c["guiders"][1]["g_scale"] = c["guiders"][1]["g_scale"][:49]
    with pytest.raises(ValueError, match=r"guiders\[1\].g_scale") as e:
        configs.normalize(c)
    assert "49" in str(e.value) and "50" in str(e.value)
    c = configs.get("style")
    c["num_steps"] = 20
    _reject(c, r"guiders\[1\].g_scale", ValueError)
    c = _base()
    c["guiders"][1]["kwargs"].pop("total_first_steps")
    c["guiders"][1]["kwargs"]["app_gs"] = [1.0] * 10
    _reject(c, "app_gs", ValueError)


@pytest.mark.parametrize("bad,exc", [(float("nan"), ValueError), (float("inf"), ValueError),
                                     (-float("inf"), ValueError), (True, TypeError), (False, TypeError),
                                     ("7.5", TypeError), (None, TypeError), (1 + 2j, TypeError),
                                     ({"a": 1}, TypeError)])
def test_reject_bad_scale(bad, exc):
    c = _base()
    c["guiders"][0]["g_scale"] = bad
    _reject(c, r"guiders\[0\].g_scale", exc)
    c = configs.get("style")
    c["guiders"][2]["g_scale"][7] = bad
    _reject(c, r"guiders\[2\].g_scale\[7\]", exc)


@pytest.mark.parametrize("key", ["self_attn_gs", "app_gs"])
def test_reject_bad_appearance_scale(key):
    for bad, exc in ((float("nan"), ValueError), (True, TypeError), ([1.0] * 50, TypeError)):
        c = _base()  # with total_first_steps: a scalar is required
        c["guiders"][1]["kwargs"][key] = bad
        _reject(c, key, exc)


def test_scales_accept_ints_and_numpy():
    c = _base()
    c["guiders"][0]["g_scale"] = 7
    c["guiders"][1]["kwargs"]["self_attn_gs"] = np.float32(2.0)
    c["guiders"][1]["kwargs"]["app_gs"] = np.int64(3)
    n = configs.normalize(c)
    assert n["guiders"][0]["scale"] == [7.0] * 50
    assert n["guiders"][1]["self_attn"][0] == 2.0 and n["guiders"][1]["app"][0] == 3.0
    assert all(type(v) is float for g in n["guiders"] for v in g["scale"])


@pytest.mark.parametrize("layers", [
    [[0, 6], [0, 1]], [[0, 6], [0, 1], [5, 2]], [[0, 6], [-1, 1], [0, 9]], [[0, 6], [0, 1], 9],
    [6, 1, -1], [[0, 6.0], [0, 1], [0, 9]], "all", [[0, 6], [0, 1], [0, 9, 1]], [True, 1, 9],
])
def test_reject_bad_layers(layers):
    c = _base()
    c["self_attn_layers_num"] = layers
    _reject(c, "self_attn_layers_num", ValueError)


def test_layer_forms():
    c = _base()
    c["self_attn_layers_num"] = [6, 1, 9]
    assert configs.normalize(c)["layers"] == [[0, 6], [0, 1], [0, 9]]
    c["self_attn_layers_num"] = ((1, 100), (0, 0), (3, 3))
    assert configs.normalize(c)["layers"] == [[1, 100], [0, 0], [3, 3]]


def test_reject_inversion_and_start_latent():
    c = _base()
    c["inversion_type"] = "ddim"
    with pytest.raises(ValueError, match="inversion_type") as e:
        configs.normalize(c)
    assert all(k in str(e.value) for k in ("dummy", "npinv", "ntinv"))
    c = _base()
    c["start_latent"] = "noise"
    with pytest.raises(ValueError, match="start_latent") as e:
        configs.normalize(c)
    assert "inversion" in str(e.value) and "random" in str(e.value)
    c = _base()
    c["gradient_checkpointing"] = "true"
    _reject(c, "gradient_checkpointing", TypeError)


@pytest.mark.parametrize("key", ["total_first_steps", "total_last_steps"])
def test_reject_negative_step_counts(key):
    c = _base()
    c["guiders"][1]["kwargs"].pop("total_first_steps")
    c["guiders"][1]["kwargs"][key] = -1
    _reject(c, key, ValueError)
    c["guiders"][1]["kwargs"][key] = 2.0
    _reject(c, key, TypeError)
    c["guiders"][1]["kwargs"][key] = True
    _reject(c, key, TypeError)


def test_reject_total_last_steps_zero():
    c = _base()
    c["guiders"][1]["kwargs"]["total_last_steps"] = 0
    _reject(c, "total_last_steps", ValueError)


def test_reject_ntinv_list_scale():
    c = configs.get("style")
    c["inversion_type"] = "ntinv"
    c["guiders"] = [c["guiders"][1], c["guiders"][0], c["guiders"][2]]  # first guider has a per-step list
    with pytest.raises(ValueError, match="ntinv") as e:
        configs.normalize(c)
    assert r"guiders[0].g_scale" in str(e.value)
    c = {"inversion_type": "ntinv", "guiders": []}
    _reject(c, "ntinv", ValueError)
    c = configs.get("nonstyle")
    c["inversion_type"] = "ntinv"
    assert configs.normalize(c)["ntinv_guidance"] == 7.5


@pytest.mark.parametrize("bad,exc", [(0, ValueError), (-5, ValueError), (1001, ValueError), (2.0, TypeError),
                                     (True, TypeError), ("50", TypeError), (None, TypeError)])
def test_reject_num_steps(bad, exc):
    c = {"guiders": [{"name": "cfg", "g_scale": 7.5}], "num_steps": bad}
    _reject(c, "num_steps", exc)


def test_num_steps_range_limits():
    for n in (1, 7, 1000):
        c = {"guiders": [{"name": "cfg", "g_scale": 7.5}], "num_steps": n}
        assert configs.normalize(c)["num_steps"] == n


@pytest.mark.parametrize("bad,exc", [(1.0, TypeError), ("0", TypeError), (True, TypeError), (None, TypeError),
                                     (-1, ValueError), (2 ** 64, ValueError)])
def test_reject_seed(bad, exc):
    c = {"guiders": [{"name": "cfg", "g_scale": 7.5}], "seed": bad}
    _reject(c, "seed", exc)
    assert configs.normalize({"guiders": [], "seed": np.int64(3)})["seed"] == 3
    assert math.isfinite(configs.normalize({"guiders": [], "seed": 2 ** 64 - 1})["seed"])


# ------------------------------------------------- presets at any num_steps --

def _schedules(norm):
    """Every per-step schedule of a normalised config, by name."""
    out = {}
    for i, g in enumerate(norm["guiders"]):
        for key in ("scale", "self_attn", "app"):
            if key in g:
                out[f"{i}.{key}"] = g[key]
    return out


@pytest.mark.parametrize("n", [1, 2, 7, 25, 49, 50, 64, 100, 1000])
@pytest.mark.parametrize("name", configs.names())
def test_presets_resample_by_relative_position(name, n):
    """Step k of N takes the preset's step floor((k + 1/2) * 50 / N): every
    normalised schedule (g_scale lists, total_first_steps) follows it."""
    at50 = _schedules(configs.normalize(configs.get(name)))
    cfg = configs.get(name, num_steps=n)
    assert cfg["num_steps"] == n
    atn = _schedules(configs.normalize(cfg))
    assert atn.keys() == at50.keys()
    for key, sched in atn.items():
        assert sched == [at50[key][math.floor((k + 0.5) * 50 / n)] for k in range(n)], key


def test_presets_at_25_steps():
    style = configs.get("style", num_steps=25)
    assert style["guiders"][1]["g_scale"] == [100000.0] * 12 + [0.0] * 13
    assert style["guiders"][2]["g_scale"] == [2.5] * 12 + [0.0] * 13
    assert style["scheduler_type"] == "ddim_25_eps"
    nonstyle = configs.get("nonstyle", num_steps=25)
    assert nonstyle["guiders"][1]["kwargs"]["total_first_steps"] == 15      # 30 of 50
    assert configs.get("style", num_steps=100)["guiders"][1]["g_scale"] == [100000.0] * 50 + [0.0] * 50
    for name in configs.names():
        assert configs.get(name, num_steps=50) == configs.get(name)


def test_resample_any_list():
    assert configs.resample([1, 2, 3, 4], 2) == [2, 4]
    assert configs.resample([1, 2], 4) == [1, 1, 2, 2]
    assert configs.resample(np.arange(5.0), 5) == [0.0, 1.0, 2.0, 3.0, 4.0]
    with pytest.raises(TypeError, match="non-empty list"):
        configs.resample([], 3)


def test_explicit_lists_of_the_wrong_length_stay_an_error():
    cfg = configs.get("style")
    cfg["num_steps"] = 25
    with pytest.raises(ValueError, match=r"guiders\[1\].g_scale has 50 entries.*num_steps = 25"):
        configs.normalize(cfg)


@pytest.mark.parametrize("bad, exc", [(0, ValueError), (1001, ValueError), ("25", TypeError), (True, TypeError),
                                      (25.0, TypeError)])
def test_get_rejects_bad_num_steps(bad, exc):
    with pytest.raises(exc, match="num_steps"):
        configs.get("style", num_steps=bad)
