"""Checks at the public boundary. Kernels assume what these guarantee.

Every error names the argument, the value it got and what was expected.
"""
import numbers

import numpy as np


def check_int(name, value, minimum=None):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return value


def check_float(name, value, minimum=None, positive=False):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return value


def check_width(width, mult_arity=2):
    """Node counts and product-node arities from pykan's ``width`` and ``mult_arity``.

    width: a list of at least two node layers, each an integer n >= 1 (n sum
    nodes) or a pair [n_sum, n_mult] (n_mult multiplication nodes after the
    sum nodes; n_sum + n_mult >= 1). The inputs have no product nodes.
    mult_arity: an integer >= 2 (every product node multiplies that many
    subnodes), or one list per node layer with the arity of each of its
    product nodes, as in pykan (e.g. [[], [2, 3], []]).

    Returns ``(nodes, arity)``: ``nodes[l]`` the number of nodes of layer l,
    ``arity[l]`` the list of arities of its product nodes (empty for none).
    """
    if isinstance(width, (str, bytes)) or not hasattr(width, "__len__"):
        raise ValueError(f"width must be a list of layer sizes such as [2, 5, 1] or [2, [5, 2], 1], "
                         f"got {width!r}")
    width = list(width)
    if len(width) < 2:
        raise ValueError(f"width must have at least 2 entries (inputs and outputs), got {width!r}")
    is_int = lambda w: isinstance(w, numbers.Integral) and not isinstance(w, (bool, np.bool_))
    sums, mults = [], []
    for n, w in enumerate(width):
        if is_int(w) and w >= 1:
            sums.append(int(w))
            mults.append(0)
            continue
        pair = not isinstance(w, (str, bytes)) and hasattr(w, "__len__") and len(w) == 2 and \
            all(is_int(t) and t >= 0 for t in w) and sum(w) >= 1
        if not pair:
            raise ValueError(f"width[{n}] must be an integer >= 1 or a pair [n_sum, n_mult] of integers "
                             f">= 0 with n_sum + n_mult >= 1, got {w!r} in width={width!r}")
        sums.append(int(w[0]))
        mults.append(int(w[1]))
    if mults[0]:
        raise ValueError(f"width[0] describes the inputs, which cannot be multiplication nodes; "
                         f"got {width[0]!r}")
    if is_int(mult_arity):
        if mult_arity < 2:
            raise ValueError(f"mult_arity must be an integer >= 2 or a list of lists of them, "
                             f"got {mult_arity!r}")
        arity = [[int(mult_arity)] * m for m in mults]
    else:
        want = f"mult_arity must be an integer >= 2, or one list per node layer ({len(width)}) " \
               f"with one integer >= 2 per multiplication node ({mults})"
        if isinstance(mult_arity, (str, bytes)) or not hasattr(mult_arity, "__len__") or \
                len(mult_arity) != len(width):
            raise ValueError(f"{want}, got {mult_arity!r}")
        arity = []
        for m, row in zip(mults, mult_arity):
            if isinstance(row, (str, bytes)) or not hasattr(row, "__len__") or len(row) != m or \
                    not all(is_int(t) and t >= 2 for t in row):
                raise ValueError(f"{want}, got {mult_arity!r}")
            arity.append([int(t) for t in row])
    return [s + m for s, m in zip(sums, mults)], arity


def check_dtype(dtype):
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    # "is None" first: np.dtype(...) == None is True for float64 (None means float64 to numpy)
    if dt is None or dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
    return dt


def check_range(name, r):
    """A pair (lo, hi) of finite numbers with lo < hi."""
    try:
        lo, hi = (float(t) for t in r)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair (lo, hi) of numbers, got {r!r}") from None
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise ValueError(f"{name} must be finite with lo < hi, got {r!r}")
    return lo, hi


def check_grid_range(grid_range):
    return check_range("grid_range", grid_range)


def check_base_fun(base_fun):
    from .kernels._scalar import BASE_CODES
    if not isinstance(base_fun, str) or base_fun not in BASE_CODES:
        raise ValueError(f"base_fun must be one of {tuple(BASE_CODES)}, got {base_fun!r}")
    return base_fun


