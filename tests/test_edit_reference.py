"""gnr's editing loop against the independent PyTorch implementation of
GNR_SPEC.md in tests/gnr_reference.py (DECISIONS.md section 1):

- one guided step in isolation, same z, z_inv and contexts on both sides:
  eps_hat and z' within relative 1e-4, for every guider, both rescalers,
  k = 0 and the last step;
- whole 50-step edits of each published config, npinv and ntinv: final latent
  within relative 1e-2, decoded image within 4/255;
- the checks can fail: a wrong layer range breaks the end-to-end comparison.
"""
import numpy as np
import pytest
import torch

import gnr
from conftest import rel_err


@pytest.fixture(scope="module")
def setup(tiny_e2e_dir, torch_threads):
    from gnr_reference import Reference

    editor = gnr.Editor(tiny_e2e_dir)
    ref = Reference(tiny_e2e_dir)
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    return editor, ref, image


SRC, TRG = "a red circle on a blue background", "a green circle on a blue background"


def step_configs():
    ns, st = gnr.configs.NONSTYLE, gnr.configs.STYLE
    out = {"nonstyle": ns, "nonstyle_lowmem": gnr.configs.NONSTYLE_LOWMEM, "style": st,
           "style_lowmem": gnr.configs.STYLE_LOWMEM}
    ident = gnr.configs.NONSTYLE
    ident["noise_rescaling_setup"] = {"type": "identity_rescaler", "init_setup": None}
    out["identity_rescaler"] = ident
    extra = gnr.configs.NONSTYLE
    extra["guiders"] = [{"name": "cfg", "g_scale": 5.0, "kwargs": {"is_source_guidance": True}},
                        {"name": "latents_diff", "g_scale": 0.3, "kwargs": {}},
                        {"name": "self_attn_map_l2", "g_scale": 2e5, "kwargs": {}},
                        {"name": "features_map_l2", "g_scale": 3.0, "kwargs": {"block": "mid"}},
                        {"name": "self_attn_map_l2_appearance", "g_scale": 0.5,
                         "kwargs": {"self_attn_gs": 1e5, "app_gs": 300.0, "new_features": False,
                                    "total_last_steps": 45}}]
    extra["noise_rescaling_setup"] = {"type": "range_other_on_cfg_norm", "init_setup": [0.5, 2.0]}
    extra["self_attn_layers_num"] = [[1, 2], [0, 1], [1, 3]]
    out["every_guider"] = extra
    return out


STEP_CASES = [(name, k) for name in step_configs() for k in (0, 7, 49)]


def one_step_both_ways(setup, cfg, k):
    """Step k of `cfg` by gnr and by the reference from the same z, z_inv and
    contexts: (gnr's z', eps_hat), (the reference's eps_hat, z', info)."""
    editor, ref, image = setup
    inv = editor.invert(image, SRC, config=cfg, progress=False)
    n = cfg["num_steps"]
    z_inv = inv.latents[n - k][None]
    # At k = 0 the edit starts exactly at z_inv (the energies must vanish);
    # elsewhere the current latent has drifted from it.
    z = z_inv.copy() if k == 0 else (z_inv + 0.2 * np.random.default_rng(k).standard_normal(z_inv.shape)
                                     ).astype(np.float32)
    m = editor.model
    c_src, c_trg, c_null = m.encode_prompt(SRC), m.encode_prompt(TRG), m.encode_prompt("")
    uncond = c_src if cfg.get("inversion_type") == "npinv" else c_null
    z_next, eps_hat = editor._steps(inv, TRG, cfg, k, k + 1, z_start=z)
    return (z_next, eps_hat), ref.guided_step(k, z, z_inv, uncond, c_src, c_trg, cfg)


@pytest.mark.parametrize("name, k", STEP_CASES, ids=[f"{n}-k{k}" for n, k in STEP_CASES])
def test_one_step_in_isolation(setup, name, k):
    (z_next, eps_hat), (e_ref, z_ref, info) = one_step_both_ways(setup, step_configs()[name], k)
    assert rel_err(eps_hat, e_ref) < 1e-4
    assert rel_err(z_next, z_ref) < 1e-4
    if k == 0 and name != "every_guider":
        # nonstyle: no energy survives k = 0; style: only features_map_l2 (cur_trg) does
        assert info["kept"] in ([], ["features_map_l2"])
    if k == 7 and name in ("nonstyle", "style", "every_guider"):
        assert info["grad"] is not None and info["kept"]  # the step really was guided


def e2e(setup, cfg):
    editor, ref, image = setup
    out, z = editor.edit(image, SRC, TRG, config=cfg, progress=False, return_latent=True)
    z_ref, img_ref = ref.edit(image, SRC, TRG, cfg)
    return z, z_ref, out, img_ref


@pytest.mark.parametrize("name", ["nonstyle", "nonstyle_lowmem", "style", "style_lowmem"])
def test_whole_edit_published_configs(setup, name):
    z, z_ref, out, img_ref = e2e(setup, gnr.configs.get(name))
    assert rel_err(z, z_ref) < 1e-2
    assert np.abs(out.astype(int) - img_ref.astype(int)).max() <= 4


def test_whole_edit_npinv(setup):
    cfg = gnr.configs.NONSTYLE
    cfg["inversion_type"] = "npinv"
    z, z_ref, out, img_ref = e2e(setup, cfg)
    assert rel_err(z, z_ref) < 1e-2


def test_whole_edit_ntinv(setup):
    cfg = gnr.configs.NONSTYLE
    cfg["inversion_type"] = "ntinv"
    editor, ref, image = setup
    inv = editor.invert(image, SRC, config=cfg, progress=False)
    lat_ref, u_ref = ref.invert(image, SRC, cfg)
    assert rel_err(inv.latents, np.concatenate(lat_ref)) < 1e-3
    # 50 x 10 Adam steps normalise each gradient entry, so rounding in tiny
    # entries grows over the optimisation: held to the whole-edit tolerance.
    assert rel_err(inv.uncond, np.concatenate(u_ref)) < 1e-2
    z = editor.edit(inv, target_prompt=TRG, config=cfg, progress=False, return_latent=True)[1]
    z_ref, _ = ref.edit(image, SRC, TRG, cfg, inversion=(lat_ref, u_ref))
    assert rel_err(z, z_ref) < 1e-2


def test_wrong_layer_range_breaks_the_check(setup):
    """The end-to-end comparison can fail: gnr run with another layer
    selection than the reference's must land far outside the tolerance."""
    editor, ref, image = setup
    cfg = gnr.configs.NONSTYLE
    z_ref, _ = ref.edit(image, SRC, TRG, cfg)
    wrong = gnr.configs.NONSTYLE
    wrong["self_attn_layers_num"] = [[0, 1], [0, 0], [0, 1]]
    z = editor.edit(image, SRC, TRG, config=wrong, progress=False, return_latent=True)[1]
    assert rel_err(z, z_ref) > 1e-2
