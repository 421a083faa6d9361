"""Processes and threads around the CPU kernels (``numkan.kernels._parallel``).

A child forked after numkan ran either runs numkan (a fork-safe threading
layer) or gets a RuntimeError that says to use "spawn" (GNU OpenMP, which
Numba would otherwise kill, leaving ``Pool.map`` waiting forever). Under
"workqueue", which is fork-safe but not thread-safe, several Python threads
may call numkan at once. Each case runs in a fresh interpreter, with the
threading layer it names, so that a hang or a crash fails the test instead
of ending the test run.
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")

FORK = textwrap.dedent("""
    import json, multiprocessing as mp
    import numba, numpy as np, numkan as nk

    def work(seed):
        m = nk.KAN([2, 5, 1], seed=seed)
        x = np.linspace(-1, 1, 20).reshape(10, 2)
        y = m(x)
        m.fit(nk.create_dataset(lambda x: x[:, :1] * x[:, 1:], n_var=2, train_num=40,
                                test_num=10, seed=seed), opt="Adam", lr=0.01, steps=2, log=0)
        # a batch large enough for a parallel launch (a small model like the one above
        # runs on the calling thread and never starts Numba's threads)
        big = nk.KAN([8, 1], seed=seed)(np.linspace(-1, 1, 8 * 17000).reshape(17000, 8))
        return y.tolist() + [float(big.sum())]

    expected = [work(s) for s in range(3)]  # numkan runs (and fits) before the fork
    out = {"layer": numba.threading_layer()}
    with mp.get_context("fork").Pool(2) as pool:
        try:
            out["ok"] = pool.map_async(work, range(3)).get(timeout=120) == expected
        except Exception as exc:
            out["error"] = [type(exc).__name__, str(exc)]
    print(json.dumps(out))
""")

THREADS = textwrap.dedent("""
    import json, threading
    import numba, numpy as np, numkan as nk

    models = [nk.KAN([8, 16, 4], seed=s) for s in range(4)]
    x = np.random.default_rng(0).uniform(-1, 1, (64, 8))
    expected = [m(x) for m in models]
    same = []

    def run(m, y):
        for _ in range(50):
            same.append(bool(np.array_equal(m(x), y)))

    threads = [threading.Thread(target=run, args=a) for a in zip(models, expected)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps({"layer": numba.threading_layer(), "same": same}))
""")


def run(script, layer=None):
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_THREADING_LAYER"}
    if layer is not None:
        env["NUMBA_THREADING_LAYER"] = layer
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=400)
    assert proc.returncode == 0, f"exit {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_forked_pool_after_numkan_runs_or_says_spawn():
    """Numba's own choice of layer: omp (the usual Linux wheel) or a fork-safe one."""
    out = run(FORK)
    if out["layer"] == "omp":
        name, message = out.get("error", [None, ""])
        assert name == "RuntimeError" and "spawn" in message and "omp" in message, out
    else:
        assert out.get("ok") is True, out


def test_forked_pool_runs_numkan_under_workqueue():
    out = run(FORK, "workqueue")
    assert out["layer"] == "workqueue" and out.get("ok") is True, out


def test_threads_share_the_workqueue_layer():
    """workqueue aborts the process on concurrent launches; numkan's launches take turns."""
    out = run(THREADS, "workqueue")
    assert out["layer"] == "workqueue" and len(out["same"]) == 200 and all(out["same"]), out
