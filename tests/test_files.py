"""Reading model folders and safetensors files: good files load exactly, bad ones
fail with the right exception and a message naming the file (and tensor)."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from gnr.files import (
    check_model_dir,
    find_weights_file,
    load_component,
    load_safetensors,
    read_json,
)

# --------------------------------------------------------------------------- helpers


def write_raw(path: Path, header, data: bytes = b"", header_len: int | None = None) -> Path:
    """A safetensors-shaped file with whatever header (dict or raw bytes) and length field."""
    hb = header if isinstance(header, bytes) else json.dumps(header).encode("utf-8")
    n = len(hb) if header_len is None else header_len
    path.write_bytes(struct.pack("<Q", n) + hb + data)
    return path


def entry(dtype="F32", shape=(2,), offsets=(0, 8)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


def rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def make_model(root: Path, components=("unet", "vae", "text_encoder"), seed=0) -> dict:
    """A tiny diffusers-layout folder; returns {component: weights written}."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    (root / "tokenizer").mkdir(exist_ok=True)
    written = {}
    for i, c in enumerate(components):
        d = root / c
        d.mkdir(exist_ok=True)
        (d / "config.json").write_text(json.dumps({"component": c, "channels": 4}))
        w = {f"{c}.weight": rand(3, 4, seed=seed + i), f"{c}.bias": rand(3, seed=seed + 10 + i)}
        name = "model.safetensors" if c == "text_encoder" else "diffusion_pytorch_model.safetensors"
        save_file(w, str(d / name))
        written[c] = w
    return written


def assert_names(exc_info, *parts):
    msg = str(exc_info.value)
    for p in parts:
        assert str(p) in msg, f"{p!r} not in message {msg!r}"


# --------------------------------------------------------------------------- read_json


def test_read_json_ok(tmp_path):
    p = tmp_path / "c.json"
    p.write_text('{"a": 1, "b": [1, 2]}')
    assert read_json(p) == {"a": 1, "b": [1, 2]}


def test_read_json_missing(tmp_path):
    p = tmp_path / "missing.json"
    with pytest.raises(FileNotFoundError) as e:
        read_json(p)
    assert_names(e, p)


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '"str"', "", b"\xff\xfe{}"])
def test_read_json_invalid(tmp_path, text):
    p = tmp_path / "bad.json"
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ValueError) as e:
        read_json(p)
    assert_names(e, p)


# --------------------------------------------------------------------------- model folder


def test_check_model_dir_ok(tmp_path):
    make_model(tmp_path / "m")
    assert check_model_dir(tmp_path / "m") == {"_class_name": "StableDiffusionPipeline"}


def test_missing_model_folder(tmp_path):
    p = tmp_path / "no_model"
    with pytest.raises(FileNotFoundError) as e:
        check_model_dir(p)
    assert_names(e, p)
    with pytest.raises(FileNotFoundError) as e:
        load_component(p, "unet")
    assert_names(e, p)


def test_missing_model_index(tmp_path):
    make_model(tmp_path / "m")
    (tmp_path / "m" / "model_index.json").unlink()
    with pytest.raises(FileNotFoundError) as e:
        check_model_dir(tmp_path / "m")
    assert_names(e, tmp_path / "m" / "model_index.json")


def test_invalid_model_index(tmp_path):
    make_model(tmp_path / "m")
    (tmp_path / "m" / "model_index.json").write_text("[]")
    with pytest.raises(ValueError) as e:
        check_model_dir(tmp_path / "m")
    assert_names(e, tmp_path / "m" / "model_index.json")


@pytest.mark.parametrize("component", ["unet", "vae", "text_encoder", "tokenizer"])
def test_missing_component_folder(tmp_path, component):
    make_model(tmp_path / "m")
    folder = tmp_path / "m" / component
    for f in folder.iterdir():
        f.unlink()
    folder.rmdir()
    with pytest.raises(FileNotFoundError) as e:
        check_model_dir(tmp_path / "m")
    assert_names(e, folder)
    if component != "tokenizer":
        with pytest.raises(FileNotFoundError) as e:
            load_component(tmp_path / "m", component)
        assert_names(e, folder)


