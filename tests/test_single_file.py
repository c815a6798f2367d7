"""Single-file checkpoints (original latent-diffusion key names).

The oracle is not gnr's mapping: tiny SD 1.x- and SD 2.x-shaped models are
written by diffusers as folders; tests/single_file_writer.py turns each into
one LDM-named .safetensors, and diffusers' own single-file loader
(`from_single_file`, offline, with the folder as config) must read that file
back to the folder's weights exactly. gnr on the file is then held to the
folder: the same tensors under the same names, configs inferred as the folder
has them, the text encoder, UNet and VAE within DECISIONS.md's relative 1e-4
of diffusers/transformers on the folder, and a whole edit bit-identical.
SD 2.x files are held to the same, and a v-prediction edit on an SD 2.x
file to the edit on a folder that says v_prediction. Bad files: a clear
error naming the file and what is wrong, and the process stays usable.
"""
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import gnr
from conftest import rel_err
from gnr.single_file import BUNDLED_TOKENIZER, open_single_file
from sd_shaped_models import IMAGE_SIZE, build
from single_file_writer import folder_tensors, write_single_file

TOL = 1e-4
PROMPTS = ["a photo of a cat", "", "A red CIRCLE on a blue background, 4k!!", "un café à Paris " * 12]


@pytest.fixture(scope="module", params=["sd1", "sd2"])
def family(request):
    return request.param


@pytest.fixture(scope="module")
def folders(tmp_path_factory, torch_threads):
    return {fam: build(tmp_path_factory.mktemp(f"sd_shaped_{fam}"), fam) for fam in ("sd1", "sd2")}


@pytest.fixture(scope="module")
def files(folders, tmp_path_factory):
    d = tmp_path_factory.mktemp("single_files")
    return {fam: write_single_file(folders[fam], d / f"{fam}.safetensors", family=fam) for fam in folders}


@pytest.fixture(scope="module")
def sd1(folders, files):
    """gnr on the SD 1.x file and on its folder."""
    return gnr.load_model(files["sd1"], image_size=IMAGE_SIZE), gnr.load_model(folders["sd1"])


def streamed(single) -> dict:
    out = {}
    for comp, name, array, _ in single.weights():
        assert (comp, name) not in out, f"{comp}.{name} yielded twice"
        out[(comp, name)] = array
    return out


def assert_same_weights(got: dict, folder, component: str, cast=None):
    ref = {k: v for k, v in folder_tensors(folder, component).items() if not k.endswith("position_ids")}
    mine = {name: a for (comp, name), a in got.items() if comp == component}
    assert sorted(mine) == sorted(ref), component
    for name, expected in ref.items():
        if cast is not None:
            expected = expected.astype(cast).astype(np.float32)
        assert mine[name].dtype == np.float32 and mine[name].shape == expected.shape, name
        np.testing.assert_array_equal(mine[name], expected, err_msg=f"{component}.{name}")


# ------------------------------------------------------------------------------------- the oracle --


