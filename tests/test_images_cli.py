"""gnr.load_image (the reference's preparation) and the command line."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import gnr


def test_load_image_crops_the_centre_square():
    a = np.zeros((60, 100, 3), np.uint8)
    a[:, 20:80] = 200  # the centre 60 x 60 square: offset (100 - 60) // 2 = 20
    a[:, 20] = 7
    out = gnr.load_image(a, size=60)
    assert out.shape == (60, 60, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, a[:, 20:80])


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


@pytest.mark.parametrize("bad, exc", [(np.zeros((4, 4, 3), np.float32), TypeError), ("/no/such.png", FileNotFoundError),
                                      (3, TypeError)])
def test_load_image_errors(bad, exc):
    with pytest.raises(exc):
        gnr.load_image(bad)


def run_cli(args, cwd):
    # The gnr under test, wherever it is imported from (installed, or a build in place).
    env = dict(os.environ, PYTHONPATH=str(Path(gnr.__file__).resolve().parent.parent))
    return subprocess.run([sys.executable, "-m", "gnr", *args], capture_output=True, text=True, cwd=cwd, env=env)


def test_cli_edit(tiny_a_dir, tmp_path):
    src = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (80, 64, 3), dtype=np.uint8)).save(src)
    out = tmp_path / "out.png"
    r = run_cli(["edit", "--model", str(tiny_a_dir), "--image", str(src), "--source", "a cat", "--target", "a dog",
                 "--size", "64", "--steps", "3", "--quiet", "-o", str(out)], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stdout and "inversion" in r.stdout
    assert np.asarray(Image.open(out)).shape == (64, 64, 3)


def test_cli_reports_bad_config(tiny_a_dir, tmp_path):
    r = run_cli(["edit", "--model", str(tiny_a_dir), "--image", "x.png", "--source", "a", "--target", "b",
                 "--config", "fancy", "-o", "o.png"], tmp_path)
    assert r.returncode == 2 and "fancy" in r.stderr


def test_save_image_writes_png_without_pillow(tmp_path, monkeypatch):
    """The demo must write its PNG on a bare install (Pillow is optional):
    the standard-library writer's file reads back exactly with Pillow."""
    import gnr.images

    def no_pillow():
        raise ImportError("no Pillow")

    monkeypatch.setattr(gnr.images, "_pil", no_pillow)
    image = np.random.default_rng(0).integers(0, 256, (7, 13, 3), dtype=np.uint8)
    gnr.save_image(tmp_path / "x.png", image)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "x.png").convert("RGB")), image)
    with pytest.raises(ImportError, match="Pillow"):
        gnr.save_image(tmp_path / "x.jpg", image)


def test_import_from_the_repository_root():
    """`pip install . && python -m gnr demo` (the README) runs in the
    repository root, where the checkout's gnr/ (without a compiled engine
    unless built in place) comes first on sys.path: it must still load."""
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-c", "import gnr, gnr.demo; print(gnr._C.__file__)"], cwd=root,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
