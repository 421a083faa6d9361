"""Attribution scores and pruning, with pykan's semantics.

Scores (``attribute``). On data x, for each layer l with inputs x_l (B, I):

    E[l][i,o] = std_b phi[i,o](x_l[b,i])          edge scale: batch std (n - 1) of the edge's output
    N[l+1][o] = std_b x_{l+1}[b,o]                node scale: batch std of the node's value

and the scores flow back from the outputs, one row per output k (as pykan's
``attribute``): S_L = identity (n_out, n_out), then for l = L-1 .. 0

    edge score  e[l][k,i,o] = E[l][i,o] * S_{l+1}[k,o] / (N[l+1][o] + 1e-4)
    node score  S_l[k,i]    = sum_o e[l][k,i,o]

``node_scores[l]`` (width[l],) and ``edge_scores[l]`` (I, O) are the means
over k (``KAN.attribute`` keeps them on the model, as pykan does;
``model.feature_score`` is ``node_scores[0]``). Edge arrays
here are (I, O), the orientation of ``mask`` (pykan's ``edge_scores`` are
(O, I)).

Multiplication nodes (pykan's rule): a product node's score S[k, n] goes to
each subnode s it multiplies, and the edges into s use the subnode's std
N[s] (its value before the product) in place of the node's. Edge arrays
are (I, O) over subnodes; node scores are per node.

What changes the model and what copies it (pykan mixes the two; numkan does not):

    prune_edge                          in place: masks edges, returns None
    prune_node, prune_input, prune      return a NEW, smaller model; the original is unchanged

The functions here take a model and return what they computed; the ``KAN``
methods of the same names keep the scores on the model. A new model is made
by the model itself (``model._with_layers``) from new layers
(``layer.subset``), so this module never imports ``numkan.model``.

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
import numpy as np

from . import _validate as v
from .activations import edge_outputs, host_params, layer_inputs, model_data

_EPS = 1e-4  # pykan's guard in the node-scale division


# ---------------------------------------------------------------------------
# scales: batch standard deviations of edges and nodes
def _edge_stats(layer, xh):
    """(mean, std), each (I, O): batch mean and unbiased std of every edge's output on host inputs xh (B, I).

    Spline edges come from the backend's ``edge_moments_forward`` (per-edge
    sums of phi and phi^2, the regulariser's op); inputs with a symbolic edge
    are done one input at a time with (B, O) temporaries. Never a (B, I, O) array.
    """
    be, dt = layer.backend, layer.dtype
    B, I = xh.shape
    s1, s2 = be.zeros((I, layer.out_dim), np.float64), be.zeros((I, layer.out_dim), np.float64)
    xs1, xs2 = be.zeros((I,), np.float64), be.zeros((I,), np.float64)
    be.edge_moments_forward(s1, s2, xs1, xs2, be.asarray(xh, dt), layer.knots, layer.coef,
                            layer.scale_base, layer.scale_sp, layer.mask, layer.k, layer.base_fun)
    s1, s2 = be.to_host(s1), be.to_host(s2)
    mean = s1 / B
    E = np.sqrt(np.maximum(s2 - s1 * s1 / B, 0.0) / (B - 1))
    todo = np.nonzero(np.any(layer.symbolic_mask != 0, axis=1))[0]
    host = host_params(layer) if len(todo) else None
    for i in todo:
        phi = edge_outputs(layer, xh, i, host)
        mean[i], E[i] = phi.mean(axis=0), np.std(phi, axis=0, ddof=1)
    return mean, E


def _edge_std(layer, xh):
    """E (I, O): unbiased batch std of each edge's output (see ``_edge_stats``)."""
    return _edge_stats(layer, xh)[1]


def scores(model, xh):
    """Scores on host data xh (B, width[0]): ``(node_scores, edge_scores, xs, means)``.

    node_scores: list of (width[l],); edge_scores: list of (I, O) (the module
    docstring); xs: every layer's inputs; means: per-layer edge batch means (I, O).
    Reads the model, changes nothing.
    """
    xs = layer_inputs(model, xh)
    L = len(model.layers)
    S = np.eye(model.width[-1])
    node_all, edge_all, means = [S], [], [None] * L
    for l in range(L - 1, -1, -1):
        layer = model.layers[l]
        means[l], E = _edge_stats(layer, xs[l])                    # (I, O) each
        if layer.mult_arity:  # a product node's score flows to each of its subnodes
            S = S[:, layer.node_of]
            sub = layer.backend.to_host(layer.subnodes(layer.backend.asarray(xs[l], layer.dtype)))
            N = np.std(np.asarray(sub, dtype=np.float64), axis=0, ddof=1)
        else:
            N = np.std(xs[l + 1], axis=0, ddof=1)                  # (O,)
        e = E[None, :, :] * (S / (N + _EPS))[:, None, :]           # (n_out, I, O)
        S = e.sum(axis=2)                                          # (n_out, I)
        edge_all.append(e)
        node_all.append(S)
    node = [s.mean(axis=0) for s in reversed(node_all)]
    edge = [e.mean(axis=0) for e in reversed(edge_all)]
    return node, edge, xs, means


