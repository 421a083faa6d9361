"""The package's shape: imports run one way, every module imports on its own,
and a KAN's state is declared by the class and written only by it."""
import ast
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import numkan as nk

PKG = Path(nk.__file__).parent
ROOT = PKG.parent
# the modules that build on a model and that numkan.model offers as methods
FEATURES = ("train", "grids", "prune", "symbolic", "plot", "io", "activations", "regularization",
            "pde")


def _modules():
    """{dotted name: path} of every module of the package."""
    mods = {}
    for path in sorted(PKG.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


MODULES = _modules()


def _is_package(name):
    return MODULES[name].name == "__init__.py"


def _imports(name):
    """The package modules that module ``name`` imports, at the top or inside a function."""
    tree = ast.parse(MODULES[name].read_text(), filename=str(MODULES[name]))
    base = name if _is_package(name) else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in MODULES)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                pkg = base
                for _ in range(node.level - 1):
                    pkg = pkg.rpartition(".")[0]
                target = f"{pkg}.{node.module}" if node.module else pkg
            else:
                target = node.module or ""
            if target not in MODULES:
                continue
            # "from pkg import sub" imports the submodule; "from pkg import name" the package
            subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in MODULES]
            out.update(subs)
            if len(subs) < len(node.names):
                out.add(target)
    out.discard(name)
    return out


GRAPH = {name: _imports(name) for name in MODULES}


def _cycle(graph=GRAPH):
    """One import cycle as a list of modules, or None."""
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                return stack[stack.index(n):] + [n]
            if n not in state:
                found = visit(n)
                if found:
                    return found
        stack.pop()
        state[m] = "done"
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_the_graph_reader_sees_imports_and_cycles():
    # the checks below are only as good as this reader: it must find the arrows we know of
    assert "numkan.kernels" in GRAPH["numkan.model"]           # from .kernels import get_backend
    assert "numkan.train" in GRAPH["numkan.model"]             # from . import ..., train as _train
    assert "numkan.kernels.cpu" in GRAPH["numkan.kernels"]     # deferred, inside a function
    assert "numkan.spline" in GRAPH["numkan.layer"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    above = {m: GRAPH[m] - {n for n in GRAPH[m] if n.startswith("numkan.kernels.")}
             for m in MODULES if not m.startswith("numkan.kernels.")}
    above["numkan.spline"] = above["numkan.spline"] | {"numkan.layer"}
    cycle = _cycle(above)
    assert cycle is not None and "numkan.layer" in cycle and "numkan.spline" in cycle


def test_no_import_cycle():
    assert _cycle() is None, f"import cycle: {' -> '.join(_cycle())}"


def test_layers_run_one_way():
    """kernels -> spline -> layer -> features -> model: nothing imports upwards."""
    def reach(m, seen=None):
        seen = set() if seen is None else seen
        for n in GRAPH[m]:
            if n not in seen:
                seen.add(n)
                reach(n, seen)
        return seen

    for m in MODULES:
        if m.startswith("numkan.kernels"):
            assert not {n for n in reach(m) if not n.startswith("numkan.kernels")}, m
    assert not reach("numkan.spline") & {"numkan.layer", "numkan.model"}
    assert "numkan.model" not in reach("numkan.layer")
    for f in FEATURES:
        assert "numkan.model" not in reach(f"numkan.{f}"), f"numkan.{f} reaches numkan.model"
        assert "numkan" not in GRAPH[f"numkan.{f}"], f"numkan.{f} imports the package itself"


def _import_alone(name):
    r = subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True, text=True,
                       cwd=str(ROOT), timeout=300)
    return name, r.returncode, r.stderr[-2000:]


def test_every_module_imports_first_in_a_fresh_interpreter():
    names = sorted(MODULES)
    try:
        import numba.cuda  # noqa: F401
    except ImportError:  # the cuda extra is not installed: its module cannot import
        names.remove("numkan.kernels.cuda")
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(_import_alone, names))
    failed = [(n, err) for n, rc, err in results if rc != 0]
    assert not failed, failed


_WRITERS = ("model", "new", "self")


