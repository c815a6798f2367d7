"""The command line: python -m gnr {demo, edit, info}."""
import json
import re
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import gnr
import gnr.__main__ as cli

# A python -m gnr whose gnr.cuda_available() says False, as on a machine without a GPU.
NO_GPU = ("import runpy, sys, gnr; gnr.cuda_available = lambda: False; "
          "runpy.run_module('gnr', run_name='__main__', alter_sys=True)")


def run_cli(args, cwd, no_gpu=False):
    # The gnr under test, wherever it is imported from (installed, or a build in place).
    env = dict(os.environ, PYTHONPATH=str(Path(gnr.__file__).resolve().parent.parent))
    head = ["-c", NO_GPU] if no_gpu else ["-m", "gnr"]
    return subprocess.run([sys.executable, *head, *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=600)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Input files: a readable PNG, a PNG that is not an image, and a model
    folder whose UNet config asks for something gnr does not implement."""
    d = tmp_path_factory.mktemp("cli")
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (80, 96, 3), dtype=np.uint8)).save(d / "in.png")
    (d / "broken.png").write_text("not an image")
    model = d / "unsupported_model"
    shutil.copytree(gnr.demo.default_model_dir(), model,
                    ignore=shutil.ignore_patterns("*.safetensors"))  # configs are read first
    cfg = json.loads((model / "unet" / "config.json").read_text())
    cfg["only_cross_attention"] = True
    (model / "unet" / "config.json").write_text(json.dumps(cfg))
    return d


def test_cli_edit(tiny_a_dir, tmp_path):
    src = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (80, 64, 3), dtype=np.uint8)).save(src)
    out = tmp_path / "out.png"
    r = run_cli(["edit", "--model", str(tiny_a_dir), "--image", str(src), "--source", "a cat", "--target", "a dog",
                 "--size", "64", "--steps", "3", "--quiet", "-o", str(out)], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stdout and "inversion" in r.stdout
    assert np.asarray(Image.open(out)).shape == (64, 64, 3)


def test_cli_default_model_edits_at_its_native_size(files, tmp_path):
    """No --model, no --size: the bundled 64 x 64 model edits at 64 x 64
    (a 512 default made each edit take an hour on a CPU)."""
    out = tmp_path / "out.jpg"
    r = run_cli(["edit", "--image", str(files / "in.png"), "--source", "a red circle", "--target", "a green circle",
                 "--steps", "3", "--quiet", "-o", str(out)], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "at 64 x 64 (3 steps)" in r.stdout
    assert Image.open(out).size == (64, 64) and Image.open(out).format == "JPEG"


def test_cli_style_at_25_steps_uses_the_resampled_preset(tiny_a_dir, files, tmp_path, monkeypatch):
    """--config style --steps 25 used to fail ("g_scale has 50 entries"):
    it runs, with gnr.configs.get("style", num_steps=25)."""
    out = tmp_path / "out.png"
    args = ["edit", "--model", str(tiny_a_dir), "--image", str(files / "in.png"), "--source", "a cat",
            "--target", "a dog", "--config", "style", "--steps", "25", "--size", "64", "--quiet", "-o", str(out)]
    r = run_cli(args, tmp_path)
    assert r.returncode == 0, r.stderr
    assert "(25 steps)" in r.stdout and Image.open(out).size == (64, 64)

    seen = {}

    class Recorder(gnr.Editor):
        def edit(self, image, source, target, config=None, **kw):
            seen.update(config=config, shape=image.shape)
            return super().edit(image, source, target, config=config, **kw)

    monkeypatch.setattr(gnr, "Editor", Recorder)
    assert cli.main(args) == 0
    assert seen["config"] == gnr.configs.get("style", num_steps=25) and seen["shape"] == (64, 64, 3)
    assert seen["config"]["guiders"][1]["g_scale"] == [1e5] * 12 + [0.0] * 13


def test_cli_warns_in_one_line_about_a_long_prompt(files, tmp_path):
    r = run_cli(["edit", "--image", str(files / "in.png"), "--source", "a circle", "--target",
                 "a circle " * 37 + "and a blue square", "--steps", "2", "--quiet", "-o", str(tmp_path / "o.png")],
                tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: ") and lines[0].endswith(": 'a blue square'")  # 74 + 'and' kept


# Every user error: (arguments after `edit` with {in}, {broken}, {dir}, {model} filled in, text in the message).
EDIT = ["edit", "--image", "{in}", "--source", "a cat", "--target", "a dog", "-o", "{dir}/out.png"]
USER_ERRORS = {
    "unknown config": (EDIT + ["--config", "fancy"], "--config/--steps: unknown config 'fancy'"),
    "zero steps": (EDIT + ["--steps", "0"], "num_steps must be between 1 and 1000, got 0"),
    "negative seed": (EDIT + ["--seed", "-1"], "seed must be in [0, 2**64)"),
    "size the model refuses": (EDIT + ["--size", "60"], "--size: size = 60 is not a positive multiple of 16, "
                                                        "which this model needs; nearest valid sizes: 48 or 64"),
    "size not a number": (EDIT + ["--size", "big"], "argument --size: invalid int value: 'big'"),
    "missing image": ([a.replace("{in}", "{dir}/nope.png") for a in EDIT], "--image: no such image file"),
    "unreadable image": ([a.replace("{in}", "{broken}") for a in EDIT], "--image: cannot read"),
    "image is a folder": ([a.replace("{in}", "{dir}") for a in EDIT], "is a folder, not an image file"),
    "output extension": ([a.replace("out.png", "out.txt") for a in EDIT],
                         ".txt is not an image format Pillow writes; use one of .png"),
    "output folder missing": ([a.replace("{dir}/out.png", "{dir}/no/out.png") for a in EDIT],
                              "the folder .*no does not exist"),
    "output folder not writable": ([a.replace("{dir}/out.png", "/proc/out.png") for a in EDIT],
                                   "no file can be written in /proc"),
    "output is a folder": ([a.replace("{dir}/out.png", "{dir}/folder.png") for a in EDIT], "it is a folder"),
    "unknown device": (EDIT + ["--device", "tpu"], "--device: 'tpu' is not a device gnr knows; use cpu or cuda"),
    "cuda without a GPU": (EDIT + ["--device", "cuda"], "--device cuda: no usable GPU"),
    "missing model": (EDIT + ["--model", "{dir}/nope"], "--model: .*nope: no such model folder"),
    "unsupported model": (EDIT + ["--model", "{model}"], "only_cross_attention = True is not supported"),
    "missing argument": (EDIT[:5] + EDIT[7:], "the following arguments are required: --target"),
    "unknown command": (["fix"], "invalid choice: 'fix'"),
    "demo output": (["demo", "-o", "{dir}/demo.gif2"], ".gif2 is not an image format Pillow writes"),
}


def _fill(args, files, tmp_path):
    (tmp_path / "folder.png").mkdir(exist_ok=True)
    subs = {"{in}": str(files / "in.png"), "{broken}": str(files / "broken.png"), "{dir}": str(tmp_path),
            "{model}": str(files / "unsupported_model")}
    out = []
    for a in args:
        for k, v in subs.items():
            a = a.replace(k, v)
        out.append(a)
    return out


@pytest.mark.parametrize("case", list(USER_ERRORS))
def test_every_user_error_is_one_line_exit_2(case, files, tmp_path):
    """In a real process: exit status 2, one `error: ...` line on stderr
    naming the option, no traceback, nothing printed or written."""
    args, message = USER_ERRORS[case]
    r = run_cli(_fill(args, files, tmp_path), tmp_path, no_gpu=case == "cuda without a GPU")
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert re.search(re.escape(message).replace(r"\.\*", ".*"), lines[0]), lines[0]
    assert "Traceback" not in r.stderr and r.stdout == ""
    assert not (tmp_path / "out.png").exists()


@pytest.mark.parametrize("case", list(USER_ERRORS))
def test_every_user_error_is_found_before_any_work(case, files, tmp_path, monkeypatch, capsys):
    """The same cases in this process, with the engine's entry points
    replaced by a tripwire: no model is loaded and no pass runs."""
    def tripwire(*args, **kwargs):
        raise AssertionError("the engine was started before every check passed")

    for owner, name in ((gnr, "Editor"), (gnr, "load_model"), (gnr.editor, "load_model"), (gnr.demo, "run_demo"),
                        (gnr.model.Model, "__init__")):
        monkeypatch.setattr(owner, name, tripwire)
    monkeypatch.setattr(gnr, "cuda_available", lambda: False)
    assert cli.main(_fill(USER_ERRORS[case][0], files, tmp_path)) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_info_prints_the_build_and_the_gpu(tmp_path):
    r = run_cli(["info"], tmp_path)
    assert r.returncode == 0, r.stderr
    info = gnr.build_info()
    assert r.stdout.startswith(f"gnr {info['version']}\nbuild:\n")
    for key, value in info.items():
        if key != "cuda_note":
            assert f"  {key}: {value}\n" in r.stdout
    usable = "no (device='cuda' runs" if info["cuda"] == "emulated" else "yes" if gnr.cuda_available() else "no\n"
    assert f"GPU usable: {usable}" in r.stdout


def test_info_says_why_the_cuda_backend_is_missing(monkeypatch, capsys):
    note = "nvcc was found but not cuBLAS: set GNR_CUBLAS_HOME or pip install nvidia-cublas, then pip install ."
    monkeypatch.setattr(gnr, "build_info", lambda: {"version": "9.9", "cuda": False, "cuda_note": note})
    monkeypatch.setattr(gnr, "cuda_available", lambda: False)
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == ["gnr 9.9", "build:", "  version: 9.9", "  cuda: False", "GPU usable: no",
                                f"CUDA backend: {note}"]
    monkeypatch.setattr(gnr, "build_info", lambda: {"version": "9.9", "cuda": True, "cuda_note": ""})
    assert cli.main(["info"]) == 0
    assert "CUDA backend" not in capsys.readouterr().out
    # the emulated device (a test build) is not a GPU, though device="cuda" works there
    monkeypatch.setattr(gnr, "build_info", lambda: {"version": "9.9", "cuda": "emulated", "cuda_note": "emulated"})
    monkeypatch.setattr(gnr, "cuda_available", lambda: True)
    assert cli.main(["info"]) == 0
    assert "GPU usable: no (device='cuda' runs on the CPU emulator of this test build)" in capsys.readouterr().out


def test_import_from_the_repository_root():
    """`pip install . && python -m gnr demo` (the README) runs in the
    repository root, where the checkout's gnr/ (without a compiled engine
    unless built in place) comes first on sys.path: it must still load."""
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-c", "import gnr, gnr.demo; print(gnr._C.__file__)"], cwd=root,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
