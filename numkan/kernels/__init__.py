"""The one device seam: ``get_backend(name)`` is the only code that knows devices.

A backend is a module with the same functions and signatures:

    name                                  "numpy", "cpu" or "cuda"
    asarray(a, dtype) / to_host(a)        host <-> backend storage
    zeros(shape, dtype), fill(a, value)   allocation and in-place fill
    spline_forward(y, x, grid, coef, scale_base, scale_sp, mask, k, base_fun)
    spline_backward(dx, dcoef, dscale_base, dscale_sp,
                    dy, x, grid, coef, scale_base, scale_sp, mask, k, base_fun)

``reference`` (name "numpy") is pure NumPy and is the definition of correct;
``cpu`` compiles the same maths with Numba. Layers, models and training code
call ``backend.<op>`` and never branch on the device.
"""
import warnings

from . import reference

DEVICES = ("cpu", "numpy", "cuda")
_warned_no_numba = False


def get_backend(name):
    """Return the backend module for ``name`` ("cpu", "numpy" or "cuda").

    "cpu" falls back to the NumPy reference, with one warning per process,
    when Numba cannot be imported.
    """
    global _warned_no_numba
    if not isinstance(name, str) or name not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {name!r}")
    if name == "numpy":
        return reference
    if name == "cpu":
        try:
            from . import cpu
        except ImportError as exc:
            if not _warned_no_numba:
                warnings.warn(
                    f"numba could not be imported ({exc}); device='cpu' runs the "
                    "pure-NumPy reference kernels, which are much slower. "
                    "Install numba for the compiled kernels.",
                    RuntimeWarning, stacklevel=3)
                _warned_no_numba = True
            return reference
        return cpu
    try:
        from . import cuda
    except ImportError as exc:
        raise RuntimeError(
            f"device='cuda' needs numba-cuda and an NVIDIA GPU: {exc}. "
            "Install the extra with pip install 'numkan[cuda]'.") from exc
    cuda.check_available()
    return cuda
