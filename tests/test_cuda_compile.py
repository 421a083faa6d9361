"""The CUDA kernels compile for real GPUs: PTX and SASS for sm_80 and sm_90, no GPU needed.

The simulator tests (``test_cuda.py``) check the kernels' maths but run them as
Python, which accepts code the CUDA compiler rejects. Here every kernel variant
the launchers can pick is compiled with NVVM and assembled with ptxas
(``cuda_ptx.py``, in subprocesses that share the work between the cores), and
must compile, spill nothing, fit its shared memory, keep the occupancy its
launch bounds promise and, for the layer kernels, add with no atomics (their
sums have a fixed order, so results are bit-identical from run to run).
"""
import ast
import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

from conftest import background_output, start_background

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CUDA_PY = ROOT / "numkan" / "kernels" / "cuda.py"
STATIC_SHARED_LIMIT = 48 * 1024  # static + dynamic shared memory without an opt-in attribute
LAYER_KERNELS = ("forward", "backward", "moments_forward", "moments_backward")


def _shard_commands():
    env = dict(os.environ)
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    n = max(1, min(4, os.cpu_count() or 1))
    return [([sys.executable, str(HERE / "cuda_ptx.py"), "--shard", f"{s}/{n}"], env) for s in range(n)]


def _compile_results():
    results = []  # the shards started at collection (conftest's background suites), or now
    for code, out, err in background_output("cuda ptx", _shard_commands(), timeout=1800):
        assert code == 0, f"cuda_ptx.py failed:\n{out[-3000:]}\n{err[-3000:]}"
        results += [json.loads(line[7:]) for line in out.splitlines() if line.startswith("RESULT ")]
    return results


def _cuda_ptx():
    """tests/cuda_ptx.py as a module (it never imports numba.cuda at the top)."""
    sys.path.insert(0, str(HERE))
    try:
        import cuda_ptx
    finally:
        sys.path.remove(str(HERE))
    return cuda_ptx


def start_in_background(selected):
    """conftest's hook: the shards start at collection when a test that reads them is selected."""
    reads = {"test_every_variant_compiles_for_both_targets_without_spills",
             "test_shared_memory_and_occupancy_within_the_launchers_budget", "test_layer_kernels_add_without_atomics"}
    if reads & set(selected) and importlib.util.find_spec("numba.cuda") is not None and _cuda_ptx().ptxas_path():
        start_background("cuda ptx", _shard_commands())


@pytest.fixture(scope="module")
def compiled():
    pytest.importorskip("numba.cuda")
    cuda_ptx = _cuda_ptx()
    if cuda_ptx.ptxas_path() is None:
        pytest.skip("ptxas not installed (pip install 'numkan[cuda]' brings it)")
    results = _compile_results()
    out = os.environ.get("NUMKAN_COMPILE_TABLE")  # where to keep the table for RESULTS.md
    if out:
        Path(out).write_text(cuda_ptx.summary(results) + "\n\n" + cuda_ptx.table(results) + "\n")
    return cuda_ptx, results


def test_every_variant_compiles_for_both_targets_without_spills(compiled):
    cuda_ptx, results = compiled
    errors = [f"{r['name']} {r['target']}: {r['error']}" for r in results if "error" in r]
    assert not errors, "\n\n".join(errors[:5])
    names = {r["name"] for r in results}
    # every order and dtype of every layer kernel, and the training kernels
    for kind in LAYER_KERNELS:
        for k in cuda_ptx.ORDERS:
            for dt in cuda_ptx.DTYPES:
                assert any(n.startswith(f"{kind} k={k} {dt} ") for n in names), (kind, k, dt)
    for kind in ("backward_finish", "moments_forward_finish", "knot_reciprocals", "mse", "adam",
                 "all_finite", "fill", "cast1d", "cast2d"):
        assert any(n.startswith(kind + " ") for n in names), kind
    for r in results:  # every variant on every target
        assert {q["target"] for q in results if q["name"] == r["name"]} == {"sm_80", "sm_90"}
    spills = [f"{r['name']} {r['target']}: {r['spill_stores']} B stored, {r['spill_loads']} B loaded"
              for r in results if r["spill_stores"] or r["spill_loads"]]
    assert not spills, "register spills:\n" + "\n".join(spills)


def test_shared_memory_and_occupancy_within_the_launchers_budget(compiled):
    cuda_ptx, results = compiled
    sys.path.insert(0, str(ROOT))
    from numkan.kernels import cuda as C  # noqa: E402  (compile-only use: no launch)
    for r in results:
        total = r["smem"] + r["dynamic_smem"]
        assert total <= STATIC_SHARED_LIMIT, (r["name"], r["target"], total)
        if r["name"].split()[0] in LAYER_KERNELS:
            assert total <= C._SHARED_BUDGET, (r["name"], r["target"], total, C._SHARED_BUDGET)
            words = r["name"].split()
            k, dt, TX = int(words[1][2:]), words[2], int(words[3][3:])
            kind = words[0] if words[0] in ("backward", "moments_backward") else "forward"
            bounds = C.launch_bounds(kind, k, dt, TX)
            assert r["threads"] == bounds[0]
            # the launch bounds' promise: at least that many blocks fit by registers and shared memory
            assert r["blocks_per_sm"] >= bounds[1], (r["name"], r["target"], r["registers"])


def test_layer_kernels_add_without_atomics(compiled):
    """Sums in a fixed order: no atom./red. instruction in any layer kernel's PTX."""
    _, results = compiled
    found = [f"{r['name']} {r['target']}: {r['atomics']}" for r in results
             if r["name"].split()[0] in LAYER_KERNELS + ("backward_finish", "moments_forward_finish")
             and r["atomics"]]
    assert not found, "atomics in:\n" + "\n".join(found)


def _array_shapes(tree):
    """(line, shape expression) of every cuda.local.array / cuda.shared.array call."""
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "array" and isinstance(node.func.value, ast.Attribute)
                and node.func.value.attr in ("local", "shared")):
            yield node.lineno, node.args[0]


def test_array_shapes_are_names_or_literals():
    """The CUDA compiler needs local and shared array shapes it can fold to constants: a
    literal or a name (bound outside the kernel), never an expression such as 2 * KP1,
    which the simulator accepts and the compiler rejects. Checked without numba-cuda."""
    tree = ast.parse(CUDA_PY.read_text())
    shapes = list(_array_shapes(tree))
    assert len(shapes) > 10  # the check sees the kernels' arrays
    ok = (ast.Name, ast.Constant)
    bad = [(line, ast.unparse(s)) for line, s in shapes
           if not (isinstance(s, ok) or (isinstance(s, ast.Tuple) and all(isinstance(e, ok) for e in s.elts)))]
    assert not bad, f"array shapes that are expressions (cuda.py line, shape): {bad}"