@pytest.mark.parametrize("component", ["unet", "vae", "text_encoder"])
def test_missing_component_config(tmp_path, component):
    make_model(tmp_path / "m")
    config = tmp_path / "m" / component / "config.json"
    config.unlink()
    with pytest.raises(FileNotFoundError) as e:
        check_model_dir(tmp_path / "m")
    assert_names(e, config)
    with pytest.raises(FileNotFoundError) as e:
        load_component(tmp_path / "m", component)
    assert_names(e, config)


@pytest.mark.parametrize("component", ["unet", "vae", "text_encoder"])
def test_missing_weights_file(tmp_path, component):
    make_model(tmp_path / "m")
    folder = tmp_path / "m" / component
    for f in folder.glob("*.safetensors"):
        f.unlink()
    base = "model" if component == "text_encoder" else "diffusion_pytorch_model"
    with pytest.raises(FileNotFoundError) as e:
        load_component(tmp_path / "m", component)
    assert_names(e, folder, f"{base}.safetensors", f"{base}.fp16.safetensors")


def test_unknown_component(tmp_path):
    make_model(tmp_path / "m")
    with pytest.raises(ValueError, match="unet"):
        load_component(tmp_path / "m", "scheduler")


def test_load_component(tmp_path):
    written = make_model(tmp_path / "m")
    for c, w in written.items():
        config, weights = load_component(tmp_path / "m", c)
        assert config == {"component": c, "channels": 4}
        assert weights.keys() == w.keys()
        for k in w:
            assert weights[k].dtype == np.float32 and weights[k].flags.c_contiguous
            np.testing.assert_array_equal(weights[k], w[k])


def test_text_encoder_name_is_not_unet_name(tmp_path):
    """text_encoder reads model.safetensors, unet diffusion_pytorch_model.safetensors."""
    make_model(tmp_path / "m")
    (tmp_path / "m" / "unet" / "diffusion_pytorch_model.safetensors").rename(tmp_path / "m" / "unet" / "model.safetensors")
    with pytest.raises(FileNotFoundError, match="diffusion_pytorch_model.safetensors"):
        load_component(tmp_path / "m", "unet")


# --------------------------------------------------------------------------- pickle files


@pytest.mark.parametrize("name", ["diffusion_pytorch_model.bin", "model.ckpt", "weights.pt", "w.pth"])
def test_pickle_only_folder(tmp_path, name):
    make_model(tmp_path / "m")
    folder = tmp_path / "m" / "unet"
    (folder / "diffusion_pytorch_model.safetensors").unlink()
    # Not even a valid pickle: it must never be opened.
    (folder / name).write_bytes(b"\x80\x04 this must never be unpickled")
    with pytest.raises(ValueError) as e:
        load_component(tmp_path / "m", "unet")
    assert_names(e, folder, name, "safetensors is required", "never loaded")


def test_safetensors_preferred_over_pickle(tmp_path):
    written = make_model(tmp_path / "m")
    (tmp_path / "m" / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"garbage")
    _, w = load_component(tmp_path / "m", "unet")
    np.testing.assert_array_equal(w["unet.weight"], written["unet"]["unet.weight"])


# --------------------------------------------------------------------------- variants


def _two_variants(tmp_path, plain=True, fp16=True):
    folder = tmp_path / "m" / "vae"
    make_model(tmp_path / "m")
    (folder / "diffusion_pytorch_model.safetensors").unlink()
    if plain:
        save_file({"w": np.full(3, 1.0, np.float32)}, str(folder / "diffusion_pytorch_model.safetensors"))
    if fp16:
        save_file({"w": np.full(3, 2.0, np.float16)}, str(folder / "diffusion_pytorch_model.fp16.safetensors"))
    return folder


