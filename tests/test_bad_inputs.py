"""Bad input never crashes the interpreter: each case raises a Python
exception naming what is wrong and what is allowed, and the model stays usable."""
import json
import re
import shutil
from pathlib import Path

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
    cfg["only_cross_attention"] = True
    f.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="only_cross_attention = True is not supported"):
        gnr.load_model(d)


@pytest.mark.parametrize("value", ["sample", None, 1])
def test_unsupported_prediction_type(tiny_a_dir, tmp_path, value):
    """The scheduler config's prediction_type: "epsilon" or "v_prediction"."""
    d = copy_model(tiny_a_dir, tmp_path / "m")
    f = d / "scheduler" / "scheduler_config.json"
    f.parent.mkdir()
    f.write_text(json.dumps({"_class_name": "DDIMScheduler", "prediction_type": value}))
    with pytest.raises(ValueError) as e:
        gnr.load_model(d)
    message = str(e.value)
    assert message.startswith(f"{f}: prediction_type = {value!r}") and "'v_prediction'" in message, message
    with pytest.raises(ValueError, match=re.escape(message)):
        gnr.sizes.model_sizes(d)


def test_unsupported_block_type(tiny_a_dir, tmp_path):
    d = copy_model(tiny_a_dir, tmp_path / "m")
    f = d / "unet" / "config.json"
    cfg = json.loads(f.read_text())
    cfg["down_block_types"][0] = "SimpleCrossAttnDownBlock2D"
    f.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="SimpleCrossAttnDownBlock2D"):
        gnr.load_model(d)


# --------------------------------------------------------- model configs --
# Every rule the engine relies on, each broken alone in a copy of tiny model
# "a" (UNet levels (32, 64), 8 groups, 2 heads, cross-attention at both
# levels; VAE levels (8, 16, 16, 16), 4 groups; text encoder 32 wide, 4
# heads). The error must come from the Python check: it names the config
# file by its path (the engine's own messages cannot), the key and what is
# allowed.

