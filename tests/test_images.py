"""Image sizes from the model (gnr.sizes), gnr.load_image / Editor.load_image
(the reference's preparation) and gnr.save_image."""
import numpy as np
import pytest
from PIL import Image

import gnr
from gnr import sizes

# The size-relevant keys of Stable Diffusion's config files (unet/, vae/).
SD_VAE = {"block_out_channels": [128, 256, 512, 512]}
SD14_UNET = {"sample_size": 64, "block_out_channels": [320, 640, 1280, 1280]}
SD21V_UNET = {"sample_size": 96, "block_out_channels": [320, 640, 1280, 1280]}


def test_native_sizes_of_known_models():
    assert sizes.native_size(SD14_UNET, SD_VAE) == 512
    assert sizes.native_size(SD21V_UNET, SD_VAE) == 768
    assert sizes.size_multiple(SD14_UNET, SD_VAE) == 64
    assert gnr.load_model("default").native_size == 64
    assert sizes.model_sizes() == (64, 16)                 # the bundled model, from its config files alone


def test_python_sizes_agree_with_the_engine(tiny_model_dir):
    """gnr.sizes reads the config files the engine reads: same multiple."""
    m = gnr.load_model(tiny_model_dir)
    native, multiple = sizes.model_sizes(tiny_model_dir)
    assert multiple == m.size_multiple and native == m.native_size
    assert native == m.config["unet"]["sample_size"] * m.vae_factor


def test_load_image_default_size_comes_from_the_model(tiny_a_dir):
    a = np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    assert gnr.load_image(a).shape == (64, 64, 3)              # the bundled default model: 16 x 4
    assert gnr.load_image(a, model=tiny_a_dir).shape == (128, 128, 3)   # sample_size 16 x VAE factor 8
    editor = gnr.Editor(tiny_a_dir)
    np.testing.assert_array_equal(editor.load_image(a), gnr.load_image(a, size=128))
    assert editor.load_image(a, size=32).shape == (32, 32, 3)


@pytest.mark.parametrize("size, near", [(60, "48 or 64"), (8, "16"), (0, "16"), (-3, "16"), (513, "512 or 528")])
def test_a_size_the_model_refuses_names_the_nearest(size, near):
    a = np.zeros((80, 80, 3), np.uint8)
    with pytest.raises(ValueError, match=f"multiple of 16.*nearest valid sizes: {near}$"):
        gnr.load_image(a, size=size)


def test_editor_refuses_a_bad_size_with_the_nearest(tiny_model_dir):
    editor = gnr.Editor(tiny_model_dir)
    m = editor.model.size_multiple
    with pytest.raises(ValueError, match=f"nearest valid sizes: {m} or {2 * m}"):
        editor.load_image(np.zeros((80, 80, 3), np.uint8), size=m + 4)
    with pytest.raises(ValueError, match=f"image width = {m + 4} .* nearest valid sizes: {m} or {2 * m}"):
        editor.model.encode_image(np.zeros((m, m + 4, 3), np.uint8))
    with pytest.raises(TypeError, match="size must be an integer"):
        editor.load_image(np.zeros((80, 80, 3), np.uint8), size=64.0)


def test_load_image_crops_the_centre_square():
    a = np.zeros((64, 100, 3), np.uint8)
    a[:, 18:82] = 200  # the centre 64 x 64 square: offset (100 - 64) // 2 = 18
    a[:, 18] = 7
    out = gnr.load_image(a, size=64)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, a[:, 18:82])


def test_load_image_resizes_bicubic(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (90, 90, 3), dtype=np.uint8)
    path = tmp_path / "x.png"
    Image.fromarray(a).save(path)
    out = gnr.load_image(path, size=64)
    expected = np.asarray(Image.fromarray(a).resize((64, 64), Image.BICUBIC))
    np.testing.assert_array_equal(out, expected)
    rgba = np.dstack([a, np.full((90, 90), 255, np.uint8)])
    np.testing.assert_array_equal(gnr.load_image(rgba, size=64), expected)


def test_load_image_errors(tmp_path):
    with pytest.raises(TypeError, match="uint8"):
        gnr.load_image(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(FileNotFoundError, match="no such image file"):
        gnr.load_image(tmp_path / "missing.png")
    with pytest.raises(TypeError, match="file path or a uint8 array"):
        gnr.load_image(3)
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(ValueError, match="cannot read .*text.png as an image"):
        gnr.load_image(tmp_path / "text.png")
    with pytest.raises(IsADirectoryError):
        gnr.load_image(tmp_path)


@pytest.mark.parametrize("ext", [".png", ".jpg", ".webp", ".bmp", ".tiff"])
def test_save_image_writes_what_pillow_reads(tmp_path, ext):
    image = np.random.default_rng(0).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    gnr.save_image(tmp_path / f"x{ext}", image)
    back = np.asarray(Image.open(tmp_path / f"x{ext}").convert("RGB"))
    assert back.shape == image.shape
    if ext in (".png", ".bmp", ".tiff"):  # lossless
        np.testing.assert_array_equal(back, image)


@pytest.mark.parametrize("name, exc, msg", [
    ("x.txt", ValueError, r"\.txt is not an image format Pillow writes; use one of \.png, \.jpg"),
    ("x", ValueError, "no extension"),
    ("x.xbm", ValueError, "xbm"),                     # Pillow writes XBM, but not RGB images
    ("missing/x.png", FileNotFoundError, "does not exist"),
])
def test_save_image_refuses_before_writing(tmp_path, name, exc, msg):
    with pytest.raises(exc, match=msg):
        gnr.save_image(tmp_path / name, np.zeros((4, 4, 3), np.uint8))
    assert list(tmp_path.iterdir()) == []


def test_output_check_refuses_unwritable_places(tmp_path):
    from gnr.images import check_output_path

    assert check_output_path(tmp_path / "a.JPG") == "JPEG"
    (tmp_path / "d.png").mkdir()
    with pytest.raises(IsADirectoryError):
        check_output_path(tmp_path / "d.png")
    with pytest.raises(PermissionError, match="no file can be written"):
        check_output_path("/proc/gnr_out.png")       # a folder nobody can create files in, root included
