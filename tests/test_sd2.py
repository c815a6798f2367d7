"""Stable Diffusion 2.x in the engine, on a tiny random SD 2.x-shaped model
(tests/tiny_models.py "sd2": GELU text encoder, Linear transformer
projections, upcast attention, a head count per level, a tokenizer that pads
with "!"), with both prediction types of the scheduler config:

- the text encoder, the tokenizer and the UNet against transformers/diffusers
  (relative 1e-4, DECISIONS.md section 1);
- one guided step in isolation for every guider against the PyTorch
  implementation of the spec (tests/gnr_reference.py, which converts a
  velocity to noise after every UNet call), relative 1e-4; whole 50-step
  edits (dummy, npinv, ntinv) at relative 1e-2;
- the checks can fail: the same weights read as an eps model land far from
  the v-prediction reference;
- the model's identity (info(), repr) and SD 2.1-v's 768 x 768 native size.
"""
import json
import shutil

import numpy as np
import pytest

import gnr
from conftest import rel_err
from test_edit_reference import SRC, TRG, e2e, one_step_both_ways, step_configs

PREDICTIONS = ["epsilon", "v_prediction"]
TOL = 1e-4


@pytest.fixture(scope="module", params=PREDICTIONS)
def sd2_dir(request, tmp_path_factory, torch_threads):
    """A tiny SD 2.x-shaped model per prediction type, sharp enough for
    non-zero energies but not chaotic over a whole edit (qk_gain 2, as
    tests/conftest.py's tiny_e2e_dir)."""
    from tiny_models import build

    return build(tmp_path_factory.mktemp(f"sd2_{request.param}"), "sd2", seed=1, qk_gain=2.0,
                 prediction_type=request.param)


@pytest.fixture(scope="module")
def setup(sd2_dir, torch_threads):
    from gnr_reference import Reference

    editor = gnr.Editor(sd2_dir)
    ref = Reference(sd2_dir)
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    return editor, ref, image


# ------------------------------------------------------------ components --