NINE = 9  # one level more than the engine's GNR_MAX_BLOCKS (csrc/gnr.h)
CONFIG_RULES = {
    # UNet: levels
    "unet no levels": ("unet", {"block_out_channels": [], "down_block_types": [], "up_block_types": []},
                       "block_out_channels", "1 to 8"),
    "unet too many levels": ("unet", {"block_out_channels": [32] * NINE,
                                      "down_block_types": ["CrossAttnDownBlock2D"] * NINE,
                                      "up_block_types": ["CrossAttnUpBlock2D"] * NINE},
                             "block_out_channels", "1 to 8"),
    "unet channels not a list": ("unet", {"block_out_channels": 32}, "block_out_channels", "list"),
    "unet zero channels": ("unet", {"block_out_channels": [0, 64]}, r"block_out_channels\[0\]", "1 to"),
    "unet channels not integers": ("unet", {"block_out_channels": [32, "64"]}, r"block_out_channels\[1\]", "integer"),
    "unet channels not a multiple of groups": ("unet", {"block_out_channels": [32, 60]},
                                               r"block_out_channels\[1\] = 60", "multiple of norm_num_groups = 8"),
    "unet channels too large for time embedding": ("unet", {"block_out_channels": [1288, 1288]},
                                                   r"block_out_channels\[0\] = 1288", "at most 1280"),
    "unet channels beyond a C int": ("unet", {"block_out_channels": [32, 2 ** 40]}, r"block_out_channels\[1\]",
                                     "1 to 1000000000"),
    "unet zero groups": ("unet", {"norm_num_groups": 0}, "norm_num_groups", "1 to"),
    "unet asymmetric attention": ("unet", {"down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
                                           "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"]},
                                  r"up_block_types\[0\]", "mirror"),
    "unet block types not a list": ("unet", {"up_block_types": "CrossAttnUpBlock2D"}, "up_block_types", "list"),
    "unet block types miscounted": ("unet", {"down_block_types": ["CrossAttnDownBlock2D"]},
                                    "down_block_types has 1 entries", "block_out_channels has 2"),
    "unet unknown block type": ("unet", {"up_block_types": ["CrossAttnUpBlock2D", "AttnUpBlock2D"]},
                                "up_block_types entry 'AttnUpBlock2D'", "CrossAttnUpBlock2D"),
    "unet no resnets": ("unet", {"layers_per_block": 0}, "layers_per_block", "1 to 3"),
    "unet too many resnets": ("unet", {"layers_per_block": 4}, "layers_per_block", "1 to 3"),
    "unet resnets differ per level": ("unet", {"layers_per_block": [1, 2]}, "layers_per_block", "equal"),
    "unet heads do not divide": ("unet", {"attention_head_dim": 3}, "attention_head_dim", "divisor"),
    "unet heads do not divide, new key": ("unet", {"num_attention_heads": [2, 5]}, "num_attention_heads = 5",
                                          "divisor"),
    "unet zero heads": ("unet", {"attention_head_dim": [2, 0]}, "attention_head_dim", "positive integer"),
    "unet too many transformer layers": ("unet", {"transformer_layers_per_block": 5},
                                         "transformer_layers_per_block", "1 to 4"),
    "unet zero transformer layers": ("unet", {"transformer_layers_per_block": [1, 0]},
                                     "transformer_layers_per_block", "positive integer"),
    "unet in_channels zero": ("unet", {"in_channels": 0}, "in_channels", "1 to"),
    "unet in_channels a string": ("unet", {"in_channels": "4"}, "in_channels", "integer"),
    "unet in_channels beyond the binding": ("unet", {"in_channels": 2 ** 40}, "in_channels", "1 to 1000000000"),
    "unet out_channels a float": ("unet", {"out_channels": 4.0}, "out_channels", "integer"),
    "unet cross_attention_dim zero": ("unet", {"cross_attention_dim": 0}, "cross_attention_dim", "1 to"),
    "unet norm_eps a string": ("unet", {"norm_eps": "1e-5"}, "norm_eps", "finite number > 0"),
    "unet norm_eps negative": ("unet", {"norm_eps": -1e-5}, "norm_eps", "finite number > 0"),
    "unet freq_shift not finite": ("unet", {"freq_shift": float("nan")}, "freq_shift", "finite number"),
    "unet flip_sin_to_cos a string": ("unet", {"flip_sin_to_cos": "false"}, "flip_sin_to_cos", "true or false"),
    "unet use_linear_projection a string": ("unet", {"use_linear_projection": "yes"}, "use_linear_projection",
                                            "true or false"),
    "unet upcast_attention a number": ("unet", {"upcast_attention": 2}, "upcast_attention", "true or false"),
    # VAE
    "vae no levels": ("vae", {"block_out_channels": [], "down_block_types": [], "up_block_types": []},
                      "block_out_channels", "1 to 8"),
    "vae too many levels": ("vae", {"block_out_channels": [8] * NINE, "down_block_types": ["DownEncoderBlock2D"] * NINE,
                                    "up_block_types": ["UpDecoderBlock2D"] * NINE}, "block_out_channels", "1 to 8"),
    "vae channels not a multiple of groups": ("vae", {"block_out_channels": [8, 18, 16, 16]},
                                              r"block_out_channels\[1\] = 18", "multiple of norm_num_groups = 4"),
    "vae negative channels": ("vae", {"block_out_channels": [8, -16, 16, 16]}, r"block_out_channels\[1\]", "1 to"),
    "vae unknown block type": ("vae", {"down_block_types": ["DownBlock2D"] * 4}, "down_block_types",
                               "DownEncoderBlock2D"),
    "vae zero groups": ("vae", {"norm_num_groups": 0}, "norm_num_groups", "1 to"),
    "vae no resnets": ("vae", {"layers_per_block": 0}, "layers_per_block", "1 to 3"),
    "vae too many resnets": ("vae", {"layers_per_block": 4}, "layers_per_block", "1 to 3"),
    "vae in_channels zero": ("vae", {"in_channels": 0}, "in_channels", "1 to"),
    "vae scaling_factor zero": ("vae", {"scaling_factor": 0}, "scaling_factor", "finite number > 0"),
    "vae use_quant_conv a string": ("vae", {"use_quant_conv": "yes"}, "use_quant_conv", "true or false"),
    "vae latent_channels differ from unet in_channels": ("vae", {"latent_channels": 3},
                                                         "latent_channels = 3 differs from in_channels = 4",
                                                         r"unet.config\.json"),
    # text encoder
    "text unknown activation": ("text_encoder", {"hidden_act": "relu"}, "hidden_act", "quick_gelu"),
    "text no layers": ("text_encoder", {"num_hidden_layers": 0}, "num_hidden_layers", "1 to 48"),
    "text too many layers": ("text_encoder", {"num_hidden_layers": 49}, "num_hidden_layers", "1 to 48"),
    "text heads do not divide": ("text_encoder", {"num_attention_heads": 3}, "num_attention_heads = 3", "divisor"),
    "text zero heads": ("text_encoder", {"num_attention_heads": 0}, "num_attention_heads", "1 to"),
    "text vocab_size zero": ("text_encoder", {"vocab_size": 0}, "vocab_size", "1 to"),
    "text one position": ("text_encoder", {"max_position_embeddings": 1}, "max_position_embeddings", "2 to"),
    "text layer_norm_eps a list": ("text_encoder", {"layer_norm_eps": [1e-5]}, "layer_norm_eps", "finite number"),
    "text hidden_size differs from unet cross_attention_dim": ("text_encoder", {"hidden_size": 48},
                                                               "hidden_size = 48 differs from cross_attention_dim = 32",
                                                               r"unet.config\.json"),
}


