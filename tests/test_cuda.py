"""The CUDA backend, tested without a GPU.

numba chooses between the real driver and its CUDA simulator when
``numba.cuda`` is first imported, so the kernel checks (``cuda_cases.py``) run
in a fresh Python process: with ``NUMBA_ENABLE_CUDASIM=1`` everywhere (CI), and
once more on the real device when there is one (``-m gpu``). This process
never imports ``numba.cuda`` itself, so the other tests are not disturbed.
"""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import background_output, start_background

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _env(sim):
    env = dict(os.environ)
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    if sim:
        env["NUMBA_ENABLE_CUDASIM"] = "1"
    return env


def _python(code, sim, timeout=300):
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(sim),
                          capture_output=True, text=True, timeout=timeout)


def _cases_command(sim):
    return [([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(HERE / "cuda_cases.py")],
             _env(sim))]


def _run_cases(sim):
    if sim:  # started at collection (conftest's background suites), or now
        [(code, stdout, stderr)] = background_output("cuda simulator", _cases_command(True), timeout=1800)
    else:
        proc = subprocess.run(_cases_command(False)[0][0], cwd=ROOT, env=_env(False), capture_output=True,
                              text=True, timeout=900)
        code, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
    assert code == 0, f"CUDA checks failed (simulator={sim}):\n{stdout[-6000:]}\n{stderr[-3000:]}"
    assert " passed" in stdout and "failed" not in stdout, stdout[-2000:]


def start_in_background(selected):
    """conftest's hook: the simulator's checks start at collection when their test is selected."""
    if "test_cuda_kernels_under_simulator" in selected and importlib.util.find_spec("numba.cuda") is not None:
        start_background("cuda simulator", _cases_command(True))


def _has_gpu():
    proc = _python("from numba import cuda; print(int(cuda.is_available()))", sim=False, timeout=120)
    return proc.returncode == 0 and proc.stdout.strip().endswith("1")


def test_cuda_kernels_under_simulator():
    """Every CUDA kernel against the reference, model I/O, to(), seeds and Adam, in the simulator."""
    pytest.importorskip("numba.cuda")
    _run_cases(sim=True)


def test_cuda_without_gpu_is_a_clear_runtime_error():
    code = r"""
import numpy as np, numkan as nk
from numba import cuda
if cuda.is_available():
    print("HAS_GPU")
    raise SystemExit(0)
try:
    nk.KAN([2, 1], device="cuda")
except RuntimeError as exc:
    print("ERR", exc)
m = nk.KAN([2, 1], device="cpu")
before = m.params["layers.0.coef"].copy()
try:
    m.to("cuda")
except RuntimeError:
    assert m.device == "cpu" and isinstance(m.params["layers.0.coef"], np.ndarray)
    assert np.array_equal(m.params["layers.0.coef"], before)
    print("TO_UNCHANGED")
"""
    proc = _python(code, sim=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    if "HAS_GPU" in proc.stdout:
        pytest.skip("a CUDA GPU is present")
    assert "ERR" in proc.stdout and "GPU" in proc.stdout, proc.stdout
    assert "TO_UNCHANGED" in proc.stdout, proc.stdout


@pytest.mark.gpu
def test_cuda_kernels_on_gpu():
    """The same checks on real hardware (the H200 machine); skipped without a GPU."""
    if not _has_gpu():
        pytest.skip("no CUDA GPU")
    _run_cases(sim=False)