@pytest.mark.parametrize(
    "plain, fp16, variant, expect",
    [
        (True, True, None, 1.0),  # plain wins by default
        (True, True, "fp16", 2.0),  # the variant when asked
        (False, True, None, 2.0),  # fp16 as fallback
        (True, False, "fp16", 1.0),  # plain as fallback for the variant
        (False, True, "fp16", 2.0),
    ],
)
def test_variant_selection(tmp_path, plain, fp16, variant, expect):
    folder = _two_variants(tmp_path, plain, fp16)
    files = find_weights_file(folder, variant)
    assert len(files) == 1
    assert files[0].name == ("diffusion_pytorch_model.fp16.safetensors" if expect == 2.0 else "diffusion_pytorch_model.safetensors")
    _, w = load_component(tmp_path / "m", "vae", variant=variant)
    assert w["w"].dtype == np.float32
    np.testing.assert_array_equal(w["w"], np.full(3, expect, np.float32))


def test_text_encoder_fp16_variant(tmp_path):
    make_model(tmp_path / "m")
    folder = tmp_path / "m" / "text_encoder"
    save_file({"w": np.full(2, 3.0, np.float16)}, str(folder / "model.fp16.safetensors"))
    assert find_weights_file(folder, "fp16") == [folder / "model.fp16.safetensors"]
    assert find_weights_file(folder) == [folder / "model.safetensors"]


@pytest.mark.parametrize("bad", ["../fp16", "fp16/x", "", "a b"])
def test_bad_variant_name(tmp_path, bad):
    folder = _two_variants(tmp_path)
    with pytest.raises(ValueError, match="variant"):
        find_weights_file(folder, bad)


def test_variant_type(tmp_path):
    folder = _two_variants(tmp_path)
    with pytest.raises(TypeError, match="variant"):
        find_weights_file(folder, 16)


# --------------------------------------------------------------------------- sharded


def _sharded(tmp_path, index_name="diffusion_pytorch_model.safetensors.index.json", prefix="diffusion_pytorch_model"):
    make_model(tmp_path / "m")
    folder = tmp_path / "m" / "unet"
    (folder / "diffusion_pytorch_model.safetensors").unlink()
    a = {"down.0.weight": rand(4, 3, seed=1), "down.0.bias": rand(4, seed=2)}
    b = {"up.0.weight": rand(2, 5, seed=3)}
    s1, s2 = f"{prefix}-00001-of-00002.safetensors", f"{prefix}-00002-of-00002.safetensors"
    save_file(a, str(folder / s1))
    save_file(b, str(folder / s2))
    wm = {**{k: s1 for k in a}, **{k: s2 for k in b}}
    (folder / index_name).write_text(json.dumps({"metadata": {"total_size": 1}, "weight_map": wm}))
    return folder, {**a, **b}, s1, s2


def test_sharded(tmp_path):
    folder, want, s1, s2 = _sharded(tmp_path)
    assert find_weights_file(folder) == [folder / s1, folder / s2]
    _, w = load_component(tmp_path / "m", "unet")
    assert w.keys() == want.keys()
    for k in want:
        np.testing.assert_array_equal(w[k], want[k])


def test_sharded_fp16_variant(tmp_path):
    folder, want, s1, s2 = _sharded(
        tmp_path, "diffusion_pytorch_model.safetensors.index.fp16.json", "diffusion_pytorch_model.fp16"
    )
    assert find_weights_file(folder, "fp16") == [folder / s1, folder / s2]
    assert find_weights_file(folder) == [folder / s1, folder / s2]  # fallback when no plain file
    _, w = load_component(tmp_path / "m", "unet", variant="fp16")
    assert set(w) == set(want)


def test_sharded_missing_shard(tmp_path):
    folder, _, _, s2 = _sharded(tmp_path)
    (folder / s2).unlink()
    with pytest.raises(FileNotFoundError) as e:
        load_component(tmp_path / "m", "unet")
    assert_names(e, folder / s2, "index.json")