def test_diffusers_single_file_loader_reads_the_written_file_as_the_folder(family, folders, files):
    """The writer is right: diffusers' from_single_file (offline, the folder as
    config) gives the folder's weights, every tensor equal."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from tiny_models import load_reference

    pipe = StableDiffusionPipeline.from_single_file(
        str(files[family]), config=str(folders[family]), local_files_only=True,
        scheduler=DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                                set_alpha_to_one=False),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    ref = load_reference(folders[family])
    for comp in ("unet", "vae", "text_encoder"):
        got, expected = getattr(pipe, comp).state_dict(), ref[comp].state_dict()
        assert sorted(got) == sorted(expected), comp
        for k, v in expected.items():
            assert torch.equal(got[k], v), f"{comp}.{k}"


# -------------------------------------------------------------------------------- weights, configs --


def test_every_streamed_tensor_is_the_folders_tensor_of_that_name(family, folders, files):
    got = streamed(open_single_file(files[family], image_size=IMAGE_SIZE))
    for comp in ("unet", "vae", "text_encoder"):
        assert_same_weights(got, folders[family], comp)


KEYS = {"unet": ["sample_size", "in_channels", "out_channels", "down_block_types", "up_block_types",
                 "block_out_channels", "layers_per_block", "attention_head_dim", "cross_attention_dim",
                 "use_linear_projection", "upcast_attention", "norm_num_groups"],
        "vae": ["in_channels", "out_channels", "latent_channels", "down_block_types", "up_block_types",
                "block_out_channels", "layers_per_block", "norm_num_groups", "scaling_factor"],
        "text_encoder": ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                         "num_attention_heads", "max_position_embeddings", "hidden_act", "layer_norm_eps"]}


def assert_configs_match(inferred: dict, configs: dict):
    """The inferred configs agree with diffusers' on every key that matters."""
    for comp, keys in KEYS.items():
        folder = configs[comp]
        for key in keys:
            expected = folder.get(key, False if key in ("use_linear_projection", "upcast_attention") else None)
            got = inferred[comp][key]
            expected = list(expected) if isinstance(expected, tuple) else expected
            if isinstance(expected, list) or isinstance(got, list):
                # diffusers writes a per-level value as a list or as one number
                n = len(folder["block_out_channels"])
                expected = expected if isinstance(expected, list) else [expected] * n
                got = got if isinstance(got, list) else [got] * n
            assert got == expected, f"{comp}: {key}"


def test_configs_inferred_as_the_folder_has_them(family, folders, files):
    single = open_single_file(files[family], image_size=IMAGE_SIZE)
    assert single.family == family
    assert_configs_match(single.configs, {comp: json.loads((folders[family] / comp / "config.json").read_text())
                                          for comp in KEYS})
    sched = single.configs["scheduler"]
    assert (sched["num_train_timesteps"], sched["beta_start"], sched["beta_end"], sched["beta_schedule"],
            sched["prediction_type"]) == (1000, 0.00085, 0.012, "scaled_linear", "epsilon")
    assert open_single_file(files[family]).configs["unet"]["sample_size"] == 512 // 8  # the default image size


# Full-size SD 1.5 and SD 2.1 (768-v), built on PyTorch's meta device: shapes without weights.
FULL_SIZE = {
    "sd15": ("sd1", 512, "epsilon", dict(cross_attention_dim=768, sample_size=64),
             dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                  hidden_act="quick_gelu")),
    "sd21": ("sd2", 768, "v_prediction", dict(cross_attention_dim=1024, attention_head_dim=[5, 10, 20, 20],
                                              use_linear_projection=True, upcast_attention=True, sample_size=96),
             dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
                  hidden_act="gelu")),
}