def check_array(name, a, n_cols, dtype, n_rows=None):
    """A finite 2-D host array of shape (rows, n_cols), converted to ``dtype``.

    Accepts anything ``np.asarray`` accepts. Returns a new C-contiguous array
    (never a view of the caller's data, so later writes cannot alias it).
    """
    if hasattr(a, "__cuda_array_interface__") and not isinstance(a, np.ndarray):
        a = a.copy_to_host() if hasattr(a, "copy_to_host") else a.get()
    try:
        arr = np.asarray(a)
    except Exception as exc:  # ragged lists and the like
        raise ValueError(f"{name} must be a 2-D numeric array, got {type(a).__name__}: {exc}") from None
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise ValueError(f"{name} must be a numeric array, got dtype {arr.dtype}")
    if np.iscomplexobj(arr):
        raise ValueError(f"{name} must be real, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D with shape (batch, {n_cols}), got shape {arr.shape}")
    if arr.shape[1] != n_cols:
        raise ValueError(f"{name} must have shape (batch, {n_cols}), got {arr.shape}")
    if arr.shape[0] < 1:
        raise ValueError(f"{name} must have at least one row, got shape {arr.shape}")
    if n_rows is not None and arr.shape[0] != n_rows:
        raise ValueError(f"{name} must have shape ({n_rows}, {n_cols}), got {arr.shape}")
    with np.errstate(over="ignore"):  # an overflowing cast is reported just below
        out = np.array(arr, dtype=dtype, order="C", copy=True)
    if not np.all(np.isfinite(out)):
        bad = np.argwhere(~np.isfinite(out))[0]
        raise ValueError(f"{name} must be finite, got {out[tuple(bad)]} at index {tuple(int(v) for v in bad)}"
                         + (" after conversion to " + str(np.dtype(dtype)) if np.all(np.isfinite(arr)) else ""))
    return out


def is_device_array(a):
    """True for an accelerator array (``__cuda_array_interface__``, or numba's simulator array)."""
    return not isinstance(a, np.ndarray) and (
        hasattr(a, "__cuda_array_interface__") or bool(getattr(a, "__cuda_ndarray__", False)))


def _device_shape_dtype(a):
    cai = getattr(a, "__cuda_array_interface__", None)
    if cai is not None:
        return tuple(cai["shape"]), np.dtype(cai["typestr"])
    return tuple(a.shape), np.dtype(a.dtype)


def check_device_array(name, a, n_cols, dtype, backend, n_rows=None, allow_1d=False):
    """``check_array`` for a device array: the same checks, made without copying it to the host.

    Shape and dtype come from the array's interface; the data are copied (and
    cast) into a new ``backend`` array, whose finiteness the backend checks
    (``backend.all_finite``: one flag comes back, not the data). With
    ``allow_1d`` a (B,) array is taken as (B, 1). Returns the backend array.
    """
    try:
        shape, src = _device_shape_dtype(a)
    except Exception as exc:
        raise ValueError(f"{name} must be a 2-D numeric array, got {type(a).__name__}: {exc}") from None
    if src.kind not in "fiub":
        raise ValueError(f"{name} must be a real numeric array, got dtype {src}")
    if allow_1d and len(shape) == 1:
        shape2 = (shape[0], 1)
    else:
        shape2 = shape
    if len(shape2) != 2:
        raise ValueError(f"{name} must be 2-D with shape (batch, {n_cols}), got shape {shape}")
    if shape2[1] != n_cols:
        raise ValueError(f"{name} must have shape (batch, {n_cols}), got {shape}")
    if shape2[0] < 1:
        raise ValueError(f"{name} must have at least one row, got shape {shape}")
    if n_rows is not None and shape2[0] != n_rows:
        raise ValueError(f"{name} must have shape ({n_rows}, {n_cols}), got {shape}")
    arr = backend.asarray(a, dtype)
    if shape2 != shape:
        arr = arr.reshape(shape2)
    if not backend.all_finite(arr):
        raise ValueError(f"{name} must be finite, got NaN or inf in the device array of shape {shape}"
                         + ("" if src == np.dtype(dtype) else f" (after conversion from {src} to {np.dtype(dtype)})"))
    return arr


