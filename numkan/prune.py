"""Attribution scores and pruning, with pykan's semantics.

Scores (``attribute``). On data x, for each layer l with inputs x_l (B, I):

    E[l][i,o] = std_b phi[i,o](x_l[b,i])          edge scale: batch std (n - 1) of the edge's output
    N[l+1][o] = std_b x_{l+1}[b,o]                node scale: batch std of the node's value

and the scores flow back from the outputs, one row per output k (as pykan's
``attribute``): S_L = identity (n_out, n_out), then for l = L-1 .. 0

    edge score  e[l][k,i,o] = E[l][i,o] * S_{l+1}[k,o] / (N[l+1][o] + 1e-4)
    node score  S_l[k,i]    = sum_o e[l][k,i,o]

``model.node_scores[l]`` (width[l],) and ``model.edge_scores[l]`` (I, O) are
the means over k; ``model.feature_score`` is ``node_scores[0]``. Edge arrays
here are (I, O), the orientation of ``mask`` (pykan's ``edge_scores`` are
(O, I)).

What changes the model and what copies it (pykan mixes the two; numkan does not):

    prune_edge                          in place: masks edges, returns None
    prune_node, prune_input, prune      return a NEW, smaller model; the original is unchanged

Keeping the mean (``keep_mean=True``, the default; pykan has no such step). A
pruned edge has a small score, so its output is nearly constant on the data,
but that constant is rarely 0: dropping it would shift the output node by the
edge's batch mean. numkan adds that mean to another live edge into the same
node: to ``d`` of a symbolic edge (exact everywhere), else to the spline of
an edge with ``scale_sp != 0`` (coef += mean / scale_sp, exact for inputs
inside that edge's interior grid, where the B-splines sum to 1). The output
then changes only by the pruned edges' variation about their means. With no
such edge, or ``keep_mean=False``, the mean is dropped, as in pykan.
"""
import copy

import numpy as np

from . import _validate as v
from .symbolic import edge_outputs, host_params, layer_inputs, model_data

_EPS = 1e-4  # pykan's guard in the node-scale division


# ---------------------------------------------------------------------------
# scales: batch standard deviations of edges and nodes
def _edge_stats(layer, xh):
    """(mean, std), each (I, O): batch mean and unbiased std of every edge's output on host inputs xh (B, I).

    Spline edges come from the backend's ``edge_moments_forward`` (per-edge
    sums of phi and phi^2, the regulariser's op) when the backend has it;
    inputs with a symbolic edge, or a backend without the op, are done one
    input at a time with (B, O) temporaries. Never a (B, I, O) array.
    """
    be, dt = layer.backend, layer.dtype
    B, I = xh.shape
    mean, E = np.zeros((I, layer.out_dim)), np.zeros((I, layer.out_dim))
    moments = getattr(be, "edge_moments_forward", None)
    symbolic_rows = np.any(layer.symbolic_mask != 0, axis=1)
    if moments is not None:
        s1, s2 = be.zeros((I, layer.out_dim), np.float64), be.zeros((I, layer.out_dim), np.float64)
        xs1, xs2 = be.zeros((I,), np.float64), be.zeros((I,), np.float64)
        moments(s1, s2, xs1, xs2, be.asarray(xh, dt), layer.grid, layer.coef, layer.scale_base,
                layer.scale_sp, layer.mask, layer.k, layer.base_fun)
        s1, s2 = be.to_host(s1), be.to_host(s2)
        mean = s1 / B
        E = np.sqrt(np.maximum(s2 - s1 * s1 / B, 0.0) / (B - 1))
        todo = np.nonzero(symbolic_rows)[0]
    else:
        todo = range(I)
    host = host_params(layer) if len(todo) else None
    for i in todo:
        phi = edge_outputs(layer, xh, i, host)
        mean[i], E[i] = phi.mean(axis=0), np.std(phi, axis=0, ddof=1)
    return mean, E


def _edge_std(layer, xh):
    """E (I, O): unbiased batch std of each edge's output (see ``_edge_stats``)."""
    return _edge_stats(layer, xh)[1]


def attribute(self, x=None):
    """Compute node, edge and input scores on data (pykan semantics; see the module docstring).

    ``x`` (B, width[0]), B >= 2; default: the inputs of the last ``model.forward``.
    Sets ``model.node_scores`` (list of (width[l],)), ``model.edge_scores``
    (list of (I, O)) and returns ``model.feature_score`` (width[0],). Changes
    nothing else.
    """
    xh = model_data(self, x, min_rows=2)
    _scores(self, xh)
    return self.node_scores[0]


