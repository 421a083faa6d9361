"""Host storage shared by the NumPy and CPU backends: plain C-contiguous ndarrays.

These are the storage half of the backend interface (see ``numkan.kernels``):
the reference and the Numba CPU backend keep every array in host memory, so
they share one implementation. ``asarray`` also accepts a device array
(numba's, or CuPy's), copied to the host.
"""
import numpy as np


def asarray(a, dtype):
    """Host or device array -> host storage (a C-contiguous ndarray of ``dtype``).

    A device array (numba's, or CuPy's with ``.get()``) is copied to the host.
    """
    if not isinstance(a, np.ndarray):
        if hasattr(a, "copy_to_host"):
            a = a.copy_to_host()
        elif hasattr(a, "__cuda_array_interface__"):
            a = a.get() if hasattr(a, "get") else _device_to_host(a)
    return np.ascontiguousarray(a, dtype=dtype)


def _device_to_host(a):
    from numba import cuda  # only reached with a device array, so numba-cuda is there
    return cuda.as_cuda_array(a).copy_to_host()


def to_host(a):
    """This backend's storage -> host ndarray (a copy)."""
    return np.array(a)


def zeros(shape, dtype):
    return np.zeros(shape, dtype=dtype)


def fill(a, value):
    a[...] = value


def copy_into(dst, src):
    """Copy the backend array ``src`` into the existing ``dst`` (same shape and dtype), in place."""
    if dst.shape != src.shape or dst.dtype != src.dtype:
        raise ValueError(f"copy_into needs arrays of one shape and dtype, got {dst.shape} {dst.dtype} "
                         f"and {src.shape} {src.dtype}")
    dst[...] = src


def upload_into(dst, src):
    """Copy the host ndarray ``src`` into the existing ``dst`` (same shape and dtype), in
    place: on host storage, ``copy_into``."""
    copy_into(dst, src)


def all_finite(*arrays):
    """True when no entry of any of ``arrays`` is NaN or inf (the boundary check for backend arrays)."""
    return all(bool(np.isfinite(a).all()) for a in arrays)