@pytest.mark.parametrize("shard", ["../evil.safetensors", "/etc/passwd", "sub/x.safetensors", "model.bin", 5])
def test_sharded_bad_shard_name(tmp_path, shard):
    folder, _, _, _ = _sharded(tmp_path)
    index = folder / "diffusion_pytorch_model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"down.0.weight": shard}}))
    with pytest.raises(ValueError) as e:
        find_weights_file(folder)
    assert_names(e, index, "down.0.weight")


def test_sharded_index_without_weight_map(tmp_path):
    folder, _, _, _ = _sharded(tmp_path)
    index = folder / "diffusion_pytorch_model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}}))
    with pytest.raises(ValueError) as e:
        find_weights_file(folder)
    assert_names(e, index, "weight_map")


def test_sharded_tensor_in_wrong_shard(tmp_path):
    folder, _, s1, s2 = _sharded(tmp_path)
    index = folder / "diffusion_pytorch_model.safetensors.index.json"
    wm = json.loads(index.read_text())["weight_map"]
    wm["up.0.weight"] = s1
    wm["down.0.bias"] = s2
    index.write_text(json.dumps({"weight_map": wm}))
    with pytest.raises(ValueError) as e:
        load_component(tmp_path / "m", "unet")
    assert_names(e, index, "down.0.bias")


def test_sharded_duplicate_tensor(tmp_path):
    folder, _, s1, s2 = _sharded(tmp_path)
    save_file({"up.0.weight": rand(2, 5), "down.0.bias": rand(4)}, str(folder / s2))
    with pytest.raises(ValueError) as e:
        load_component(tmp_path / "m", "unet")
    assert_names(e, folder / s2, "down.0.bias")


# --------------------------------------------------------------------------- good safetensors


def test_f32_roundtrip(tmp_path):
    w = {"a": rand(2, 3, 4), "b": rand(5, seed=1), "scalar": np.array(1.5, np.float32), "empty": np.zeros((0, 3), np.float32)}
    p = tmp_path / "w.safetensors"
    save_file(w, str(p), metadata={"format": "pt"})  # __metadata__ is ignored
    got = load_safetensors(p)
    assert got.keys() == w.keys()
    for k in w:
        assert got[k].dtype == np.float32 and got[k].flags.c_contiguous and got[k].flags.owndata
        assert got[k].shape == w[k].shape
        np.testing.assert_array_equal(got[k], w[k])
    got["a"][0, 0, 0] = 123.0  # writable, not a view of the file
    assert load_safetensors(p)["a"][0, 0, 0] == w["a"][0, 0, 0]


SPECIAL = [0.0, -0.0, 1.0, -2.5, 65504.0, 6.1e-5, 5.96e-8, 1e-7, np.inf, -np.inf, np.nan, 3.140625]


def test_f16_exact(tmp_path):
    h = np.concatenate([rand(64, seed=3), np.array(SPECIAL, np.float32)]).astype(np.float16).reshape(4, 19)
    p = tmp_path / "h.safetensors"
    save_file({"h": h}, str(p))
    got = load_safetensors(p)["h"]
    assert got.dtype == np.float32 and got.flags.c_contiguous
    np.testing.assert_array_equal(got, h.astype(np.float32))
    assert np.signbit(got.reshape(-1)[64 + 1])  # -0.0 kept


def test_bf16_exact(tmp_path):
    f = np.concatenate([rand(62, seed=4), np.array(SPECIAL, np.float32)]).reshape(2, 37)
    bits = (f.view(np.uint32) >> 16).astype("<u2")  # bfloat16 = upper half of float32
    want = (bits.astype(np.uint32) << 16).view(np.float32)
    p = write_raw(tmp_path / "b.safetensors", {"b": entry("BF16", (2, 37), (0, bits.nbytes))}, bits.tobytes())
    got = load_safetensors(p)["b"]
    assert got.dtype == np.float32 and got.flags.c_contiguous
    np.testing.assert_array_equal(got, want)