def _scores(self, xh):
    """Set the scores on host data xh; returns (layer inputs, per-layer edge means (I, O))."""
    xs = layer_inputs(self, xh)
    L = len(self.layers)
    n_out = self.width[-1]
    S = np.eye(n_out)
    node_all, edge_all, means = [S], [], [None] * L
    for l in range(L - 1, -1, -1):
        means[l], E = _edge_stats(self.layers[l], xs[l])          # (I, O) each
        N = np.std(xs[l + 1], axis=0, ddof=1)                      # (O,)
        e = E[None, :, :] * (S / (N + _EPS))[:, None, :]           # (n_out, I, O)
        S = e.sum(axis=2)                                          # (n_out, I)
        edge_all.append(e)
        node_all.append(S)
    self.node_scores = [s.mean(axis=0) for s in reversed(node_all)]
    self.edge_scores = [e.mean(axis=0) for e in reversed(edge_all)]
    return xs, means


def feature_score(self):
    """Input scores (width[0],) from ``attribute`` on the last ``forward``'s inputs (computed now)."""
    return attribute(self)


# ---------------------------------------------------------------------------
# pruning
def _check_threshold(name, t):
    return v.check_float(name, t, minimum=0)


def prune_edge(self, threshold=3e-2, x=None, keep_mean=True):
    """IN PLACE: mask every edge whose score is <= ``threshold``; returns None.

    Both parts of a pruned edge are switched off (``mask`` and
    ``symbolic_mask`` set to 0); the layer shapes do not change. Scores come
    from ``attribute(x)``. ``keep_mean``: see the module docstring.
    """
    threshold = _check_threshold("threshold", threshold)
    xh = model_data(self, x, min_rows=2)
    _, means = _scores(self, xh)
    for l, (layer, score) in enumerate(zip(self.layers, self.edge_scores)):
        be = layer.backend
        live = (np.asarray(be.to_host(layer.mask)) != 0) | (layer.symbolic_mask != 0)
        drop = (score <= threshold) & live
        if not np.any(drop):
            continue
        M = _dropped_sum(means[l], drop)
        mask = np.array(be.to_host(layer.mask))
        mask[drop] = 0.0
        layer.mask[...] = be.asarray(mask, layer.dtype)
        layer.symbolic_mask[drop] = 0.0
        if keep_mean:
            _absorb(layer, M)


def _dropped_sum(means, drop):
    """(O,) sum over dropped edges (i, o) (bool (I, O)) of their batch means (I, O)."""
    return np.where(drop, means, 0.0).sum(axis=0)


def _absorb(layer, M):
    """Add M[o] to one live edge into each node o (see the module docstring); in place."""
    if not np.any(M):
        return
    be, dt = layer.backend, layer.dtype
    mask = np.asarray(be.to_host(layer.mask), dtype=np.float64)
    spm = np.asarray(be.to_host(layer.scale_sp), dtype=np.float64) * mask
    aff = coef = None
    for o in np.nonzero(M)[0]:
        sym = np.nonzero(layer.symbolic_mask[:, o])[0]
        spl = np.nonzero(spm[:, o])[0]
        if sym.size:
            i = sym[0]
            if aff is None:
                aff = np.array(be.to_host(layer.symbolic_affine), dtype=np.float64)
            aff[i, o, 3] += M[o] / layer.symbolic_mask[i, o]
        elif spl.size:
            i = spl[np.argmax(np.abs(spm[spl, o]))]
            if coef is None:
                coef = np.array(be.to_host(layer.coef), dtype=np.float64)
            coef[i, :, o] += M[o] / spm[i, o]
    if aff is not None:
        layer.symbolic_affine[...] = be.asarray(aff, dt)
    if coef is not None:
        layer.coef[...] = be.asarray(coef, dt)


def _layer_subset(layer, ins, outs):
    """A new layer holding edges ins x outs of ``layer`` (index arrays); gradients zeroed."""
    be, dt = layer.backend, layer.dtype
    new = copy.copy(layer)
    host = lambda n: np.asarray(be.to_host(getattr(layer, n)))
    put = lambda a: be.asarray(np.ascontiguousarray(a), dt)
    ix = np.ix_(ins, outs)
    new.grid = put(host("grid")[ins])
    new.coef = put(host("coef")[ins][:, :, outs])
    for n in ("scale_base", "scale_sp", "mask"):
        setattr(new, n, put(host(n)[ix]))
    new.symbolic_affine = put(host("symbolic_affine")[ix])
    new.symbolic_mask = np.array(layer.symbolic_mask[ix])
    new.symbolic_names = [[layer.symbolic_names[i][o] for o in outs] for i in ins]
    new.in_dim, new.out_dim = len(ins), len(outs)
    for n in ("coef", "scale_base", "scale_sp", "symbolic_affine"):
        setattr(new, "d" + n, be.zeros(getattr(new, n).shape, dt))
    new._x = None
    return new


