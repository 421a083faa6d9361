"""Activations: the data that fitting, attribution, pruning and plots work on.

Functions of a model (or a layer) that only read it: the host inputs to use
(``model_data``), every layer's inputs (``layer_inputs``), and one input's
edge outputs phi[i, o] (``edge_outputs``). ``symbolic``, ``prune`` and
``plot`` all import them from here.
"""
import numpy as np

from . import _validate as v


def model_data(model, x=None, min_rows=1):
    """Host float64 inputs (B, width[0]) for an interpretability call: ``x`` if
    given, else ``model.cache_data``, the model's data (KAN's "which data"
    rule: the training inputs of the last ``fit``, or the inputs of a later
    ``model(x)`` / ``model.forward(x)``; never those of ``loss_and_grad``)."""
    if x is None:
        x = model.cache_data
        if x is None:
            raise ValueError("x is None and the model has no data: pass x (batch, "
                             f"{model.width[0]}), or fit the model or call model(x) first "
                             "(the model then uses those inputs, as pykan uses its cached data)")
        if v.is_device_array(x):
            x = model.backend.to_host(x)
    x = v.check_array("x", x, model.width[0], np.float64)
    if x.shape[0] < min_rows:
        raise ValueError(f"x must have at least {min_rows} rows, got {x.shape[0]}")
    return x


def layer_inputs(model, x, upto=None):
    """[x_0, ..., x_upto] host float64 arrays: the inputs of each layer (x_L the output)."""
    be, dt = model.backend, model.dtype
    L = len(model.layers) if upto is None else upto
    xs = [np.asarray(x, dtype=np.float64)]
    h = be.asarray(x, dt)
    for layer in model.layers[:L]:
        h = layer.forward(h, keep=False)
        xs.append(np.asarray(be.to_host(h), dtype=np.float64))
    return xs


_EDGE_ARRAYS = ("knots", "coef", "scale_base", "scale_sp", "mask")


def host_params(layer):
    """Host copies of the arrays ``edge_outputs`` reads: one transfer per layer, not per input."""
    return {n: np.asarray(layer.backend.to_host(getattr(layer, n))) for n in _EDGE_ARRAYS}


def edge_outputs(layer, xh, i, host=None):
    """(B, O) host float64: phi[i, o](xh[:, i]) for every o, spline plus symbolic part.

    ``host``: ``host_params(layer)``, when the caller evaluates many inputs.
    """
    be, dt = layer.backend, layer.dtype
    host = host_params(layer) if host is None else host
    xi = np.ascontiguousarray(np.asarray(xh)[:, i:i + 1])
    y = be.zeros((xi.shape[0], layer.out_dim), dt)
    be.spline_forward(y, be.asarray(xi, dt), *(be.asarray(host[n][i:i + 1], dt) for n in _EDGE_ARRAYS),
                      layer.k, layer.base_fun)
    out = np.asarray(be.to_host(y), dtype=np.float64)
    if np.any(layer.symbolic_mask[i]):
        out += layer.symbolic_values(xh, inputs=[i])
    return out