@pytest.mark.parametrize("model", sorted(FULL_SIZE))
def test_full_size_shapes(model):
    """The inference and the key plan on the real shapes of SD 1.5 and SD 2.1:
    configs as diffusers', every tensor planned to the name diffusers' model
    has, and SD 1.5 resolved by gnr's config rules as its diffusers configs are."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from gnr._model_config import resolve_configs
    from gnr.single_file import plan_single_file
    from single_file_writer import clip_to_ldm, openclip_to_ldm, unet_to_ldm, vae_to_ldm

    family, size, prediction, unet_cfg, text_cfg = FULL_SIZE[model]
    with torch.device("meta"):
        models = {"unet": UNet2DConditionModel(**unet_cfg),
                  "vae": AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                                       down_block_types=("DownEncoderBlock2D",) * 4,
                                       up_block_types=("UpDecoderBlock2D",) * 4, sample_size=size),
                  "text_encoder": CLIPTextModel(CLIPTextConfig(vocab_size=49408, max_position_embeddings=77,
                                                               **text_cfg))}
    configs = {comp: dict(m.config) if comp != "text_encoder" else m.config.to_dict() for comp, m in models.items()}
    states = {comp: m.state_dict() for comp, m in models.items()}
    text_to_ldm = clip_to_ldm if family == "sd1" else openclip_to_ldm
    ldm = {**unet_to_ldm(configs["unet"], states["unet"]), **vae_to_ldm(configs["vae"], states["vae"]),
           **text_to_ldm(configs["text_encoder"], states["text_encoder"])}
    single = plan_single_file(f"{model}.safetensors", {k: tuple(v.shape) for k, v in ldm.items()}, image_size=size,
                              prediction_type=prediction)
    assert single.family == family
    assert_configs_match(single.configs, configs)
    for comp in ("unet", "vae", "text_encoder"):
        planned = {}
        for key, (c, names) in single.plan.items():
            if c == comp:
                for name in names:
                    planned[name] = math.prod(ldm[key].shape) // len(names)
        expected = {(k if comp != "text_encoder" or k.startswith("text_model.") else "text_model." + k): v.numel()
                    for k, v in states[comp].items() if not k.endswith("position_ids")}
        assert planned == expected, comp
    configs["scheduler"] = {"prediction_type": prediction}
    assert resolve_configs(single.configs, single.config_files) == \
        resolve_configs(configs, {c: f"{model} {c}" for c in configs})


def test_fp16_and_bf16_files_read_as_their_values_in_float32(folders, tmp_path):
    for dtype, cast in ((torch.float16, np.float16), (torch.bfloat16, None)):
        path = write_single_file(folders["sd1"], tmp_path / f"{dtype}.safetensors", dtype=dtype)
        single = open_single_file(path)
        stored = "float16" if cast is not None else "bfloat16"
        assert single.stored_dtypes() == {"text_encoder": [stored], "unet": [stored], "vae": [stored]}
        got = streamed(single)
        if cast is None:  # bfloat16: compare with torch's own rounding
            ref = {(c, k): torch.from_numpy(v).to(torch.bfloat16).float().numpy()
                   for c in ("unet", "vae", "text_encoder") for k, v in folder_tensors(folders["sd1"], c).items()}
            for key, array in got.items():
                np.testing.assert_array_equal(array, ref[key], err_msg=str(key))
        else:
            for comp in ("unet", "vae", "text_encoder"):
                assert_same_weights(got, folders["sd1"], comp, cast=cast)


def test_ema_weights_non_ema_by_default_as_diffusers(folders, tmp_path_factory, tmp_path):
    other = build(tmp_path_factory.mktemp("sd_shaped_sd1_ema"), "sd1", seed=5)
    path = write_single_file(folders["sd1"], tmp_path / "ema.safetensors", ema=other)
    assert_same_weights(streamed(open_single_file(path)), folders["sd1"], "unet")
    got = streamed(open_single_file(path, ema=True))
    assert_same_weights(got, other, "unet")
    assert_same_weights(got, folders["sd1"], "vae")  # only the UNet has an EMA copy
    with pytest.raises(ValueError, match="no EMA weights"):
        open_single_file(write_single_file(folders["sd1"], tmp_path / "plain.safetensors"), ema=True)


# ------------------------------------------------------------------------- the engine on SD 1.x --


@pytest.fixture
def no_grad(torch_threads):
    with torch_threads.no_grad():
        yield


@pytest.fixture(scope="module")
def reference(folders):
    from tiny_models import load_reference

    return load_reference(folders["sd1"])


def test_text_encoder_matches_transformers_on_the_folder(sd1, reference, no_grad):
    ours, folder_model = sd1
    for p in PROMPTS:
        ids = reference["tokenizer"](p, padding="max_length", max_length=77, truncation=True,
                                     return_tensors="pt").input_ids
        expected = reference["text_encoder"](ids)[0][0].numpy()
        got = ours.encode_prompt(p)
        assert rel_err(got, expected) < TOL, p
        np.testing.assert_array_equal(got, folder_model.encode_prompt(p))


@pytest.mark.parametrize("t", [1, 261, 999])
def test_unet_matches_diffusers_on_the_folder(sd1, reference, no_grad, t):
    ours, folder_model = sd1
    rng = np.random.default_rng(t)
    z = rng.standard_normal((1, 4, 16, 16), dtype=np.float32)
    c = rng.standard_normal((1, 77, 64), dtype=np.float32)
    expected = reference["unet"](torch.from_numpy(z), t, encoder_hidden_states=torch.from_numpy(c)).sample.numpy()
    got = ours.unet(z, t, c)
    assert rel_err(got, expected) < TOL
    np.testing.assert_array_equal(got, folder_model.unet(z, t, c))


def test_vae_matches_diffusers_on_the_folder(sd1, reference, no_grad):
    ours, folder_model = sd1
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (64, 128, 3), dtype=np.uint8)
    x = torch.from_numpy(image).float() / 127.5 - 1
    vae = reference["vae"]
    expected = (vae.encode(x.permute(2, 0, 1)[None]).latent_dist.mean * vae.config.scaling_factor).numpy()
    got = ours.encode_image(image)
    assert rel_err(got, expected) < TOL
    np.testing.assert_array_equal(got, folder_model.encode_image(image))
    z = rng.standard_normal((1, 4, 8, 8), dtype=np.float32)
    raw = ours._c.vae_decode(z)
    assert rel_err(raw, vae.decode(torch.from_numpy(z) / vae.config.scaling_factor).sample.numpy()) < TOL
    np.testing.assert_array_equal(ours.decode_latent(z), folder_model.decode_latent(z))


def small_config(n: int = 8) -> dict:
    """NONSTYLE at n steps (a whole edit, quickly)."""
    cfg = gnr.configs.get("nonstyle")
    cfg["num_steps"] = n
    for g in cfg["guiders"]:
        if isinstance(g["g_scale"], list):
            g["g_scale"] = g["g_scale"][:n]
    return cfg


def test_whole_edit_on_the_file_is_the_edit_on_the_folder(folders, files):
    cfg = small_config()
    image = np.random.default_rng(0).integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    on_file = gnr.Editor(files["sd1"], image_size=IMAGE_SIZE)
    on_folder = gnr.Editor(folders["sd1"])
    assert on_file.model.native_size == on_folder.model.native_size == IMAGE_SIZE
    a, za = on_file.edit(image, "a red circle", "a green circle", config=cfg, progress=False, return_latent=True)
    b, zb = on_folder.edit(image, "a red circle", "a green circle", config=cfg, progress=False, return_latent=True)
    np.testing.assert_array_equal(za, zb)
    np.testing.assert_array_equal(a, b)


def test_vae_given_as_a_vae_file(folders, files, tmp_path):
    """A VAE file with the original names, without the first_stage_model.
    prefix (as SD's fine-tuned VAEs are shared) or with it (a whole checkpoint)."""
    from safetensors.torch import load_file, save_file

    prefix = "first_stage_model."
    bare = {k[len(prefix):]: v for k, v in load_file(str(files["sd1"])).items() if k.startswith(prefix)}
    bare["model_ema.decay"] = torch.tensor(0.9999)  # what such files may carry beside the weights
    save_file(bare, str(tmp_path / "vae.safetensors"))
    unet_only = write_single_file(folders["sd1"], tmp_path / "unet_only.safetensors", parts=("unet",))
    full = gnr.load_model(folders["sd1"])
    image = np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    z = np.random.default_rng(3).standard_normal((1, 4, 8, 8), dtype=np.float32)
    for vae in (tmp_path / "vae.safetensors", files["sd1"]):
        model = gnr.load_model(unet_only, image_size=IMAGE_SIZE, vae=vae, text_encoder=folders["sd1"] / "text_encoder")
        np.testing.assert_array_equal(model.encode_image(image), full.encode_image(image))
        np.testing.assert_array_equal(model.decode_latent(z), full.decode_latent(z))
    save_file({"encoder.conv_in.weight": torch.ones(3, 3)}, str(tmp_path / "not_a_vae.safetensors"))
    with pytest.raises(ValueError, match="not_a_vae.safetensors"):
        gnr.load_model(unet_only, vae=tmp_path / "not_a_vae.safetensors", text_encoder=folders["sd1"] / "text_encoder")
    with pytest.raises(ValueError, match="pickle"):
        open_single_file(unet_only, vae=tmp_path / "vae.ckpt")
    _still_usable(files)


def test_weights_stream_one_tensor_at_a_time(folders, tmp_path):
    """Host memory while streaming the file is bounded by a few of its largest
    tensors (and the parsed header), not by the file. The text encoder comes
    from a folder so that no single tensor dominates the file."""
    import math
    import tracemalloc

    from gnr.files import read_safetensors_header

    path = write_single_file(folders["sd1"], tmp_path / "unet_vae.safetensors", parts=("unet", "vae"))
    single = open_single_file(path, text_encoder=folders["sd1"] / "text_encoder")
    sizes = [math.prod(shape) * 4 for _, shape in read_safetensors_header(path).values()]
    header = path.stat().st_size - sum(sizes)
    assert sum(sizes) > 4 * (3 * max(sizes) + 8 * header)  # the bound below means something
    tracemalloc.start()
    try:
        count = 0
        for comp, _, _, _ in single.weights():
            if comp == "text_encoder":  # the file's tensors come first
                break
            count += 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count > 100
    assert peak < 3 * max(sizes) + 8 * header, (peak, max(sizes), header)


# ------------------------------------------------------------------------- the engine on SD 2.x --


@pytest.fixture(scope="module")
def sd2_reference(folders):
    """diffusers/transformers on the SD 2.x folder, with the tokenizer gnr
    gives an SD 2.x file: the bundled CLIP vocabulary padded with "!"."""
    from transformers import CLIPTokenizer

    from tiny_models import load_reference

    ref = load_reference(folders["sd2"])
    ref["tokenizer"] = CLIPTokenizer.from_pretrained(BUNDLED_TOKENIZER, pad_token="!")
    return ref


def test_sd2_file_matches_diffusers_on_the_folder(files, sd2_reference, no_grad):
    ours = gnr.load_model(files["sd2"], image_size=IMAGE_SIZE)
    assert (ours.family, ours.prediction_type, ours.source_format) == ("SD 2.x", "epsilon", "single_file")
    ref = sd2_reference
    for p in PROMPTS:
        ids = ref["tokenizer"](p, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        assert ours.tokenizer.encode(p).tolist() == ids[0].tolist(), p
        assert rel_err(ours.encode_prompt(p), ref["text_encoder"](ids)[0][0].numpy()) < TOL, p
    rng = np.random.default_rng(11)
    for t in (1, 500, 999):
        z = rng.standard_normal((1, 4, 16, 16), dtype=np.float32)
        c = rng.standard_normal((1, 77, 64), dtype=np.float32)
        expected = ref["unet"](torch.from_numpy(z), t, encoder_hidden_states=torch.from_numpy(c)).sample.numpy()
        assert rel_err(ours.unet(z, t, c), expected) < TOL, t
    image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    x = torch.from_numpy(image).float() / 127.5 - 1
    vae = ref["vae"]
    expected = (vae.encode(x.permute(2, 0, 1)[None]).latent_dist.mean * vae.config.scaling_factor).numpy()
    assert rel_err(ours.encode_image(image), expected) < TOL
    z = rng.standard_normal((1, 4, 8, 8), dtype=np.float32)
    expected = vae.decode(torch.from_numpy(z) / vae.config.scaling_factor).sample.numpy()
    assert rel_err(ours._c.vae_decode(z), expected) < TOL


def test_sd2_v_prediction_edit_on_the_file_is_the_edit_on_the_folder(folders, files, tmp_path):
    """An SD 2.x 768-v-style model: the folder says v_prediction (scheduler),
    upcast attention (UNet) and pads with "!" (tokenizer), as SD 2.1's does;
    the file says none of it and takes them from prediction_type."""
    folder = tmp_path / "sd2_v"
    shutil.copytree(folders["sd2"], folder)
    (folder / "scheduler").mkdir()
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps({"prediction_type": "v_prediction"}))
    unet = json.loads((folder / "unet" / "config.json").read_text())
    (folder / "unet" / "config.json").write_text(json.dumps(dict(unet, upcast_attention=True)))
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        cfg = json.loads((folder / "tokenizer" / name).read_text())
        (folder / "tokenizer" / name).write_text(json.dumps(dict(cfg, pad_token="!")))
    cfg = small_config()
    image = np.random.default_rng(0).integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    on_file = gnr.Editor(files["sd2"], image_size=IMAGE_SIZE, prediction_type="v_prediction")
    on_folder = gnr.Editor(folder)
    assert on_file.model.prediction_type == on_folder.model.prediction_type == "v_prediction"
    a, za = on_file.edit(image, "a red circle", "a green circle", config=cfg, progress=False, return_latent=True)
    b, zb = on_folder.edit(image, "a red circle", "a green circle", config=cfg, progress=False, return_latent=True)
    np.testing.assert_array_equal(za, zb)
    np.testing.assert_array_equal(a, b)
    # the same file read as a noise-predicting model edits differently
    eps = gnr.Editor(files["sd2"], image_size=IMAGE_SIZE)
    _, ze = eps.edit(image, "a red circle", "a green circle", config=cfg, progress=False, return_latent=True)
    assert rel_err(ze, za) > 1e-2


def test_vae_and_text_encoder_given_as_folders(folders, tmp_path):
    path = write_single_file(folders["sd1"], tmp_path / "unet_only.safetensors", parts=("unet",))
    model = gnr.load_model(path, image_size=IMAGE_SIZE, vae=folders["sd1"] / "vae",
                           text_encoder=folders["sd1"] / "text_encoder")
    full = gnr.load_model(folders["sd1"])
    np.testing.assert_array_equal(model.encode_prompt("a cat"), full.encode_prompt("a cat"))
    image = np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    np.testing.assert_array_equal(model.encode_image(image), full.encode_image(image))


def test_clip_text_encoder_without_the_text_model_level(folders, files, tmp_path):
    """Older SD 1.x files keep CLIPTextTransformer's keys directly under
    cond_stage_model.transformer. (no "text_model.")."""
    from safetensors.torch import load_file, save_file

    prefix = "cond_stage_model.transformer."
    tensors = {(prefix + k[len(prefix + "text_model."):] if k.startswith(prefix + "text_model.") else k): v
               for k, v in load_file(str(files["sd1"])).items()}
    assert not any(k.startswith(prefix + "text_model.") for k in tensors)
    path = tmp_path / "old_clip.safetensors"
    save_file(tensors, str(path))
    got = streamed(open_single_file(path))
    assert_same_weights(got, folders["sd1"], "text_encoder")


def test_folders_given_replace_the_files_components(folders, files):
    """SD 2.x at the weight level: the folder's tensors stream in place of the file's."""
    single = open_single_file(files["sd2"], vae=folders["sd2"] / "vae", text_encoder=folders["sd2"] / "text_encoder")
    got, origins = {}, {}
    for comp, name, array, origin in single.weights():
        if comp == "text_encoder" and not name.startswith("text_model."):
            name = "text_model." + name  # as gnr.Model names a transformers 5 folder's tensors
        got[(comp, name)] = array
        origins.setdefault(comp, set()).add(origin)
    for comp in ("unet", "vae", "text_encoder"):
        assert_same_weights(got, folders["sd2"], comp)
    assert origins["vae"] == {str(folders["sd2"] / "vae")}
    assert single.stored_dtypes() == {"text_encoder": ["float32"], "unet": ["float32"], "vae": ["float32"]}
    assert origins["text_encoder"] == {str(folders["sd2"] / "text_encoder")}
    assert single.configs["vae"] == json.loads((folders["sd2"] / "vae" / "config.json").read_text())


# -------------------------------------------------------------------------------------- tokenizer --


def test_bundled_tokenizers_match_transformers(folders, files):
    """SD 1.x pads with the end token, SD 2.x's OpenCLIP with "!" (id 0):
    transformers' CLIPTokenizer on the same files with the same pad token."""
    from transformers import CLIPTokenizer

    for fam, pad in (("sd1", "<|endoftext|>"), ("sd2", "!")):
        single = open_single_file(files[fam])
        assert single.tokenizer_dir == BUNDLED_TOKENIZER
        ours = gnr.tokenizer.ClipTokenizer(single.tokenizer_dir, pad_token=single.pad_token)
        ref = CLIPTokenizer.from_pretrained(BUNDLED_TOKENIZER, pad_token=pad)
        for p in PROMPTS:
            expected = ref(p, padding="max_length", max_length=77, truncation=True).input_ids
            assert ours.encode(p).tolist() == expected, (fam, p)
    assert ours.encode("a cat")[-1] == 0  # "!" really pads SD 2.x prompts


def test_a_pad_token_outside_the_vocabulary_is_refused():
    with pytest.raises(ValueError, match=r"pad_token '<pad>' is not in the vocabulary"):
        gnr.tokenizer.ClipTokenizer(BUNDLED_TOKENIZER, pad_token="<pad>")
    assert gnr.tokenizer.ClipTokenizer(BUNDLED_TOKENIZER).encode("a cat")[-1] == 49407  # the end token


def test_bundled_vocabulary_is_the_clip_vocabulary():
    from clip_vocab import clip_vocab_and_merges

    vocab, merges = clip_vocab_and_merges()
    assert json.loads((BUNDLED_TOKENIZER / "vocab.json").read_text(encoding="utf-8")) == vocab
    lines = (BUNDLED_TOKENIZER / "merges.txt").read_text(encoding="utf-8").split("\n")
    assert [tuple(x.split()) for x in lines[1:] if x] == merges


def test_a_tokenizer_folder_given_replaces_the_bundled_one(files, folders, tmp_path):
    """Its own pad token when it names one (the test folders: the end token), else the family's."""
    single = open_single_file(files["sd2"], tokenizer=folders["sd2"] / "tokenizer")
    assert single.tokenizer_dir == folders["sd2"] / "tokenizer" and single.pad_token is None
    assert gnr.tokenizer.ClipTokenizer(single.tokenizer_dir, pad_token=single.pad_token).pad_token == "<|endoftext|>"
    bare = tmp_path / "tokenizer"
    bare.mkdir()
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(folders["sd2"] / "tokenizer" / name, bare / name)
    assert open_single_file(files["sd2"], tokenizer=bare).pad_token == "!"
    assert open_single_file(files["sd1"], tokenizer=bare).pad_token is None  # the end token


# ------------------------------------------------------------------------------------- bad input --


def _still_usable(files):
    model = gnr.load_model(files["sd1"], image_size=IMAGE_SIZE)
    assert np.isfinite(model.encode_prompt("still here")).all()


def _write(tmp_path, name, tensors):
    from safetensors.torch import save_file

    path = tmp_path / name
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


def _expect(path, *needles, exc=ValueError, **kw):
    with pytest.raises(exc) as info:
        gnr.load_model(path, **kw)
    msg = str(info.value)
    for needle in (str(path), *needles):
        assert needle in msg, (needle, msg)
    return msg


def test_keys_of_no_known_family(tmp_path, files):
    path = _write(tmp_path, "other.safetensors", {"transformer_blocks.0.attn.weight": torch.ones(4, 4),
                                                  "pos_embed.proj.weight": torch.ones(4)})
    _expect(path, "no tensor has the key names of a Stable Diffusion", "model.diffusion_model.")
    _still_usable(files)


def test_a_stable_diffusion_xl_file_is_named_as_such(tmp_path, files):
    path = _write(tmp_path, "xl.safetensors", {"model.diffusion_model.label_emb.0.0.weight": torch.ones(4, 4),
                                               "conditioner.embedders.0.transformer.text_model.x": torch.ones(4)})
    _expect(path, "Stable Diffusion XL")
    _still_usable(files)


def test_a_truncated_file(tmp_path, files):
    path = tmp_path / "cut.safetensors"
    data = files["sd1"].read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _expect(path, "truncated")
    _still_usable(files)


def test_the_unet_missing(tmp_path, files, folders):
    path = write_single_file(folders["sd1"], tmp_path / "no_unet.safetensors", parts=("vae", "text_encoder"))
    _expect(path, "the UNet is missing", "model.diffusion_model.")
    _still_usable(files)


def test_vae_or_text_encoder_missing_and_not_given(tmp_path, files, folders):
    path = write_single_file(folders["sd1"], tmp_path / "unet_only.safetensors", parts=("unet",))
    _expect(path, "the VAE is missing", "vae=")
    _expect(path, "the text encoder is missing", "text_encoder=", vae=folders["sd1"] / "vae")
    _expect(path, "the VAE is missing", "vae=", text_encoder=folders["sd1"] / "text_encoder")
    _still_usable(files)


def test_mismatched_shapes(tmp_path, files, folders):
    key = "model.diffusion_model.input_blocks.1.0.in_layers.0.weight"  # a GroupNorm of 32 channels
    path = write_single_file(folders["sd1"], tmp_path / "bad_shape.safetensors", extra={key: torch.ones(31)})
    _expect(path, key, "31")
    key = "first_stage_model.decoder.up.0.block.0.conv1.weight"
    path = write_single_file(folders["sd1"], tmp_path / "bad_vae.safetensors", extra={key: torch.ones(32, 32, 1, 1)})
    _expect(path, key)
    _still_usable(files)


def test_a_tensor_outside_the_inferred_layout(tmp_path, files, folders):
    key = "model.diffusion_model.input_blocks.1.5.weight"
    path = write_single_file(folders["sd1"], tmp_path / "extra.safetensors", extra={key: torch.ones(3)})
    _expect(path, key, "fits no part")
    _still_usable(files)


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".pth", ".bin"])
def test_pickle_checkpoints_are_refused_with_how_to_convert(tmp_path, files, suffix):
    path = tmp_path / f"model{suffix}"
    path.write_bytes(b"\x80\x04 not to be unpickled")
    _expect(path, "pickle", "safetensors", "save_file")
    _still_usable(files)


