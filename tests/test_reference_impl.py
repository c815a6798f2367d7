"""Sanity checks of the plain PyTorch oracle (tests/gnr_reference.py) itself.

Tiny model "a", 64 x 64 images, 5-10 steps: cheap enough for the 2-core CI.
"""
import copy

import numpy as np
import pytest
import torch

from conftest import rel_err
from gnr_reference import ABAR, Reference, denoise_step, inversion_step, timesteps

SRC, TRG = "a photo of a cat", "a photo of a dog"


def short(name: str, n: int) -> dict:
    """A published config at n steps: per-step lists cut to their first n//2 values then 0."""
    from gnr import configs

    c = configs.get(name)
    c["num_steps"] = n
    for g in c["guiders"]:
        if isinstance(g["g_scale"], list):
            g["g_scale"] = [g["g_scale"][0]] * (n // 2) + [0.0] * (n - n // 2)
    return c


@pytest.fixture(scope="module")
def ref(tiny_a_dir):
    return Reference(tiny_a_dir)


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(3)
    x = np.linspace(0, 1, 64)
    base = np.stack([np.outer(x, 1 - x), np.outer(1 - x, x), np.outer(x, x)], axis=-1) * 255
    return np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)


def test_schedule():
    from diffusers import DDIMScheduler

    assert ABAR.dtype == torch.float32 and ABAR.shape == (1000,)
    assert float(ABAR[0]) == pytest.approx(1 - 0.00085, abs=1e-7)
    # float64 product of the same betas
    b = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000) ** 2
    a64 = np.cumprod(1 - b)
    assert float(ABAR[999]) == pytest.approx(a64[999], rel=1e-4)
    assert float(ABAR[999]) == pytest.approx(0.0046, rel=2e-2)
    assert np.allclose(ABAR.numpy(), a64, rtol=1e-4, atol=0)
    # diffusers builds the same float32 table
    s = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    assert torch.equal(s.alphas_cumprod, ABAR)
    assert timesteps(50) == list(range(980, -1, -20))
    assert timesteps(10) == [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]
    assert timesteps(3) == [666, 333, 0]
    assert timesteps(1000) == list(range(999, -1, -1))


