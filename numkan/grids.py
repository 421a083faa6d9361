"""Adaptive grids and grid extension (KAN_MATH "Grid update from samples" and "Grid extension").

Both operations move each edge's spline onto new knots by least squares. The
work is done one input at a time: the design matrix of input i's samples is
(N, K) and one factorisation serves all O outputs of that input (the
right-hand side is (N, O)), so nothing of size (B, I, O) or (B, I, O, K) is
ever built.
"""
import numpy as np

from . import _validate as v
from . import spline


def extend_knots(interior, k):
    """Full knot row (G + 2k + 1,) from the G + 1 interior knots: k more on each
    side at spacing h = (last - first) / G."""
    G = interior.size - 1
    with np.errstate(over="ignore", invalid="ignore"):  # callers check the knots (check_knots)
        h = (interior[-1] - interior[0]) / G
        steps = np.arange(1, k + 1)
        return np.concatenate([interior[0] - h * steps[::-1], interior, interior[-1] + h * steps])


def sample_knots(x, G, k, grid_eps, margin=0.0, dtype=np.float64):
    """Knots (G + 2k + 1,) adapted to the samples x (N,) of one input, or None.

    The interior grid blends the G + 1 sample quantiles at positions
    floor(linspace(0, N-1, G+1)) of the sorted samples (weight 1 - grid_eps)
    with the uniform grid linspace(min, max, G+1) (weight grid_eps). None when
    the samples do not span an interval (all equal), or one too narrow for
    G + 1 distinct interior knots in ``dtype`` (with grid_eps = 0, also when
    quantiles coincide): no grid fits them. Knots that overflow (samples near
    the largest float) are returned as computed, for the caller's check
    (``_validate.check_knots``) to reject.

    ``margin`` (a fraction of max - min, default 0 as in KAN_MATH) moves the
    two end knots of both grids outwards by margin * (max - min), so that
    inputs a little beyond the samples still have all k+1 local bases.
    """
    xs = np.sort(x)
    lo, hi = xs[0], xs[-1]
    if not hi - lo > 1e-12 * max(1.0, abs(lo), abs(hi)):
        return None
    adaptive = xs[np.floor(np.linspace(0, xs.size - 1, G + 1)).astype(np.int64)]
    pad = margin * (hi - lo)  # the quantiles' ends are min and max: margin 0 changes nothing
    lo, hi = lo - pad, hi + pad
    adaptive[0], adaptive[-1] = lo, hi
    with np.errstate(over="ignore", invalid="ignore"):
        uniform = np.linspace(lo, hi, G + 1)
        interior = grid_eps * uniform + (1 - grid_eps) * adaptive
        t = extend_knots(interior, k)
        rounded = interior.astype(dtype)
    if np.all(np.isfinite(rounded)) and not np.all(np.diff(rounded) > 0):
        return None
    return t


def update_grid(model, x, margin=0.0, hidden=True):
    """Adapt every layer's knots to the samples x (B, n_in) and re-fit the coefficients.

    Layer by layer (each layer sees the outputs of the already updated layers
    before it, as in pykan): for each input i, new knots from ``sample_knots``
    on that input's samples, then coefficients (K, O) by least squares so that
    every edge's spline keeps its values at those samples. An input whose
    samples are all equal (or too close for distinct knots in the model's dtype)
    keeps its knots. The next layer's samples are this layer's whole output with
    its new knots, symbolic edges included. Knots that would not be usable (a
    span that overflows, from samples near the largest float) raise ValueError.
    The model is changed only after every layer has been computed, so a failed
    call leaves it as it was.

    margin : float >= 0, default 0
        Widen each input's interior grid by this fraction of its samples'
        range on both sides (0 is KAN_MATH's rule, and pykan's). Inputs just
        beyond the samples (test points, or a hidden layer's values for them)
        then keep all k+1 local bases instead of falling where the spline
        fades out.
    hidden : bool, default True
        False adapts only the first layer's knots (to x itself) and leaves
        every later layer's knots and coefficients as they are. ``fit`` does
        this at the first step of a run: a hidden layer's inputs are then the
        values of a network not yet trained in this run (for a new model, a
        narrow random spread), and knots placed on that spread make the
        next layer's splines steep functions of small hidden values, a scale
        that the later updates keep following instead of letting training
        choose it.
    """
    margin = v.check_float("margin", margin, minimum=0)
    if not isinstance(hidden, (bool, np.bool_)):
        raise TypeError(f"hidden must be True or False, got {hidden!r}")
    xh = v.check_array("x", x, model.width[0], np.float64)
    if xh.shape[0] < 2:
        raise ValueError(f"x must have at least 2 rows to place a grid, got shape {xh.shape}")
    be = model.backend
    h = be.asarray(xh, model.dtype)
    new = []
    for l, L in enumerate(model.layers if hidden else model.layers[:1]):
        xl = be.to_host(h).astype(np.float64)
        t_old = be.to_host(L.knots).astype(np.float64)
        c_old = be.to_host(L.coef).astype(np.float64)
        t_new, c_new = t_old.copy(), c_old.copy()
        moved = []  # the inputs that get new knots
        for i in range(L.in_dim):
            t = sample_knots(xl[:, i], L.grid, L.k, L.grid_eps, margin, L.dtype)
            if t is None:
                continue
            t_new[i] = t
            moved.append(i)
        # before any fit on them; the message names x (and margin) as their source
        v.check_knots(f"x (margin={margin}) for layer {l}", t_new, L.k, L.dtype)
        if moved:  # each moved spline keeps its values at the samples
            c_new[moved] = spline.refit(xl[:, moved], t_old[moved], c_old[moved], t_new[moved], L.k, be)
        if not np.all(np.isfinite(c_new)):
            raise ValueError("update_grid produced non-finite coefficients; the model is unchanged")
        new.append((t_new, c_new))
        if hidden and len(new) < len(model.layers):  # the next layer's samples
            # the whole layer on its new knots, symbolic edges included
            h = L.derive(knots=t_new, coef=c_new).forward(h, keep=False)
    for L, (t, c) in zip(model.layers, new):
        L.knots = be.asarray(t, L.dtype)
        L.coef = be.asarray(c, L.dtype)