def _state_writes_outside_the_class(path):
    """(line, text) of assignments to ``model.<attr>`` (or ``new``/``self`` in a
    module-level function) outside numkan/model.py."""
    tree = ast.parse(path.read_text())
    hits = []
    for fn in tree.body:
        if not isinstance(fn, ast.FunctionDef):
            continue
        for node in ast.walk(fn):
            targets = node.targets if isinstance(node, ast.Assign) else \
                [node.target] if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else []
            for t in targets:
                for e in ast.walk(t):
                    if isinstance(e, ast.Attribute) and isinstance(e.value, ast.Name) \
                            and e.value.id in _WRITERS and isinstance(e.ctx, ast.Store):
                        hits.append((node.lineno, ast.unparse(node)))
        for node in ast.walk(fn):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and \
                    node.func.id == "setattr" and isinstance(node.args[0], ast.Name) and \
                    node.args[0].id in _WRITERS:
                hits.append((node.lineno, ast.unparse(node)))
    return hits


@pytest.mark.parametrize("feature", FEATURES)
def test_feature_modules_do_not_write_a_models_state(feature):
    assert not _state_writes_outside_the_class(PKG / f"{feature}.py")


def test_the_state_write_check_can_fail(tmp_path):
    p = tmp_path / "m.py"
    p.write_text("def f(model):\n    model.input_id = 3\n\ndef g(self):\n    setattr(self, 'x', 1)\n")
    assert len(_state_writes_outside_the_class(p)) == 2


def test_no_getattr_default_for_declared_state():
    declared = ("input_id", "cache_data", "node_scores", "edge_scores", "sp_trainable",
                "sb_trainable", "symbolic_affine", "symbolic_mask", "symbolic_names")
    pattern = re.compile(r"getattr\(\w+, \"(" + "|".join(declared) + r")\", ")
    for name, path in MODULES.items():
        assert not pattern.search(path.read_text()), name


def test_a_kan_declares_all_its_state():
    """No call adds an attribute to a model: its attributes after fit, attribute,
    pruning, refine and load are those __init__ made."""
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (64, 3))
    y = (np.sin(np.pi * x[:, :1]) + x[:, 1:2] ** 2)
    model = nk.KAN([3, 4, 1], grid=3, seed=0, device="numpy")
    declared = set(vars(model))
    for name in ("node_scores", "edge_scores", "input_id", "cache_data"):
        assert getattr(model, name) is None, name
    model.fit({"train_input": x, "train_label": y, "test_input": x, "test_label": y},
              steps=2, lamb=0.01, log=0)
    model.attribute()
    assert model.node_scores is not None and model.edge_scores is not None
    pruned = model.prune_input(active_inputs=[0, 1])
    assert list(pruned.input_id) == [0, 1] and pruned.cache_data.shape == (64, 2)
    pruned = pruned.prune()
    refined = pruned.refine(6)
    refined.fix_symbolic(0, 0, 0, "sin")
    loaded = nk.load(refined.save(os.path.join(os.environ.get("TMPDIR", "/tmp"),
                                               f"numkan_state_{os.getpid()}")), device="numpy")
    assert list(loaded.input_id) == [0, 1]
    for m in (model, pruned, refined, loaded):
        assert set(vars(m)) == declared, set(vars(m)) ^ declared


def test_version_matches_pyproject():
    text = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^version = "([^"]+)"', text, re.M).group(1) == nk.__version__


def test_the_readme_layout_lists_every_module_in_import_order():
    text = (ROOT / "README.md").read_text().split("## Layout")[1].split("\n## ")[0]
    files = [line.split()[0] for line in text.splitlines() if line.strip().startswith("numkan/")]
    mods = [f[:-3].replace("/", ".").replace(".__init__", "") for f in files]
    assert sorted(mods) == sorted(m for m in MODULES if m != "numkan"), "README Layout vs the package"
    pos = {m: i for i, m in enumerate(mods)}
    upward = [(m, n) for m in mods for n in GRAPH[m] if n in pos and pos[n] > pos[m]]
    assert not upward, f"README Layout: these files import a file listed below them: {upward}"