def test_bf16_matches_torch(tmp_path):
    """Cross-check with torch's own bfloat16 files and conversion."""
    import torch
    from safetensors.torch import save_file as torch_save

    t = torch.randn(3, 5, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    h = torch.randn(4, generator=torch.Generator().manual_seed(1)).to(torch.float16)
    p = tmp_path / "t.safetensors"
    torch_save({"t": t, "h": h}, str(p))
    got = load_safetensors(p)
    np.testing.assert_array_equal(got["t"], t.float().numpy())
    np.testing.assert_array_equal(got["h"], h.float().numpy())


def test_unaligned_offsets(tmp_path):
    """Offsets need not be multiples of the item size."""
    a = np.arange(3, dtype="<f2")
    b = np.arange(2, dtype="<f4") + 0.5
    hdr = {"a": entry("F16", (3,), (0, 6)), "b": entry("F32", (2,), (6, 14))}
    p = write_raw(tmp_path / "u.safetensors", hdr, a.tobytes() + b.tobytes())
    got = load_safetensors(p)
    np.testing.assert_array_equal(got["a"], a.astype(np.float32))
    np.testing.assert_array_equal(got["b"], b)


def test_real_diffusers_and_transformers_files(tmp_path):
    """Tiny models saved by diffusers/transformers (plain, fp16 variant, sharded) load exactly."""
    import torch
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=(8,), down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
        layers_per_block=1, latent_channels=4, norm_num_groups=4, sample_size=16,
    ).eval()
    te = CLIPTextModel(CLIPTextConfig(vocab_size=100, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                      num_attention_heads=2, max_position_embeddings=77,
                                      bos_token_id=98, eos_token_id=99, pad_token_id=1)).eval()
    sds = {"vae": {k: v.clone() for k, v in vae.state_dict().items()},
           "text_encoder": {k: v.clone() for k, v in te.state_dict().items()}}
    root = tmp_path / "m"
    vae.save_pretrained(root / "vae", safe_serialization=True)
    vae.half().save_pretrained(root / "vae", safe_serialization=True, variant="fp16")
    te.save_pretrained(root / "text_encoder", max_shard_size="2KB")
    te.half().save_pretrained(root / "text_encoder", max_shard_size="2KB", variant="fp16")
    for name in ("vae", "text_encoder"):
        for variant, cast in ((None, torch.float32), ("fp16", torch.float16)):
            _, w = load_component(root, name, variant=variant)
            assert set(sds[name]) <= set(w), name
            for k, v in sds[name].items():
                np.testing.assert_array_equal(w[k], v.to(cast).float().numpy(), err_msg=f"{name} {variant} {k}")
    assert len(find_weights_file(root / "text_encoder")) > 1  # really sharded
    assert all(".fp16-" in f.name for f in find_weights_file(root / "text_encoder", "fp16"))


# --------------------------------------------------------------------------- bad safetensors


def _check_bad(path, *parts):
    with pytest.raises(ValueError) as e:
        load_safetensors(path)
    assert_names(e, path, *parts)
    return str(e.value)


