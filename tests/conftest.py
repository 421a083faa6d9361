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