@pytest.mark.parametrize("n,t", [(50, 0), (50, 480), (50, 960), (10, 300), (3, 333)])
def test_ddim_steps_are_inverses(n, t):
    g = torch.Generator().manual_seed(t)
    z = torch.randn(1, 4, 8, 8, generator=g)
    e = torch.randn(1, 4, 8, 8, generator=g)
    up = inversion_step(e, t, z, n)
    assert rel_err(up, z) > 1e-3  # it moved
    back = denoise_step(e, t + 1000 // n, up, n)
    assert rel_err(back, z) < 1e-5
    # the last denoising step (t = 0, s < 0) uses abar[0]: the identity
    assert rel_err(denoise_step(e, 0, z, n), z) < 1e-6
    # past the end the inversion step uses abar[999]
    top = inversion_step(e, 1000 - 1000 // n, z, n)
    a_t, a_s = float(ABAR[1000 - 1000 // n]), float(ABAR[999])
    want = a_s ** 0.5 * (z - (1 - a_t) ** 0.5 * e) / a_t ** 0.5 + (1 - a_s) ** 0.5 * e
    assert rel_err(top, want) < 1e-6


def test_guidance_changes_the_edit(ref, image):
    n = 6
    inv = ref.invert(image, SRC, short("nonstyle", n))
    assert len(inv[0]) == n + 1 and inv[1] is None
    z_gnr, img_gnr = ref.edit(image, SRC, TRG, short("nonstyle", n), inversion=inv)
    assert img_gnr.dtype == np.uint8 and img_gnr.shape == image.shape
    assert ref.infos[0]["kept"] == []  # k = 0: z == z_inv, the energy is exactly 0
    assert all(i["kept"] for i in ref.infos[1:])  # every later step has a gradient term
    cfg_only = short("nonstyle", n)
    cfg_only["guiders"] = cfg_only["guiders"][:1]
    z_cfg, _ = ref.edit(image, SRC, TRG, cfg_only, inversion=inv)
    assert rel_err(z_gnr, z_cfg) > 0.1
    # a wrong layer range changes it too
    wrong = short("nonstyle", n)
    wrong["self_attn_layers_num"] = [[0, 2], [0, 1], [0, 3]]
    z_wrong, _ = ref.edit(image, SRC, TRG, wrong, inversion=inv)
    assert rel_err(z_wrong, z_gnr) > 1e-2


def test_k0_drops_self_comparing_energy(ref, image):
    n = 6
    c = short("nonstyle", n)
    latents, _ = ref.invert(image, SRC, c)
    c_null, c_src, c_trg = (ref.encode_prompt(p) for p in ("", SRC, TRG))
    z = latents[n]
    eps_hat, z1, info = ref.guided_step(0, z, latents[n], c_null, c_src, c_trg, c)
    assert info["energies"]["self_attn_map_l2_appearance"] == 0.0
    assert info["kept"] == [] and info["grad"] is None and info["r"] is None
    assert np.array_equal(eps_hat, info["eps_uncond"] + info["terms"]["cfg"])
    assert np.array_equal(info["terms"]["cfg"], np.float32(7.5) * (info["eps_trg"] - info["eps_uncond"]))
    # style at k = 0: the attention maps compare cur_inv with inv_inv (dropped),
    # the features compare cur_trg with inv_inv (kept)
    s = short("style", n)
    _, _, info = ref.guided_step(0, z, latents[n], c_null, c_src, c_trg, s)
    assert info["energies"]["self_attn_map_l2"] == 0.0 and info["kept"] == ["features_map_l2"]
    assert info["scale_other"] * info["r"] == pytest.approx(1.5)
    # the next step: z differs from z_inv, the energy is kept and rescaled into range
    _, _, info = ref.guided_step(1, z1, latents[n - 1], c_null, c_src, c_trg, c)
    assert info["kept"] == ["self_attn_map_l2_appearance"] and info["energies"]["self_attn_map_l2_appearance"] > 0
    assert 0.33 - 1e-9 <= info["scale_other"] * info["r"] <= 3.0 + 1e-9


def test_energy_gradient_matches_plain_autograd(ref, tiny_a_dir, image):
    """The oracle's dE/dz against tests/torch_reference.py (a separate recorder)."""
    from tiny_models import load_reference
    from torch_reference import Recorder, energy_and_grads

    n = 6
    c = short("nonstyle", n)
    c["self_attn_layers_num"] = [[1, 2], [0, 1], [1, 3]]
    c["noise_rescaling_setup"] = {"type": "identity_rescaler"}
    latents, _ = ref.invert(image, SRC, c)
    c_null, c_src, c_trg = (ref.encode_prompt(p) for p in ("", SRC, TRG))
    rng = np.random.default_rng(0)
    z = latents[n - 1] + 0.1 * rng.standard_normal(latents[0].shape).astype(np.float32)
    k = 1
    eps_hat, _, info = ref.guided_step(k, z, latents[n - k], c_null, c_src, c_trg, c)
    unet = load_reference(tiny_a_dir)["unet"]
    last = len(unet.up_blocks) - 1
    rec = Recorder(unet, features=[f"up_blocks.{last}"])
    terms = [{"kind": "attn_map_l2", "scale": 300000.0, "layers": c["self_attn_layers_num"]},
             {"kind": "feature_l1", "scale": 500.0, "at": f"up_blocks.{last}"}]
    t = timesteps(n)[k]
    e, grads = energy_and_grads(unet, rec, z, t, c_src.numpy(), latents[n - k], c_src.numpy(), terms)
    assert info["energies"]["self_attn_map_l2_appearance"] == pytest.approx(e, rel=1e-4)
    assert rel_err(info["grad"], grads["latent"]) < 1e-3
    assert rel_err(eps_hat, info["eps_uncond"] + info["terms"]["cfg"] + grads["latent"]) < 1e-4


def test_float64_agrees(ref, tiny_a_dir, image):
    """float32 against float64. One step from the same inputs agrees to ~1e-5.
    A whole edit amplifies rounding: on this tiny model, float32 with 1 thread
    and with 2 threads already end 6e-4 (style) and 2e-3 (nonstyle) apart after
    5 steps, so the whole-edit bounds are 2e-3 and the end-to-end 1e-2."""
    n = 5
    ref64 = Reference(tiny_a_dir, dtype=torch.float64)
    latents, _ = ref64.invert(image, SRC, short("nonstyle", n))
    ctx = [ref64.encode_prompt(p) for p in ("", SRC, TRG)]
    rng = np.random.default_rng(1)
    z = latents[n - 1] + 0.05 * rng.standard_normal(latents[0].shape)
    for name in ("style", "nonstyle"):
        c = short(name, n)
        e64, z64, i64 = ref64.guided_step(1, z, latents[n - 1], *ctx, c)
        e32, z32, i32 = ref.guided_step(1, z, latents[n - 1], *ctx, c)
        assert i32["kept"] == i64["kept"] and i64["kept"]
        assert rel_err(e32, e64) < 1e-4 and rel_err(z32, z64) < 1e-4, name
        assert rel_err(i32["grad"], i64["grad"]) < 1e-4, name
        assert z64.dtype == np.float64 and z32.dtype == np.float32
    for name, tol in (("style", 2e-3), ("nonstyle", 1e-2)):
        c = short(name, n)
        z32, _ = ref.edit(image, SRC, TRG, c)
        z64, _ = ref64.edit(image, SRC, TRG, c)
        assert rel_err(z32, z64) < tol, name


def test_null_text_inversion(ref, image):
    n = 3
    c = short("nonstyle", n)
    c["inversion_type"] = "ntinv"
    latents, uncond = ref.invert(image, SRC, c)
    assert len(latents) == n + 1 and len(uncond) == n and uncond[0].shape == (1, 77, 32)
    c_null, c_src = ref.encode_prompt(""), ref.encode_prompt(SRC)
    t = timesteps(n)[0]
    z = torch.from_numpy(latents[n])

    def loss(u):
        e_u, e_c = ref.eps(z, t, torch.as_tensor(u)), ref.eps(z, t, c_src)
        return float(torch.mean((denoise_step(e_u + 7.5 * (e_c - e_u), t, z, n) - torch.from_numpy(latents[n - 1])) ** 2))

    assert loss(uncond[0]) < loss(c_null)
    # one inner iteration: Adam's first step is lr * g / (|g| + eps), g = dloss/du at c_null
    ref.ntinv_inner_steps = 1
    try:
        _, u1 = ref.invert(image, SRC, c)
    finally:
        ref.ntinv_inner_steps = 10
    z_k, u_prev = z, c_null
    for k, t_k in enumerate(timesteps(n)[:2]):  # lr = 0.01 * (1 - k / 100); u continues from u_{k-1}
        u = u_prev.clone().requires_grad_(True)
        with torch.enable_grad():
            e_u, e_c = ref.eps(z_k, t_k, u), ref.eps(z_k, t_k, c_src)
            target = torch.from_numpy(latents[n - k - 1])
            lo = torch.mean((denoise_step(e_u + 7.5 * (e_c - e_u), t_k, z_k, n) - target) ** 2)
            g = torch.autograd.grad(lo, u)[0].numpy()
        assert np.abs(g).max() > 0
        step = u1[k] - u_prev.numpy()
        assert np.allclose(step, -0.01 * (1 - k / 100) * g / (np.abs(g) + 1e-8), rtol=0, atol=2e-6), k
        u_prev = torch.from_numpy(u1[k])
        e_u = ref.eps(z_k, t_k, u_prev)
        z_k = denoise_step(e_u + 7.5 * (e_c - e_u), t_k, z_k, n)
    assert not np.array_equal(uncond[0], uncond[1])
    # the unconditional context of editing: u_k (ntinv), c_src (npinv), c_null (dummy)
    cfg = copy.deepcopy(c)
    cfg["guiders"] = cfg["guiders"][:1]
    z_nt, _ = ref.edit(image, SRC, TRG, cfg, inversion=(latents, uncond))
    cfg["inversion_type"] = "npinv"
    z_np, _ = ref.edit(image, SRC, TRG, cfg, inversion=(latents, None))
    cfg["inversion_type"] = "dummy"
    z_dummy, _ = ref.edit(image, SRC, TRG, cfg, inversion=(latents, None))
    assert min(rel_err(z_nt, z_dummy), rel_err(z_np, z_dummy), rel_err(z_nt, z_np)) > 1e-3


def test_gradient_free_guiders(ref, image):
    n = 4
    c = {"num_steps": n, "guiders": [
        {"name": "cfg", "g_scale": [1.0, 2.0, 3.0, 4.0], "kwargs": {"is_source_guidance": True}},
        {"name": "latents_diff", "g_scale": 0.5}]}
    latents, _ = ref.invert(image, SRC, c)
    ctx = [ref.encode_prompt(p) for p in ("", SRC, TRG)]
    z = latents[n - 1] + 0.1
    eps_hat, z_next, info = ref.guided_step(2, z, latents[n - 2], *ctx, c)
    assert info["kept"] == [] and info["grad"] is None
    cfg = np.float32(3.0) * (info["eps_src"] - info["eps_uncond"])
    diff = np.float32(0.5) * (2 * (z - latents[n - 2]))
    assert np.array_equal(info["terms"]["cfg"], cfg) and np.array_equal(info["terms"]["latents_diff"], diff)
    assert np.array_equal(eps_hat, info["eps_uncond"] + cfg + diff)
    want = denoise_step(torch.from_numpy(eps_hat), timesteps(n)[2], torch.from_numpy(z), n)
    assert np.array_equal(z_next, want.numpy())