def refine_knots(t_old, k, G_new):
    """Knots (G_new + 2k + 1,) for grid extension of one input (pykan's rule).

    The new interior knots follow the old interior knots piecewise linearly:
    new knot j sits at fraction j / G_new along the old knot sequence. When
    G_new is a multiple of the old G every old interior knot is a new knot.
    """
    interior = t_old[k:t_old.size - k]
    G_old = interior.size - 1
    new_interior = np.interp(np.arange(G_new + 1) * G_old / G_new, np.arange(G_old + 1), interior)
    new_interior[-1] = interior[-1]  # exact end point, whatever the rounding above
    return extend_knots(new_interior, k)


def refine_points(t_new, k):
    """Fit points for grid extension: k + 1 points inside each new interior interval.

    The B-splines of one knot vector are linearly independent on its interior,
    so k + 1 distinct points per interval determine all G + k coefficients.
    """
    interior = t_new[k:t_new.size - k]
    a, b = interior[:-1, None], interior[1:, None]
    frac = (np.arange(k + 1) + 0.5) / (k + 1)
    return (a + (b - a) * frac).ravel()


def refine(model, new_grid, x=None):
    """A new model with ``new_grid`` grid intervals whose splines are fitted to ``model``'s.

    Per layer and input: knots from ``refine_knots``, then least squares of
    the old spline's values at k + 1 points inside each new interval and,
    when samples x (B, n_in) are given, also at each layer's inputs for x
    (pykan fits on the samples it cached; numkan keeps no data, so pass the
    training inputs when hidden-layer inputs may have moved beyond their
    grids, where the interior points alone say nothing). When every old knot
    is a new one (``new_grid`` a multiple of the old one) the old spline lies
    in the new spline space on the interior, and the transfer is exact up to
    rounding wherever the fit points are inside the grids. Scales, masks,
    symbolic edges and every setting carry over; ``model`` is not changed.
    The samples each layer sees are the old layer's whole output, symbolic
    edges included. Knots not usable in the model's dtype (``new_grid`` so
    fine that rounding merges knots) raise ValueError.
    """
    new_grid = v.check_int("new_grid", new_grid, 1)
    be = model.backend
    h = None
    if x is not None:
        h = be.asarray(v.check_array("x", x, model.width[0], model.dtype), model.dtype)
    knots = []  # every layer's new knots, checked before anything is built on them
    for l, L_old in enumerate(model.layers):
        t_old = be.to_host(L_old.knots).astype(np.float64)
        t_new = np.stack([refine_knots(t_old[i], L_old.k, new_grid) for i in range(L_old.in_dim)])
        # finer knots may merge when rounded to the dtype (or the old ones be unusable)
        v.check_knots(f"new_grid={new_grid} for layer {l}", t_new, L_old.k, model.dtype)
        knots.append(t_new)
    layers = []
    for L_old, t_new in zip(model.layers, knots):
        t_old = be.to_host(L_old.knots).astype(np.float64)
        c_old = be.to_host(L_old.coef).astype(np.float64)
        xl = None if h is None else be.to_host(h).astype(np.float64)
        k = L_old.k
        # fit points (P, I): k+1 inside each new interval, then the samples
        p = np.stack([refine_points(t_new[i], k) for i in range(L_old.in_dim)], axis=1)
        if xl is not None:
            p = np.concatenate([p, xl])
        c_new = spline.refit(p, t_old, c_old, t_new, k, be)
        layers.append(L_old.derive(knots=t_new, coef=c_new))  # scales, masks, symbolic edges carry over
        if h is not None:
            h = L_old.forward(h, keep=False)
    return model._with_layers(layers, input_id=model.input_id, cache_data=model.cache_data)
