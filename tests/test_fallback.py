"""Without Numba: ``import numkan`` works and device="cpu" runs the reference
kernels, with exactly one RuntimeWarning that says numba is missing; that
includes a broken install whose ``import numba`` raises OSError. With Numba
present, compiled kernels that fail to import are an error naming the cause,
never a silent fall-back.

Runs in fresh interpreters in which ``import numba`` (or one module of the
kernels) fails, so this process's Numba is left alone.
"""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np

SCRIPT = textwrap.dedent("""
    import json, sys, warnings
    sys.modules["numba"] = None          # any "import numba..." now raises ImportError
    try:
        import numba
        sys.exit("numba is still importable")
    except ImportError:
        pass

    import numpy as np
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import numkan as nk
        cpu = [nk.KAN([2, 4, 3], grid=6, k=3, seed=4, device="cpu") for _ in range(2)]
        cpu32 = nk.KAN([2, 4, 3], grid=6, k=3, seed=4, device="cpu", dtype=np.float32)
    ref = nk.KAN([2, 4, 3], grid=6, k=3, seed=4, device="numpy")

    rng = np.random.default_rng(0)
    x, y = rng.uniform(-1.5, 1.5, (20, 2)), rng.uniform(-1, 1, (20, 3))
    out = {
        "warnings": [[w.category.__name__, str(w.message)] for w in caught
                     if issubclass(w.category, RuntimeWarning)],
        "backend": [m.backend.__name__ for m in cpu + [cpu32]],
        "compiled_loaded": "numkan.kernels.cpu" in sys.modules,
        "y_cpu": cpu[0](x).tolist(), "y_ref": ref(x).tolist(),
    }
    for name, model in (("cpu", cpu[0]), ("ref", ref)):
        loss, grads = model.loss_and_grad(x, y)
        model.zero_grad()
        model.forward(x)
        out["loss_" + name] = loss
        out["grads_" + name] = {n: g.tolist() for n, g in grads.items()}
        out["dx_" + name] = model.backward(np.ones((20, 3))).tolist()
    print(json.dumps(out))
""")


def test_cpu_falls_back_to_reference_without_numba():
    env = dict(os.environ, PYTHONWARNINGS="")
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, f"subprocess failed:\n{proc.stdout}\n{proc.stderr}"
    out = json.loads(proc.stdout.strip().splitlines()[-1])

    assert len(out["warnings"]) == 1, f"expected one RuntimeWarning, got {out['warnings']}"
    category, message = out["warnings"][0]
    assert category == "RuntimeWarning" and "numba" in message.lower(), message
    assert out["backend"] == ["numkan.kernels.reference"] * 3
    assert not out["compiled_loaded"]

    # the fallback is the reference: the same numbers, bit for bit
    assert out["y_cpu"] == out["y_ref"]
    assert out["loss_cpu"] == out["loss_ref"]
    assert out["grads_cpu"] == out["grads_ref"]
    assert out["dx_cpu"] == out["dx_ref"]
    assert np.all(np.isfinite(out["y_cpu"])) and np.any(np.asarray(out["dx_cpu"]) != 0)

    # and the reference of this process, with Numba present, agrees
    import numkan as nk
    rng = np.random.default_rng(0)
    x = rng.uniform(-1.5, 1.5, (20, 2))
    np.testing.assert_array_equal(np.asarray(out["y_cpu"]),
                                  nk.KAN([2, 4, 3], grid=6, k=3, seed=4, device="numpy")(x))


BROKEN = textwrap.dedent("""
    import json, sys, warnings
    import importlib.abc

    class Broken(importlib.abc.MetaPathFinder):
        # what a broken install does at import time, for one module name
        def __init__(self, name, exc):
            self.name, self.exc = name, exc
        def find_spec(self, fullname, path=None, target=None):
            if fullname == self.name:
                raise self.exc

    case = sys.argv[1]
    if case == "llvmlite":   # numba's shared library does not load: OSError from import numba
        sys.meta_path.insert(0, Broken("numba", OSError("libllvmlite.so: cannot open shared object file")))
    else:                    # numba imports; a module of numkan's compiled kernels does not
        sys.meta_path.insert(0, Broken("numkan.kernels._vexp", ImportError("simulated: no _vexp")))
    out = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import numkan as nk
        try:
            out["backend"] = [nk.KAN([2, 3, 1]).backend.__name__ for _ in range(2)]
        except Exception as exc:
            out["error"] = [type(exc).__name__, str(exc)]
    out["warnings"] = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    print(json.dumps(out))
""")


def run_broken(case):
    env = dict(os.environ, PYTHONWARNINGS="")
    proc = subprocess.run([sys.executable, "-c", BROKEN, case], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, f"subprocess failed:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_oserror_from_import_numba_falls_back_with_one_warning():
    out = run_broken("llvmlite")
    assert out.get("backend") == ["numkan.kernels.reference"] * 2, out
    assert len(out["warnings"]) == 1 and "OSError" in out["warnings"][0], out
    assert "libllvmlite" in out["warnings"][0], out


def test_kernels_that_fail_to_import_with_numba_present_are_an_error_naming_the_cause():
    out = run_broken("kernels")
    assert "backend" not in out and out["warnings"] == [], out
    name, message = out["error"]
    assert name == "RuntimeError", out
    assert "numkan.kernels.cpu" in message and "simulated: no _vexp" in message, message