def test_text_encoder_and_tokenizer(setup, torch_threads):
    torch = torch_threads
    editor, ref, _ = setup
    m = editor.model
    for p in ["a photo of a cat", "", "A red CIRCLE on a blue background, 4k!!"]:
        ids = ref.tokenizer(p, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        np.testing.assert_array_equal(m.tokenizer.encode(p), ids[0].numpy())
        assert ids[0, -1] == 0  # SD 2.x pads with "!", id 0
        with torch.no_grad():
            expected = ref.text_encoder(ids)[0][0].numpy()
        assert rel_err(m.encode_prompt(p), expected) < TOL, p


@pytest.mark.parametrize("t, hw", [(0, (8, 8)), (261, (8, 8)), (999, (8, 8)), (500, (8, 24))])
def test_unet(setup, torch_threads, t, hw):
    torch = torch_threads
    editor, ref, _ = setup
    rng = np.random.default_rng(t)
    z = rng.standard_normal((1, 4, *hw), dtype=np.float32)
    c = rng.standard_normal((1, 77, 32), dtype=np.float32)
    with torch.no_grad():
        expected = ref.unet(torch.from_numpy(z), t, encoder_hidden_states=torch.from_numpy(c)).sample.numpy()
    # the raw prediction, v for a v-predicting model, as diffusers returns it
    assert rel_err(editor.model.unet(z, t, c), expected) < TOL


def test_heads_per_level_reach_the_engine(sd2_dir):
    """attention_head_dim [2, 4, 8] is the head count of each down block (the
    mid block takes the last, the up blocks the mirrored ones). The head
    split shows in the values only, not in any weight's shape: the same
    weights read with other head counts must give another output, so the
    parity above holds only because the counts reach the engine."""
    cfg_path = sd2_dir / "unet" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    assert cfg["attention_head_dim"] == [2, 4, 8] and cfg["use_linear_projection"] and cfg["upcast_attention"]
    rng = np.random.default_rng(5)
    z = rng.standard_normal((1, 4, 8, 8), dtype=np.float32)
    c = rng.standard_normal((1, 77, 32), dtype=np.float32)
    right = gnr.load_model(sd2_dir).unet(z, 300, c)
    wrong_dir = sd2_dir.parent / (sd2_dir.name + "_heads")
    shutil.copytree(sd2_dir, wrong_dir, dirs_exist_ok=True)
    (wrong_dir / "unet" / "config.json").write_text(json.dumps(dict(cfg, attention_head_dim=[4, 4, 4])))
    wrong = gnr.load_model(wrong_dir).unet(z, 300, c)
    assert rel_err(wrong, right) > 1e-3


# ---------------------------------------------------------- editing loop --

STEP_CASES = [(name, k) for name in step_configs() for k in (0, 7, 49)]


@pytest.mark.parametrize("name, k", STEP_CASES, ids=[f"{n}-k{k}" for n, k in STEP_CASES])
def test_one_step_in_isolation(setup, name, k):
    (z_next, eps_hat), (e_ref, z_ref, info) = one_step_both_ways(setup, step_configs()[name], k)
    assert rel_err(eps_hat, e_ref) < TOL
    assert rel_err(z_next, z_ref) < TOL
    if k == 7 and name in ("nonstyle", "style", "every_guider"):
        assert info["grad"] is not None and info["kept"]  # the step really was guided


def test_inversion_chain(setup):
    editor, ref, image = setup
    cfg = gnr.configs.NONSTYLE
    inv = editor.invert(image, SRC, config=cfg, progress=False)
    lat_ref, _ = ref.invert(image, SRC, cfg)
    assert rel_err(inv.latents, np.concatenate(lat_ref)) < 1e-3


@pytest.mark.parametrize("name", ["nonstyle", "style"])
def test_whole_edit(setup, name):
    z, z_ref, out, img_ref = e2e(setup, gnr.configs.get(name))
    assert rel_err(z, z_ref) < 1e-2
    assert np.abs(out.astype(int) - img_ref.astype(int)).max() <= 4


def test_whole_edit_npinv(setup):
    cfg = gnr.configs.NONSTYLE
    cfg["inversion_type"] = "npinv"
    z, z_ref, _, _ = e2e(setup, cfg)
    assert rel_err(z, z_ref) < 1e-2


def test_whole_edit_ntinv(setup):
    """Null-text inversion differentiates through the v -> eps conversion."""
    editor, ref, image = setup
    cfg = gnr.configs.NONSTYLE
    cfg["inversion_type"] = "ntinv"
    inv = editor.invert(image, SRC, config=cfg, progress=False)
    lat_ref, u_ref = ref.invert(image, SRC, cfg)
    assert rel_err(inv.uncond, np.concatenate(u_ref)) < 1e-2
    z = editor.edit(inv, target_prompt=TRG, config=cfg, progress=False, return_latent=True)[1]
    z_ref, _ = ref.edit(image, SRC, TRG, cfg, inversion=(lat_ref, u_ref))
    assert rel_err(z, z_ref) < 1e-2


def test_prediction_type_matters(setup, tmp_path):
    """The checks can fail: the same weights with the other prediction type
    in the scheduler config end far outside the whole-edit tolerance."""
    editor, ref, image = setup
    other = "epsilon" if editor.model.prediction_type == "v_prediction" else "v_prediction"
    folder = tmp_path / "other"
    shutil.copytree(editor.model.path, folder)
    sched = folder / "scheduler" / "scheduler_config.json"
    sched.write_text(json.dumps(dict(json.loads(sched.read_text()), prediction_type=other)))
    cfg = gnr.configs.NONSTYLE
    z_ref, _ = ref.edit(image, SRC, TRG, cfg)
    z = gnr.Editor(folder).edit(image, SRC, TRG, config=cfg, progress=False, return_latent=True)[1]
    assert rel_err(z, z_ref) > 1e-1


# -------------------------------------------------------------- identity --

def test_identity(setup):
    editor, _, _ = setup
    m = editor.model
    info = m.info()
    assert info["family"] == "SD 2.x"
    assert info["prediction_type"] == m.prediction_type == json.loads(
        (m.path / "scheduler" / "scheduler_config.json").read_text())["prediction_type"]
    assert (info["native_size"], info["size_multiple"], info["vae_factor"]) == (128, 32, 8)
    assert (info["latent_channels"], info["context_length"], info["context_dim"]) == (4, 77, 32)
    assert (info["device"], info["dtype"], info["format"]) == ("cpu", "float32", "diffusers")
    assert info["file_dtypes"] == {"unet": ["float32"], "vae": ["float32"], "text_encoder": ["float32"]}
    text = repr(m)
    for part in ("SD 2.x", m.prediction_type, "native_size=128", "dtype='float32'", "files=float32"):
        assert part in text, (part, text)


def test_identity_sd1_and_file_dtypes(tmp_path, torch_threads):
    from tiny_models import build

    folder = build(tmp_path / "sd1", "a", seed=2, variant="fp16")
    plain = gnr.load_model(folder).info()
    assert (plain["family"], plain["prediction_type"]) == ("SD 1.x", "epsilon")  # no scheduler folder: eps
    assert all(d == ["float32"] for d in plain["file_dtypes"].values())
    half = gnr.load_model(folder, variant="fp16")
    assert all(d == ["float16"] for d in half.info()["file_dtypes"].values())
    assert "SD 1.x" in repr(half) and "files=float16" in repr(half)


def test_native_size_768(tmp_path, torch_threads):
    """SD 2.1-v: UNet sample_size 96 with the VAE's factor 8 is 768 x 768."""
    from tiny_models import build

    folder = build(tmp_path / "sd21v", "sd2", seed=3, prediction_type="v_prediction", sample_size=96)
    assert gnr.sizes.model_sizes(folder) == (768, 32)
    editor = gnr.Editor(folder)
    assert editor.model.native_size == 768 and editor.model.info()["native_size"] == 768
    rng = np.random.default_rng(0)
    image = editor.load_image(rng.integers(0, 256, (800, 900, 3), dtype=np.uint8))
    assert image.shape == (768, 768, 3)
    assert editor.model.encode_image(image).shape == (1, 4, 96, 96)


# ------------------------------------------------------------- tokenizer --

E, S = "<|endoftext|>", "<|startoftext|>"
DECODER = {str(i): {"content": t, "special": True, "lstrip": False, "rstrip": False, "normalized": False,
                    "single_word": False} for i, t in ((49406, S), (49407, E))}
# (tokenizer_config.json, special_tokens_map.json or None): which file names
# the pad token, as transformers reads them.
PAD_CASES = {
    "sd2 files: the map overrides the config": ({"pad_token": E}, {"pad_token": "!"}),
    "the map overrides the config's '!'": ({"pad_token": "!"}, {"pad_token": E}),
    "an AddedToken dict": ({"pad_token": E}, {"pad_token": {"content": "!", "lstrip": False, "rstrip": False,
                                                            "normalized": False, "single_word": False}}),
    "config only": ({"pad_token": "!"}, None),
    "neither: the end token": ({}, None),
    "added_tokens_decoder: the map is ignored": ({"pad_token": "!", "added_tokens_decoder": DECODER},
                                                 {"pad_token": E}),
}


@pytest.mark.parametrize("case", list(PAD_CASES))
def test_pad_token_follows_the_folder_as_transformers(case, tmp_path):
    from transformers import CLIPTokenizer

    from clip_vocab import write_clip_tokenizer_files

    config, specials = PAD_CASES[case]
    write_clip_tokenizer_files(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 77, **config}))
    if specials is None:
        (tmp_path / "special_tokens_map.json").unlink()
    else:
        (tmp_path / "special_tokens_map.json").write_text(json.dumps(specials))
    oracle = CLIPTokenizer.from_pretrained(tmp_path)
    ours = gnr.tokenizer.ClipTokenizer(tmp_path)
    assert ours.pad_id == oracle.pad_token_id
    for p in ["a photo of a cat!", "", "wow!! 4k !!!"]:
        expected = oracle(p, padding="max_length", max_length=77, truncation=True).input_ids
        np.testing.assert_array_equal(ours.encode(p), expected)