def test_options_are_checked(files, folders):
    _expect(files["sd1"], "prediction_type", "'epsilon'", prediction_type="x0")
    _expect(files["sd1"], "image_size", "multiple", image_size=100)
    _expect(files["sd1"], "variant", variant="fp16")
    with pytest.raises(ValueError, match="single-file checkpoints only"):
        gnr.load_model(folders["sd1"], image_size=512)
    with pytest.raises(FileNotFoundError, match="config.json"):
        gnr.load_model(files["sd1"], vae=folders["sd1"])  # a model folder, not its vae/ folder
    _still_usable(files)


def test_sizes_and_the_command_line_read_the_file(files, tmp_path):
    from gnr.sizes import model_sizes

    assert model_sizes(files["sd1"]) == (512, 32)  # the default image size; VAE factor 8 x 2 downsamplings
    from PIL import Image

    src = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (80, 64, 3), dtype=np.uint8)).save(src)
    out = tmp_path / "out.png"
    env = dict(os.environ, PYTHONPATH=str(Path(gnr.__file__).resolve().parent.parent))
    r = subprocess.run([sys.executable, "-m", "gnr", "edit", "--model", str(files["sd1"]), "--image", str(src),
                        "--source", "a cat", "--target", "a dog", "--size", "64", "--steps", "3", "--quiet",
                        "-o", str(out)], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    assert np.asarray(Image.open(out)).shape == (64, 64, 3)
