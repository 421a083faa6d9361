"""Seeds: the same seed gives the same model on every backend and dtype; the
kernels give the same numbers every time they run on the same inputs."""
import numpy as np
import pytest

import numkan as nk
from numkan.kernels import get_backend

CONFIGS = [
    dict(width=[2, 5, 1], grid=5, k=3),
    dict(width=[1, 1], grid=1, k=1),
    dict(width=[3, 4, 2, 3], grid=12, k=5, base_fun="identity", grid_range=(-2.5, 0.5)),
]


def cuda_available():
    try:
        get_backend("cuda")
    except Exception:  # no numba-cuda, no GPU, or no driver
        return False
    return True


DEVICES = ["numpy", "cpu"] + (["cuda"] if cuda_available() else [])


def host_state(model):
    """Every array that initialisation sets, copied to host."""
    host = model.backend.to_host
    return {f"{l}.{n}": np.array(host(getattr(layer, n)))
            for l, layer in enumerate(model.layers)
            for n in ("knots", "coef", "scale_base", "scale_sp", "mask")}


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: str(c["width"]))
def test_same_seed_same_parameters_on_every_backend(cfg):
    states = {d: host_state(nk.KAN(**cfg, seed=11, device=d)) for d in DEVICES}
    first = states["numpy"]
    for device, state in states.items():
        assert state.keys() == first.keys()
        for key in first:
            np.testing.assert_array_equal(state[key], first[key], err_msg=f"{device}: {key}")


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: str(c["width"]))
def test_seeds(cfg):
    a = host_state(nk.KAN(**cfg, seed=0, device="numpy"))
    again = host_state(nk.KAN(**cfg, seed=0, device="numpy"))
    b = host_state(nk.KAN(**cfg, seed=1, device="numpy"))
    for key in a:
        np.testing.assert_array_equal(again[key], a[key], err_msg=key)
        if key.endswith((".coef", ".scale_base")):  # the drawn arrays; grid, scale_sp, mask are fixed
            assert not np.array_equal(a[key], b[key]), f"seeds 0 and 1 gave the same {key}"
        else:
            np.testing.assert_array_equal(b[key], a[key], err_msg=key)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: str(c["width"]))
def test_float32_model_is_float64_model_cast(device, cfg):
    m64 = host_state(nk.KAN(**cfg, seed=5, dtype=np.float64, device=device))
    m32 = host_state(nk.KAN(**cfg, seed=5, dtype=np.float32, device=device))
    for key in m64:
        assert m32[key].dtype == np.float32, key
        np.testing.assert_array_equal(m32[key], m64[key].astype(np.float32), err_msg=key)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("device", DEVICES)
def test_repeated_runs_are_bitwise_identical(device, dtype):
    """Parallel kernels reduce in a fixed order: the same call gives the same bits.

    The batch is large against the inputs, so the backward pass splits the
    batch over threads and sums partial gradients.
    """
    rng = np.random.default_rng(0)
    x, y = rng.uniform(-1.5, 1.5, (3000, 2)), rng.uniform(-1, 1, (3000, 3))
    model = nk.KAN([2, 4, 3], grid=7, k=3, seed=2, dtype=dtype, device=device)
    runs = [model.loss_and_grad(x, y) for _ in range(3)]
    for loss, grads in runs[1:]:
        assert loss == runs[0][0]
        for name in grads:
            np.testing.assert_array_equal(grads[name], runs[0][1][name], err_msg=name)
    assert any(np.any(g != 0) for g in runs[0][1].values())