def test_pad_token_outside_the_vocabulary(tmp_path):
    from clip_vocab import write_clip_tokenizer_files

    write_clip_tokenizer_files(tmp_path)
    (tmp_path / "special_tokens_map.json").write_text(json.dumps({"pad_token": "<pad>"}))
    with pytest.raises(ValueError, match=r"special_tokens_map\.json: pad_token '<pad>' is not in the vocabulary"):
        gnr.tokenizer.ClipTokenizer(tmp_path)


# ------------------------------------------------------------ benchmarks --

def test_make_random_sd21_tiny(tmp_path, torch_threads):
    """benchmarks/make_random_sd.py --family sd21 writes an SD 2.1-v layout
    (checked at 1/8 width, --tiny) that gnr reads as SD 2.x, v-prediction,
    768 x 768, and runs as diffusers does."""
    import subprocess
    import sys
    from pathlib import Path

    torch = torch_threads
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "make_random_sd.py"
    out = tmp_path / "sd21"
    subprocess.run([sys.executable, str(script), str(out), "--family", "sd21", "--tiny"], check=True,
                   capture_output=True)
    m = gnr.load_model(out)
    info = m.info()
    assert (info["family"], info["prediction_type"], info["native_size"]) == ("SD 2.x", "v_prediction", 768)
    unet_cfg = json.loads((out / "unet" / "config.json").read_text())
    assert unet_cfg["attention_head_dim"] == [5, 10, 20, 20] and unet_cfg["use_linear_projection"]
    text_cfg = json.loads((out / "text_encoder" / "config.json").read_text())
    assert text_cfg["hidden_act"] == "gelu"
    assert m.encode_prompt("a cat").shape == (77, text_cfg["hidden_size"])
    assert m.tokenizer.encode("a cat")[-1] == 0
    from diffusers import UNet2DConditionModel

    ref = UNet2DConditionModel.from_pretrained(out / "unet").eval()
    rng = np.random.default_rng(1)
    z = rng.standard_normal((1, 4, 8, 8), dtype=np.float32)
    c = rng.standard_normal((1, 77, unet_cfg["cross_attention_dim"]), dtype=np.float32)
    with torch.no_grad():
        expected = ref(torch.from_numpy(z), 700, encoder_hidden_states=torch.from_numpy(c)).sample.numpy()
    assert rel_err(m.unet(z, 700, c), expected) < TOL