def check_knots(name, t, k, dtype):
    """Knots t (I, G + 2k + 1), one row per input, as every kernel can use them in ``dtype``.

    Returns them as a new C-contiguous array of ``dtype``; raises ValueError
    naming ``name`` (what the knots came from, e.g. "grid_range=(0, 1)") and
    the first offending input otherwise. Checked after the cast, since what
    the kernels see is the rounded knots:

    - finite, and non-decreasing along each row;
    - a finite span: t[-1] - t[0] does not overflow (the kernels form x - t
      for x between the first and the last knot);
    - strictly increasing interior t[k..G+k] (G intervals of positive length;
      float32 rounding can merge knots that float64 keeps apart);
    - every positive spacing a normal number, so that its reciprocal, which
      the kernels precompute, is finite.
    """
    dt = check_dtype(dtype)
    try:
        raw = np.asarray(t)
    except Exception as exc:
        raise ValueError(f"{name} must give a 2-D array of knots, got {type(t).__name__}: {exc}") from None
    if raw.dtype == object or not np.issubdtype(raw.dtype, np.number) or np.iscomplexobj(raw):
        raise ValueError(f"{name} must give real knots, got dtype {raw.dtype}")
    k = check_int("k", k, 1)
    if raw.ndim != 2 or raw.shape[0] < 1 or raw.shape[1] < 2 * k + 2:
        raise ValueError(f"{name} must give knots of shape (inputs, G + 2k + 1) with G >= 1 "
                         f"(at least {2 * k + 2} per input for k = {k}), got shape {raw.shape}")
    with np.errstate(over="ignore", invalid="ignore"):
        a = np.array(raw, dtype=dt, order="C", copy=True)
        d = np.diff(a, axis=1)
        width = a[:, -1] - a[:, 0]
    n = a.shape[1]
    G = n - 2 * k - 1
    tiny = np.finfo(dt).tiny
    with np.errstate(invalid="ignore"):
        fine = (np.all(np.isfinite(a)) and np.all(d >= 0) and np.all(np.isfinite(width))
                and np.all(d[:, k:k + G] > 0) and not np.any((d > 0) & (d < tiny)))
    if fine:
        return a
    prefix = f"{name} gives knots unusable in {dt.name}"
    for i in range(a.shape[0]):
        row = a[i]
        if not np.all(np.isfinite(row)):
            m = int(np.argmax(~np.isfinite(row)))
            raise ValueError(f"{prefix}: input {i} has t[{m}] = {row[m]} (must be finite"
                             + (" after conversion" if np.isfinite(np.asarray(raw[i, m], float)) else "") + ")")
        if np.any(d[i] < 0):
            m = int(np.argmax(d[i] < 0))
            raise ValueError(f"{prefix}: input {i} has t[{m}] = {row[m]} > t[{m + 1}] = {row[m + 1]} "
                             "(knots must be non-decreasing)")
        if not np.isfinite(width[i]):
            raise ValueError(f"{prefix}: input {i} spans [{row[0]}, {row[-1]}], whose width "
                             f"overflows {dt.name}")
        inner = d[i, k:k + G]
        if np.any(inner <= 0):
            m = k + int(np.argmax(inner <= 0))
            raise ValueError(f"{prefix}: input {i} has equal interior knots t[{m}] = t[{m + 1}] = {row[m]} "
                             f"(the {G + 1} interior knots must be strictly increasing in {dt.name})")
        if np.any((d[i] > 0) & (d[i] < tiny)):
            m = int(np.argmax((d[i] > 0) & (d[i] < tiny)))
            raise ValueError(f"{prefix}: input {i} has knots t[{m}] = {row[m]} and t[{m + 1}] = {row[m + 1]} "
                             f"only {d[i, m]} apart (below {tiny}, the smallest normal {dt.name}: "
                             "the reciprocal of the spacing would overflow)")
    return a