def test_missing_safetensors(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        load_safetensors(tmp_path / "none.safetensors")
    assert_names(e, tmp_path / "none.safetensors")


@pytest.mark.parametrize("cut", [1, 7, 40])
def test_truncated_data(tmp_path, cut):
    p = tmp_path / "t.safetensors"
    save_file({"weight": rand(4, 4)}, str(p))
    raw = p.read_bytes()
    p.write_bytes(raw[:-cut])
    msg = _check_bad(p, "weight", "truncated")
    assert "data_offsets" in msg


@pytest.mark.parametrize("keep", [0, 3, 8, 20])
def test_truncated_header(tmp_path, keep):
    p = tmp_path / "t.safetensors"
    save_file({"weight": rand(4, 4)}, str(p))
    p.write_bytes(p.read_bytes()[:keep])
    _check_bad(p)


def test_header_length_larger_than_file(tmp_path):
    p = write_raw(tmp_path / "h.safetensors", {"w": entry()}, b"\0" * 8, header_len=10_000)
    msg = _check_bad(p, "10000")
    assert "header length" in msg


def test_huge_header_length(tmp_path):
    p = write_raw(tmp_path / "h.safetensors", b"{}", header_len=2**64 - 1)
    _check_bad(p, "header length")


@pytest.mark.parametrize("header", [b"{not json", b'{"w": ', b"\xff\xfe\x00", b"[1, 2]", b'"s"', b"",
                                    b'{"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "w": {}}'])
def test_invalid_header(tmp_path, header):
    p = write_raw(tmp_path / "j.safetensors", header, b"\0" * 8)
    _check_bad(p, "header")


@pytest.mark.parametrize(
    "info, expect",
    [
        (entry(offsets=(0, 16)), ["[0, 16]", "data area (8 bytes)"]),  # end past the data area
        (entry(offsets=(8, 16)), ["[8, 16]"]),
        (entry(offsets=(4, 8)), ["4 bytes", "expected 8"]),  # too short for the shape
        (entry(shape=(3,), offsets=(0, 8)), ["expected 12"]),  # shape needs more
        (entry(offsets=(8, 4)), ["begin <= end"]),
        (entry(offsets=(-8, 0)), ["begin <= end"]),
        (entry(offsets=(0,)), ["data_offsets"]),
        (entry(offsets=(0.0, 8.0)), ["data_offsets"]),
        (entry(offsets=(False, 8)), ["data_offsets"]),
        (entry(shape=(-2,)), ["negative"]),
        (entry(shape=(2, -1)), ["negative"]),
        (entry(shape=(2.0,)), ["shape"]),
        ({**entry(), "shape": "2"}, ["shape"]),
        (entry(dtype="I64", offsets=(0, 16)), ["I64", "F32, F16, BF16"]),
        (entry(dtype="F64", offsets=(0, 16)), ["F64", "F32, F16, BF16"]),
        (entry(dtype="BOOL", offsets=(0, 2)), ["BOOL", "F32, F16, BF16"]),
        (entry(dtype=32), ["32", "F32, F16, BF16"]),
        ({"dtype": "F32", "shape": [2]}, ["data_offsets"]),
        ({"shape": [2], "data_offsets": [0, 8]}, ["dtype"]),
        ([1, 2], ["entry"]),
    ],
)
def test_lying_header(tmp_path, info, expect):
    p = write_raw(tmp_path / "l.safetensors", {"the.tensor": info}, b"\0" * 16)
    p.write_bytes(p.read_bytes()[:-8])  # data area: 8 bytes
    _check_bad(p, "the.tensor", *expect)


def test_overlapping_tensors(tmp_path):
    hdr = {"a.weight": entry(shape=(2,), offsets=(0, 8)), "b.weight": entry(shape=(2,), offsets=(4, 12))}
    msg = _check_bad(write_raw(tmp_path / "o.safetensors", hdr, b"\0" * 12), "overlap")
    assert "a.weight" in msg and "b.weight" in msg


def test_identical_ranges_overlap(tmp_path):
    hdr = {"a": entry(), "b": entry()}
    _check_bad(write_raw(tmp_path / "o.safetensors", hdr, b"\0" * 8), "overlap")


def test_empty_tensors_do_not_overlap(tmp_path):
    hdr = {"a": entry(shape=(0,), offsets=(4, 4)), "b": entry(shape=(2,), offsets=(0, 8)), "c": entry(shape=(0, 5), offsets=(8, 8))}
    got = load_safetensors(write_raw(tmp_path / "e.safetensors", hdr, b"\0" * 8))
    assert got["a"].shape == (0,) and got["c"].shape == (0, 5) and got["b"].tolist() == [0.0, 0.0]


def test_metadata_allowed(tmp_path):
    hdr = {"__metadata__": {"format": "pt", "anything": "goes"}, "w": entry()}
    data = np.array([1.0, 2.0], "<f4").tobytes()
    got = load_safetensors(write_raw(tmp_path / "m.safetensors", hdr, data))
    assert list(got) == ["w"] and got["w"].tolist() == [1.0, 2.0]
