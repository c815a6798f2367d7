"""The package's modules import downward only: no cycle, no module reaching
up into the package __init__ (which imports everything) or into the demo
and the editor from below. And what that buys: a gnr.Model made directly on
"cuda", in a fresh interpreter where nothing else ran first, works."""
import ast
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gnr

PACKAGE = Path(__file__).resolve().parents[1] / "gnr"
NAME = "gnr"

# Bottom to top: a module may import only modules listed before it. The
# compiled engine (_C, _C_cuda) is at the bottom; __main__ (the command
# line) is the top and is the one module that uses the package as a user
# does, through `import gnr` (its tests replace gnr.cuda_available there).
ORDER = ["_C", "_C_cuda", "profiling", "files", "captures", "tokenizer", "single_file", "configs", "_backends", "_model_config",
         "sizes", "images", "model", "editor", "demo", "_manifest", "_batch_output", "_batch_runner", "_batch_ray",
         "batch", "__init__", "__main__"]
EXTENSIONS = {"_C", "_C_cuda"}


def package_modules() -> list[str]:
    return sorted(p.stem for p in PACKAGE.glob("*.py"))


def imports_of(module: str) -> set[str]:
    """The package modules `module` imports, at the top or inside a function
    (a lazy import is still a dependency). Importing the package itself, or a
    name from it that is not a submodule, is an import of "__init__"."""
    path = PACKAGE / f"{module}.py"
    tree = ast.parse(path.read_text(), filename=str(path))
    known = set(package_modules()) | EXTENSIONS
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == NAME or alias.name.startswith(NAME + "."):
                    found.add("__init__")  # `import gnr.x` binds the package: its whole namespace
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                if node.module == NAME:
                    found.update(a.name if a.name in known else "__init__" for a in node.names)
                elif node.module and node.module.startswith(NAME + "."):
                    found.add(node.module.split(".")[1])
            elif node.level == 1:
                if node.module is None:  # from . import x
                    found.update(a.name if a.name in known else "__init__" for a in node.names)
                else:
                    found.add(node.module.split(".")[0])
            else:
                found.add("__init__ (above the package)")
    found.discard(module)
    return found


def test_every_module_has_a_place_in_the_order():
    assert sorted(set(ORDER) - EXTENSIONS) == package_modules(), \
        "a new module of gnr/ must be placed in ORDER, above everything it imports"


def test_the_import_graph_is_acyclic():
    graph = {m: imports_of(m) for m in package_modules()}
    state = {}

    def visit(m, path):
        if state.get(m) == "done" or m not in graph:
            return
        assert state.get(m) != "open", f"import cycle: {' -> '.join(path[path.index(m):] + [m])}"
        state[m] = "open"
        for dep in sorted(graph[m]):
            visit(dep, path + [m])
        state[m] = "done"

    for m in graph:
        visit(m, [])


@pytest.mark.parametrize("module", [m for m in ORDER if m not in EXTENSIONS])
def test_imports_go_down_only(module):
    deps = imports_of(module)
    if module != "__main__":
        assert "__init__" not in deps, f"gnr/{module}.py imports the package __init__ (upward)"
    up = sorted(d for d in deps if d not in ORDER or ORDER.index(d) > ORDER.index(module))
    assert not up, f"gnr/{module}.py imports {up}, which sit above it"


def test_the_check_sees_lazy_and_upward_imports(tmp_path, monkeypatch):
    """The parser itself: a function-level import counts, and both spellings
    of an import from the package __init__ are caught."""
    (tmp_path / "low.py").write_text("def f():\n    from .editor import Editor\n    from . import build_info\n"
                                     "    import gnr\n    from gnr.demo import run_demo\n")
    for name in ("editor", "demo"):
        (tmp_path / f"{name}.py").write_text("")
    monkeypatch.setitem(globals(), "PACKAGE", tmp_path)
    assert imports_of("low") == {"editor", "demo", "__init__"}


@pytest.mark.skipif(not gnr.cuda_available(), reason="no GPU")
def test_model_on_cuda_made_directly_in_a_fresh_interpreter(tiny_a_dir, tmp_path):
    """gnr.Model(path, device="cuda") is the first thing after `import gnr`:
    it used to fail unless load_model or cuda_available() had run before."""
    code = ("import sys, numpy as np, gnr\n"
            "assert 'gnr._C_cuda' not in sys.modules, 'import gnr loaded the CUDA backend'\n"
            "m = gnr.Model(sys.argv[1], device='cuda')\n"
            "rng = np.random.default_rng(0)\n"
            "z = rng.standard_normal((1, 4, 8, 8), dtype=np.float32)\n"
            "c = rng.standard_normal((77, 32), dtype=np.float32)\n"
            "np.save(sys.argv[2], m.unet(z, 10, c))\n"
            "print(m.device)\n")
    out = tmp_path / "cuda_unet.npy"
    env = dict(os.environ, PYTHONPATH=str(Path(gnr.__file__).resolve().parent.parent))
    r = subprocess.run([sys.executable, "-c", code, str(tiny_a_dir), str(out)], capture_output=True, text=True,
                       timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "cuda"
    rng = np.random.default_rng(0)
    z = rng.standard_normal((1, 4, 8, 8), dtype=np.float32)
    c = rng.standard_normal((77, 32), dtype=np.float32)
    ref = gnr.load_model(tiny_a_dir).unet(z, 10, c)
    got = np.load(out)
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 1e-4  # DECISIONS.md section 1: CUDA fp32 vs CPU