def attribute(model, x=None):
    """``(node_scores, edge_scores)`` on data ``x`` (B, width[0]), B >= 2; default:
    the model's data, ``model.cache_data`` (``activations.model_data``)."""
    node, edge, _, _ = scores(model, model_data(model, x, min_rows=2))
    return node, edge


# ---------------------------------------------------------------------------
# pruning
def _check_threshold(name, t):
    return v.check_float(name, t, minimum=0)


def prune_edge(self, threshold=3e-2, x=None, keep_mean=True):
    """IN PLACE: mask every edge whose score is <= ``threshold``; returns the
    scores it used, ``(node_scores, edge_scores)``.

    Both parts of a pruned edge are switched off (``mask`` and
    ``symbolic_mask`` set to 0); the layer shapes do not change. Scores come
    from ``attribute(x)``. ``keep_mean``: see the module docstring.
    """
    threshold = _check_threshold("threshold", threshold)
    xh = model_data(self, x, min_rows=2)
    node, edge, _, means = scores(self, xh)
    for l, (layer, score) in enumerate(zip(self.layers, edge)):
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
    return node, edge


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


def _subset(model, keep, data, keep_mean, means=None, input_id=None):
    """A new model with the nodes ``keep[l]`` (index arrays, one per node layer) of ``model``.

    With ``keep_mean``, the batch means (on ``data``; ``means`` when the caller
    has them) of the edges leaving a removed node are added to live edges into
    the same outputs. ``input_id``: the new model's, when inputs are removed.
    """
    layers = [layer.subset(keep[l], keep[l + 1]) for l, layer in enumerate(model.layers)]
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
            M = _dropped_sum(m, drop & live)[layer.subnode_ids(keep[l + 1])]
            _absorb(layers[l], M)
    return model._with_layers(layers, input_id=input_id,
                              cache_data=data if keep[0].size == model.width[0] else data[:, keep[0]])


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
    """Return ``(new, scores)``: a NEW model without the hidden nodes whose score is
    <= ``threshold``, and the scores of ``self`` it used (None with ``active_neurons_id``).

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
    means = found = None
    if active_neurons_id is None:
        threshold = _check_threshold("threshold", threshold)
        node, edge, _, means = scores(self, xh)
        found = node, edge
        for l in range(1, L):
            s = node[l]
            ids = np.nonzero(s > threshold)[0]
            keep.append(ids if ids.size else np.array([int(np.argmax(s))]))
    else:
        if not hasattr(active_neurons_id, "__len__") or len(active_neurons_id) != L - 1:
            raise ValueError(f"active_neurons_id must have one list of node indices per hidden layer "
                             f"({L - 1}), got {active_neurons_id!r}")
        for l, ids in enumerate(active_neurons_id, start=1):
            keep.append(_check_ids(f"active_neurons_id[{l - 1}]", ids, self.width[l]))
    keep.append(np.arange(self.width[-1]))
    return _subset(self, keep, xh, keep_mean, means, input_id=self.input_id), found


def prune_input(self, threshold=1e-2, active_inputs=None, x=None, keep_mean=True):
    """Return ``(new, scores)``: a NEW model without the inputs whose score
    (``feature_score``) is <= ``threshold``, and the scores of ``self`` it used
    (None with ``active_inputs``).

    The original model is unchanged. The new model takes only the kept input
    columns, in their original order; ``new.input_id`` lists them (indices into
    the original inputs) and its formulas name them x_{id+1}. Pass
    ``x[:, new.input_id]`` to it. ``active_inputs`` keeps exactly those inputs
    instead of using scores. At least the best input is kept. ``keep_mean``:
    see the module docstring.
    """
    xh = model_data(self, x, min_rows=2)
    means = found = None
    if active_inputs is None:
        threshold = _check_threshold("threshold", threshold)
        node, edge, _, means = scores(self, xh)
        found = node, edge
        s = node[0]
        ids = np.nonzero(s > threshold)[0]
        if ids.size == 0:
            ids = np.array([int(np.argmax(s))])
    else:
        ids = _check_ids("active_inputs", active_inputs, self.width[0])
    keep = [ids] + [np.arange(w) for w in self.width[1:]]
    input_id = ids if self.input_id is None else np.asarray(self.input_id)[ids]
    return _subset(self, keep, xh, keep_mean, means, input_id=input_id), found
