"""Bad input never crashes the interpreter: each case raises a Python
exception naming what is wrong and what is allowed, and the model stays usable."""
import json
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import gnr


@pytest.fixture(scope="module")
def model(tiny_a_dir):
    return gnr.load_model(tiny_a_dir)


def still_works(m):
    out = m.unet(np.ones((1, 4, 8, 8), np.float32), 10, np.ones((77, 32), np.float32))
    assert np.isfinite(out).all()


def copy_model(src, dst):
    shutil.copytree(src, dst)
    return dst


# ----------------------------------------------------------------- files --

def test_missing_folder(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="nope"):
        gnr.load_model(missing)


def test_missing_weights_file(tiny_a_dir, tmp_path):
    d = copy_model(tiny_a_dir, tmp_path / "m")
    (d / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="vae"):
        gnr.load_model(d)


def test_truncated_weights(tiny_a_dir, tmp_path):
    d = copy_model(tiny_a_dir, tmp_path / "m")
    f = d / "unet" / "diffusion_pytorch_model.safetensors"
    f.write_bytes(f.read_bytes()[:-1000])
    with pytest.raises(ValueError, match="diffusion_pytorch_model.safetensors"):
        gnr.load_model(d)


def test_missing_weight(tiny_a_dir, tmp_path):
    d = copy_model(tiny_a_dir, tmp_path / "m")
    f = d / "unet" / "diffusion_pytorch_model.safetensors"
    w = load_file(f)
    del w["conv_in.bias"]
    save_file(w, f)
    with pytest.raises(ValueError, match=r"unet\.conv_in\.bias.*\(32,\)"):
        gnr.load_model(d)


def test_weight_shape_disagrees_with_config(tiny_a_dir, tmp_path):
    d = copy_model(tiny_a_dir, tmp_path / "m")
    f = d / "unet" / "diffusion_pytorch_model.safetensors"
    w = load_file(f)
    w["conv_in.weight"] = np.zeros((32, 4, 5, 5), np.float32)
    save_file(w, f)
    with pytest.raises(ValueError, match=r"conv_in\.weight.*\(32, 4, 5, 5\).*\(32, 4, 3, 3\)"):
        gnr.load_model(d)


def test_unsupported_config_value(tiny_a_dir, tmp_path):
    d = copy_model(tiny_a_dir, tmp_path / "m")
    f = d / "unet" / "config.json"
    cfg = json.loads(f.read_text())
    cfg["use_linear_projection"] = True
    f.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="use_linear_projection"):
        gnr.load_model(d)


def test_unsupported_block_type(tiny_a_dir, tmp_path):
    d = copy_model(tiny_a_dir, tmp_path / "m")
    f = d / "unet" / "config.json"
    cfg = json.loads(f.read_text())
    cfg["down_block_types"][0] = "SimpleCrossAttnDownBlock2D"
    f.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="SimpleCrossAttnDownBlock2D"):
        gnr.load_model(d)


def test_pickle_only_is_refused(tiny_a_dir, tmp_path):
    d = copy_model(tiny_a_dir, tmp_path / "m")
    f = d / "vae" / "diffusion_pytorch_model.safetensors"
    f.rename(d / "vae" / "diffusion_pytorch_model.bin")
    with pytest.raises(ValueError, match="safetensors"):
        gnr.load_model(d)


def test_fp16_variant(tmp_path, torch_threads):
    from tiny_models import build

    d = build(tmp_path / "m", "a", seed=2, variant="fp16")
    full = gnr.load_model(d)
    half = gnr.load_model(d, variant="fp16")
    z = np.random.default_rng(0).standard_normal((1, 4, 8, 8), dtype=np.float32)
    c = np.random.default_rng(1).standard_normal((77, 32), dtype=np.float32)
    a, b = full.unet(z, 100, c), half.unet(z, 100, c)
    assert a.dtype == b.dtype == np.float32
    assert 0 < np.linalg.norm(a - b) / np.linalg.norm(a) < 1e-2  # fp16 weights, fp32 compute


# ---------------------------------------------------------------- arrays --

@pytest.mark.parametrize("image, exc, msg", [
    (np.zeros((64, 64, 3), np.float32), TypeError, "uint8"),
    (np.zeros((64, 64), np.uint8), ValueError, r"\(H, W, 3\)"),
    (np.zeros((64, 64, 4), np.uint8), ValueError, r"\(H, W, 3\)"),
    (np.zeros((1, 64, 64, 3), np.uint8), ValueError, r"\(H, W, 3\)"),
    (np.zeros((40, 64, 3), np.uint8), ValueError, "multiple of 16.*nearest valid sizes: 32 or 48"),
    (np.zeros((0, 64, 3), np.uint8), ValueError, "height = 0 is not a positive multiple of 16.*nearest valid sizes: 16 "),
    ([[1, 2, 3]], TypeError, "NumPy uint8"),
])
def test_bad_image(model, image, exc, msg):
    with pytest.raises(exc, match=msg):
        model.encode_image(image)
    still_works(model)


@pytest.mark.parametrize("latent, exc, msg", [
    (np.zeros((1, 3, 8, 8), np.float32), ValueError, r"latent must have shape \(1, 4, \*, \*\)"),
    (np.zeros((4, 8, 8), np.float32), ValueError, "4 dimensions"),
    (np.zeros((1, 4, 7, 8), np.float32), ValueError, "multiples of 2"),
    (np.full((1, 4, 8, 8), np.nan, np.float32), ValueError, "NaN"),
    (np.zeros((1, 4, 8, 8), np.complex64), TypeError, "real floating"),
    ("latent", TypeError, "real floating"),
])
def test_bad_latent(model, latent, exc, msg):
    with pytest.raises(exc, match=msg):
        model.unet(latent, 10, np.zeros((77, 32), np.float32))
    still_works(model)


@pytest.mark.parametrize("context, exc, msg", [
    (np.zeros((77, 16), np.float32), ValueError, r"context must have shape \(L, 32\)"),
    (np.zeros((2, 77, 32), np.float32), ValueError, "context must have shape"),
    (np.zeros((32,), np.float32), ValueError, "context must have shape"),
    (np.full((77, 32), np.inf, np.float32), ValueError, "NaN or infinity"),
])
def test_bad_context(model, context, exc, msg):
    with pytest.raises(exc, match=msg):
        model.unet(np.zeros((1, 4, 8, 8), np.float32), 10, context)
    still_works(model)


@pytest.mark.parametrize("t, exc", [(-1, ValueError), (1000, ValueError), (2.5, TypeError), (True, TypeError),
                                    ("10", TypeError)])
def test_bad_timestep(model, t, exc):
    with pytest.raises(exc, match="timestep"):
        model.unet(np.zeros((1, 4, 8, 8), np.float32), t, np.zeros((77, 32), np.float32))
    still_works(model)


def test_bad_decode_latent(model):
    with pytest.raises(ValueError, match="latent"):
        model.decode_latent(np.zeros((1, 8, 8), np.float32))
    with pytest.raises(TypeError):
        model.encode_prompt(42)
    still_works(model)


def test_memory_cap(tiny_a_dir):
    m = gnr.load_model(tiny_a_dir, max_memory=64 * 1024)
    with pytest.raises(gnr.OutOfMemoryError, match="bytes"):
        m.unet(np.zeros((1, 4, 16, 16), np.float32), 10, np.zeros((77, 32), np.float32))
    m._c.set_max_memory(0)
    still_works(m)
