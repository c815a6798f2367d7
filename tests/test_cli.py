"""The command line: python -m gnr."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import gnr


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


def test_import_from_the_repository_root():
    """`pip install . && python -m gnr demo` (the README) runs in the
    repository root, where the checkout's gnr/ (without a compiled engine
    unless built in place) comes first on sys.path: it must still load."""
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-c", "import gnr, gnr.demo; print(gnr._C.__file__)"], cwd=root,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