def _subset(model, keep, data, keep_mean, means=None):
    """A new model with the nodes ``keep[l]`` (index arrays, one per node layer) of ``model``.

    With ``keep_mean``, the batch means (on ``data``; ``means`` when the caller
    has them) of the edges leaving a removed node are added to live edges into
    the same outputs.
    """
    new = copy.copy(model)
    new.layers = [_layer_subset(layer, keep[l], keep[l + 1]) for l, layer in enumerate(model.layers)]
    if keep_mean:
        xs = layer_inputs(model, data) if means is None else None
        for l, layer in enumerate(model.layers):
            gone = np.setdiff1d(np.arange(layer.in_dim), keep[l])
            if gone.size == 0:
                continue
            drop = np.zeros((layer.in_dim, layer.out_dim), dtype=bool)
            drop[gone] = True
            live = (np.asarray(layer.backend.to_host(layer.mask)) != 0) | (layer.symbolic_mask != 0)
            m = _edge_stats(layer, xs[l])[0] if means is None else means[l]
            M = _dropped_sum(m, drop & live)[keep[l + 1]]
            _absorb(new.layers[l], M)
    new.width = [len(k) for k in keep]
    new._batch = None
    for n in ("node_scores", "edge_scores"):
        new.__dict__.pop(n, None)
    new.cache_data = data if keep[0].size == model.width[0] else data[:, keep[0]]
    return new


def _check_ids(name, ids, n):
    """Sorted unique indices from ``ids``: at least one, integers (as ``check_int``:
    not bools, not floats) in [0, n); else ValueError naming ``name``."""
    want = f"{name} must be a non-empty list of integer indices in [0, {n})"
    try:
        arr = np.asarray(ids)
    except (TypeError, ValueError):  # ragged nesting, or objects numpy cannot hold
        raise ValueError(f"{want}, got {ids!r}") from None
    if arr.size == 0 or arr.dtype.kind not in "iu":
        raise ValueError(f"{want}, got {ids!r}")
    arr = np.unique(arr.astype(np.int64).ravel())
    if arr[0] < 0 or arr[-1] >= n:
        raise ValueError(f"{want}, got {ids!r}")
    return arr


def prune_node(self, threshold=1e-2, active_neurons_id=None, x=None, keep_mean=True):
    """Return a NEW model without the hidden nodes whose score is <= ``threshold``.

    The original model is unchanged. A removed node takes its incoming and
    outgoing edges with it, so the new model's outputs equal the original's
    with those edges masked. ``active_neurons_id`` (a list with one list of
    node indices per hidden layer) keeps exactly those nodes instead of using
    scores. A hidden layer always keeps at least its best node. ``keep_mean``:
    see the module docstring.
    """
    L = len(self.layers)
    xh = model_data(self, x, min_rows=2)
    keep = [np.arange(self.width[0])]
    means = None
    if active_neurons_id is None:
        threshold = _check_threshold("threshold", threshold)
        _, means = _scores(self, xh)
        for l in range(1, L):
            s = self.node_scores[l]
            ids = np.nonzero(s > threshold)[0]
            keep.append(ids if ids.size else np.array([int(np.argmax(s))]))
    else:
        if not hasattr(active_neurons_id, "__len__") or len(active_neurons_id) != L - 1:
            raise ValueError(f"active_neurons_id must have one list of node indices per hidden layer "
                             f"({L - 1}), got {active_neurons_id!r}")
        for l, ids in enumerate(active_neurons_id, start=1):
            keep.append(_check_ids(f"active_neurons_id[{l - 1}]", ids, self.width[l]))
    keep.append(np.arange(self.width[-1]))
    return _subset(self, keep, xh, keep_mean, means)


def prune_input(self, threshold=1e-2, active_inputs=None, x=None, keep_mean=True):
    """Return a NEW model without the inputs whose score (``feature_score``) is <= ``threshold``.

    The original model is unchanged. The new model takes only the kept input
    columns, in their original order; ``new.input_id`` lists them (indices into
    the original inputs) and its formulas name them x_{id+1}. Pass
    ``x[:, new.input_id]`` to it. ``active_inputs`` keeps exactly those inputs
    instead of using scores. At least the best input is kept. ``keep_mean``:
    see the module docstring.
    """
    xh = model_data(self, x, min_rows=2)
    means = None
    if active_inputs is None:
        threshold = _check_threshold("threshold", threshold)
        _, means = _scores(self, xh)
        s = self.node_scores[0]
        ids = np.nonzero(s > threshold)[0]
        if ids.size == 0:
            ids = np.array([int(np.argmax(s))])
    else:
        ids = _check_ids("active_inputs", active_inputs, self.width[0])
    keep = [ids] + [np.arange(w) for w in self.width[1:]]
    new = _subset(self, keep, xh, keep_mean, means)
    old = getattr(self, "input_id", None)
    new.input_id = ids if old is None else np.asarray(old)[ids]
    return new


def prune(self, node_th=1e-2, edge_th=3e-2, x=None, keep_mean=True):
    """Return a NEW model: ``prune_node(node_th)``, then ``prune_edge(edge_th)`` on the copy.

    The original model is unchanged. ``keep_mean``: see the module docstring.
    """
    node_th = _check_threshold("node_th", node_th)
    edge_th = _check_threshold("edge_th", edge_th)
    xh = model_data(self, x, min_rows=2)
    new = prune_node(self, node_th, x=xh, keep_mean=keep_mean)
    prune_edge(new, edge_th, x=xh, keep_mean=keep_mean)
    return new