@pytest.mark.parametrize("case", list(CONFIG_RULES))
def test_bad_model_config_is_named_by_the_python_check(case, tiny_a_dir, tmp_path):
    component, changes, key, allowed = CONFIG_RULES[case]
    d = copy_model(tiny_a_dir, tmp_path / "m")
    f = d / component / "config.json"
    cfg = json.loads(f.read_text())
    cfg.update(changes)
    f.write_text(json.dumps(cfg))
    with pytest.raises(ValueError) as e:
        gnr.load_model(d)
    message = str(e.value)
    assert message.startswith(f"{f}: "), message  # the file, by its path: only the Python check knows it
    assert re.search(key, message) and re.search(allowed, message), message
    # The same check answers before any weight is read (gnr.sizes, the CLI).
    with pytest.raises(ValueError, match=re.escape(message)):
        gnr.sizes.model_sizes(d)


def test_engine_limits_match_the_c_constants():
    """The Python limits are the engine's: one number each, read from the C
    sources here so that changing one side without the other fails."""
    from gnr import _model_config as mc

    csrc = Path(__file__).resolve().parents[1] / "csrc"

    def define(header, name):
        m = re.search(rf"^#define {name} (\d+)", (csrc / header).read_text(), re.M)
        assert m, f"{name} is no longer defined in csrc/{header}"
        return int(m.group(1))

    assert mc.MAX_BLOCKS == define("gnr.h", "GNR_MAX_BLOCKS")
    assert mc.MAX_UNET_LAYERS_PER_BLOCK == define("models/unet.h", "GNR_MAX_LAYERS") - 1
    assert mc.MAX_VAE_LAYERS_PER_BLOCK == define("models/vae.h", "GNR_VAE_MAX_LAYERS") - 1
    assert mc.MAX_TRANSFORMER_LAYERS == define("models/layers.h", "GNR_MAX_TBLOCKS")
    assert mc.MAX_TEXT_LAYERS == define("models/clip_text.h", "GNR_MAX_TEXT_LAYERS")


def test_largest_supported_config_values_load(tiny_a_dir, tmp_path):
    """The limits are not off by one: every value at its bound passes the
    Python check, and the engine makes a model of that config."""
    d = copy_model(tiny_a_dir, tmp_path / "m")

    def change(component, **changes):
        f = d / component / "config.json"
        f.write_text(json.dumps(dict(json.loads(f.read_text()), **changes)))

    change("unet", layers_per_block=3, transformer_layers_per_block=4)
    change("vae", layers_per_block=3, block_out_channels=[8] * 8, down_block_types=["DownEncoderBlock2D"] * 8,
           up_block_types=["UpDecoderBlock2D"] * 8)
    change("text_encoder", num_hidden_layers=48)
    _, resolved = gnr.model.read_model_configs(d)
    assert gnr._C.Model(resolved, "cpu").weight_specs()
    # The widest first level, checked in Python only: the engine would
    # reserve gigabytes of weights for it.
    change("unet", block_out_channels=[1280, 1280], norm_num_groups=32)
    assert gnr.model.read_model_configs(d)[1]["unet"]["block_out_channels"][0] == 1280


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
    (np.zeros((1, 3, 8, 8), np.float32), ValueError, r"latent must have shape \(\*, 4, \*, \*\)"),
    (np.zeros((0, 4, 8, 8), np.float32), ValueError, "at least one latent"),
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


def test_contexts_of_another_batch(model):
    with pytest.raises(ValueError, match=r"one per latent, \(3, L, 32\); got \(2, 77, 32\)"):
        model.unet(np.zeros((3, 4, 8, 8), np.float32), 10, np.zeros((2, 77, 32), np.float32))
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
