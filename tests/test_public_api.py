"""The public API as a newcomer meets it: every public submodule is an
attribute after `import gnr`, and every public argument and attribute is
documented where help() shows it."""
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

import gnr

PUBLIC_MODULES = ["batch", "captures", "configs", "demo", "editor", "files", "images", "model", "profiling", "single_file",
                  "sizes", "tokenizer"]


def test_every_public_submodule_is_an_attribute_after_import_gnr():
    """In a fresh interpreter: `import gnr` alone, then gnr.demo.sample_scene()
    (it used to fail unless an Editor had been made first)."""
    import pkgutil

    found = sorted(m.name for m in pkgutil.iter_modules(gnr.__path__) if not m.name.startswith("_"))
    assert found == PUBLIC_MODULES
    code = ("import gnr\n"
            f"for name in {found!r}: getattr(gnr, name)\n"
            "image, source, target = gnr.demo.sample_scene()\n"
            "print(image.shape, gnr.sizes.model_sizes())\n")
    env_path = str(Path(gnr.__file__).resolve().parent.parent)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "(64, 64, 3) (64, 16)"


def _public_callables():
    """(qualified name, object) of every public function, class and method."""
    seen = {}
    for modname in PUBLIC_MODULES + [None]:
        mod = gnr if modname is None else getattr(gnr, modname)
        for name in getattr(mod, "__all__", []):
            obj = getattr(mod, name)
            if not (inspect.isfunction(obj) or inspect.isclass(obj)) or obj in seen.values():
                continue
            seen[f"{obj.__module__}.{obj.__qualname__}"] = obj
            if inspect.isclass(obj):
                for mname, member in vars(obj).items():
                    if inspect.isfunction(member) and not mname.startswith("_"):
                        seen[f"{obj.__module__}.{member.__qualname__}"] = member
    return sorted(seen.items())


def _parameters(obj):
    target = obj.__init__ if inspect.isclass(obj) else obj
    if inspect.isclass(obj) and target is object.__init__:
        return []
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):
        return []
    return [p for p in sig.parameters if p not in ("self", "cls") and not p.startswith("_")]


@pytest.mark.parametrize("qualname, obj", _public_callables(), ids=lambda x: x if isinstance(x, str) else "")
def test_every_public_argument_is_documented(qualname, obj):
    doc = inspect.getdoc(obj) or ""
    if inspect.isclass(obj) and obj.__init__ is not object.__init__:
        doc += "\n" + (inspect.getdoc(obj.__init__) or "")
    assert doc.strip(), f"{qualname} has no docstring"
    if inspect.isclass(obj) and issubclass(obj, BaseException) or qualname.endswith("Inversion"):
        return  # exceptions and the Inversion record: fields documented below / by their class docstring
    missing = [p for p in _parameters(obj) if not re.search(rf"\b{re.escape(p)}\b", doc)]
    assert not missing, f"{qualname}: arguments not in its docstring: {missing}"


def test_every_public_attribute_is_documented(tiny_a_dir):
    editor = gnr.Editor(tiny_a_dir)
    for obj, cls in ((editor, gnr.Editor), (editor.model, gnr.Model)):
        doc = inspect.getdoc(cls)
        missing = [a for a in vars(obj) if not a.startswith("_") and not re.search(rf"\b{a}\b", doc)]
        assert not missing, f"{cls.__name__}: attributes not in its docstring: {missing}"
        for name, member in vars(cls).items():
            if isinstance(member, property) and not name.startswith("_"):
                assert inspect.getdoc(member), f"{cls.__name__}.{name} has no docstring"
    inv_doc = inspect.getdoc(gnr.Inversion)
    missing = [f for f in gnr.Inversion.__dataclass_fields__ if not re.search(rf"\b{f}\b", inv_doc)]
    assert not missing, f"Inversion: fields not in its docstring: {missing}"


def test_help_of_editor_names_threads_memory_and_timings():
    text = inspect.getdoc(gnr.Editor)
    for phrase in ("threads", "None or 0 takes the", "other models keep theirs", "max_memory", "OutOfMemoryError",
                   "last_timings", "guided_count", "native"):
        assert phrase in text or phrase in inspect.getdoc(gnr.Editor.load_image), phrase
