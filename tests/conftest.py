"""Shared test settings and helpers.

Hypothesis profiles (choose with ``HYPOTHESIS_PROFILE=<name>``):

    numkan    default: few examples per property so the whole suite stays quick
    ci        the same examples as numkan, drawn from a fixed seed, so that a CI
              run is reproducible (chosen when the CI environment variable is set;
              local runs keep exploring new examples)
    thorough  many more examples, for a local deep run before a release

``deadline=None`` everywhere: the first call of a Numba kernel compiles it,
which would otherwise count against the example's time limit.
"""
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "numkan", max_examples=30, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile(
    "thorough", max_examples=400, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("ci", settings.get_profile("numkan"), derandomize=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "numkan"))

# the host backends every test runs on; "cuda" has its own tests
HOST_DEVICES = ("numpy", "cpu")


def worst(actual, expected, floor=0.0):
    """Largest entrywise error |actual - expected| / max(|expected|, floor) and its index.

    ``floor`` sets the scale below which errors count as absolute: entries
    near zero carry only the rounding of the terms that cancelled to make them.
    Returns ``(error, index, actual[index], expected[index])``.
    """
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"shape {actual.shape} != expected {expected.shape}"
    if actual.size == 0:
        return 0.0, (), None, None
    err = np.abs(actual - expected) / np.maximum(np.abs(expected), floor if floor > 0 else np.finfo(float).tiny)
    err = np.where(np.isnan(err), np.inf, err)  # NaN in either array is a failure
    idx = np.unravel_index(int(np.argmax(err)), err.shape)
    return float(err[idx]), tuple(int(v) for v in idx), float(actual[idx]), float(expected[idx])


def assert_close(name, actual, expected, rtol, floor=0.0):
    """Fail with the worst index when any entry is off by more than ``rtol`` (see ``worst``)."""
    err, idx, a, e = worst(actual, expected, floor)
    assert err <= rtol, (f"{name}: worst relative error {err:.3g} > {rtol:g} at index {idx}: "
                         f"got {a!r}, expected {e!r}")


@pytest.fixture(params=HOST_DEVICES)
def host_device(request):
    return request.param


# ---------------------------------------------------------------------------
# Suites that run in processes of their own (the CUDA simulator's checks, test_cuda.py;
# the PTX/SASS compiles of every CUDA kernel variant, test_cuda_compile.py) take about 8
# of the suite's 18 minutes on a 2-core machine with an empty kernel cache. They start
# as soon as collection is done, when one of their tests is selected, and run beside the
# in-process tests (on the other core) instead of after them; a test then waits for its
# suite's output (``background_output``); the tests of those modules run last. A module
# offers its suite with ``start_in_background(selected_test_names)``.
ROOT = Path(__file__).resolve().parent.parent
_BACKGROUND = {}  # key -> [(Popen, stdout file, stderr file)], or the finished outputs


def start_background(key, commands):
    """Start ``commands`` (a list of (argv, env)) under ``key`` unless already started.
    Output goes to temporary files, not pipes: a child never waits for a reader."""
    if key in _BACKGROUND:
        return
    runs = []
    for argv, env in commands:
        out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
        runs.append((subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=err, text=True), out, err))
    _BACKGROUND[key] = runs


def background_output(key, commands, timeout):
    """[(returncode, stdout, stderr)] of ``commands`` under ``key``, started now if they were
    not at collection; waits for them (``subprocess.TimeoutExpired`` after ``timeout``
    seconds of waiting)."""
    start_background(key, commands)
    runs = _BACKGROUND[key]
    if runs and isinstance(runs[0][0], subprocess.Popen):  # still running: wait, then keep the outputs
        done = []
        for proc, out, err in runs:
            proc.wait(timeout=timeout)
            out.seek(0)
            err.seek(0)
            done.append((proc.returncode, out.read(), err.read()))
            out.close()
            err.close()
        _BACKGROUND[key] = runs = done
    return runs


def pytest_collection_modifyitems(session, config, items):
    """The tests of modules with a background suite run last (in their order), so that the
    in-process tests run while the suites do rather than wait for them."""
    offers = [getattr(item, "module", None) is not None and hasattr(item.module, "start_in_background")
              for item in items]
    items[:] = [it for it, o in zip(items, offers) if not o] + [it for it, o in zip(items, offers) if o]


def pytest_collection_finish(session):
    if session.config.option.collectonly:
        return
    by_module = {}
    for item in session.items:
        mod = getattr(item, "module", None)
        if mod is not None and hasattr(mod, "start_in_background"):
            by_module.setdefault(mod, []).append(item.originalname)
    for mod, names in by_module.items():
        mod.start_in_background(names)


def pytest_sessionfinish(session):
    """A run that stops early (-x, Ctrl-C) leaves no background suite running."""
    for runs in _BACKGROUND.values():
        for run in runs:
            if isinstance(run[0], subprocess.Popen) and run[0].poll() is None:
                run[0].kill()
                run[0].wait()