# ------------------------------------------------------------------ CUDA --

needs_gpu = pytest.mark.skipif(not gnr.cuda_available(), reason="no GPU")


@needs_gpu
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_cuda_against_cpu(setup, dtype):
    """The CUDA backend runs the SD 2.x layers (Linear projections, heads per
    level) and the v -> eps conversion: fp32 within 1e-4 of the CPU, the
    16-bit speed modes within 1e-2 (DECISIONS.md section 1), where upcast
    attention holds by construction (README, "On a GPU")."""
    editor, _, image = setup
    cpu = editor.model
    gpu = gnr.load_model(cpu.path, device="cuda", dtype=dtype)
    tol = 1e-4 if dtype == "float32" else 1e-2
    rng = np.random.default_rng(11)
    z = rng.standard_normal((1, 4, 8, 8), dtype=np.float32)
    c = cpu.encode_prompt(SRC)
    assert rel_err(gpu.encode_prompt(SRC), c) < tol
    assert rel_err(gpu.unet(z, 500, c), cpu.unet(z, 500, c)) < tol
    if dtype == "float32":
        # the conversion inside a job, on the device (16-bit rounding adds
        # up over a chain's passes, so the 1e-2 per-pass bound is not one
        # for a chain)
        cfg = gnr.configs.get("nonstyle", num_steps=4)
        chain = gnr.Editor(cpu.path, device="cuda").invert(image, SRC, config=cfg, progress=False).latents
        assert rel_err(chain, editor.invert(image, SRC, config=cfg, progress=False).latents) < tol
