"""KAN: a stack of KANLayers with a forward pass, a hand-written backward pass,
and parameters and gradients exposed as live arrays.

This module is the top of the package: ``KAN`` holds the state, runs the
passes, and offers the features (training, grids, pruning, symbolic edges,
plots, files) as methods that call the feature modules. Those modules take a
model and never import this one; where they build a new model, they ask the
model for it (``_with_layers``, or ``cls`` for ``load``).
"""
import copy
import functools
import hashlib

import numpy as np

from . import _validate as v
from . import grids as _grids, io as _io, plot as _plot, prune as _prune
from . import symbolic as _symbolic, train as _train
from . import pde as _pde
from .datasets import check_dataset
from .kernels import get_backend
from .layer import KANLayer


class KAN:
    """A Kolmogorov-Arnold Network of B-spline edges.

    Parameters
    ----------
    width : list
        Layer sizes, e.g. ``[2, 5, 1]``: 2 inputs, a hidden layer of 5 nodes, 1 output.
        As in pykan, an entry may be a pair ``[n_sum, n_mult]``: n_sum sum nodes
        followed by n_mult multiplication nodes (``[2, [5, 3], 1]``). ``model.width``
        then holds the node counts (``[2, 8, 1]``) and ``model.mult_arity`` the
        arities, one list per node layer.
    mult_arity : int or list of lists
        How many subnodes each multiplication node multiplies: one integer >= 2
        for all, or one list per node layer (pykan's ``[[], [2, 3], []]``).
    grid : int
        Number of grid intervals G inside ``grid_range`` (>= 1).
    k : int
        Spline order (>= 1; 3 is cubic).
    seed : int
        Seed of the model's ``numpy.random.Generator``: the same seed gives the
        same initial parameters on every device.
    grid_range : (float, float)
        Initial interior grid of every input; outside the knots an edge is its
        base function only.
    base_fun : {"silu", "identity", "zero"}
    noise_scale, scale_base_mu, scale_base_sigma : float
        Initialisation as in pykan: coefficients fit noise of size
        ``noise_scale / G``; ``scale_base = (mu + sigma * U(-1, 1)) / sqrt(I)``.
    grid_eps : float
        Blend between a uniform (1) and a sample-quantile (0) grid when the
        grid is updated from data.
    dtype : float32 or float64
    device : {"cpu", "numpy", "cuda"}
        "cpu" runs the Numba kernels (the NumPy reference if Numba is missing),
        "numpy" the reference kernels.
    sp_trainable, sb_trainable : bool
        Whether ``fit`` trains ``scale_sp`` / ``scale_base``; a frozen array gets
        no gradient and stays out of the optimiser (pykan's names).

    State
    -----
    Besides the settings above (same names) and ``layers`` (list of
    ``KANLayer``, which hold the arrays), a model has:

    node_scores, edge_scores : list of arrays, or None
        The scores of the last ``attribute`` (or of a pruning call that
        computed them): (width[l],) per node layer, (I, O) per layer.
    input_id : int array (width[0],), or None
        After ``prune_input``: the original input number of each input (used
        in formulas and plots); None means input i is x_{i+1}.
    cache_data : array (B, width[0]), or None
        The model's data: what ``attribute``, ``prune*``, ``plot``,
        ``fix_symbolic`` and ``auto_symbolic`` use when called without ``x``.
        The rule: the training inputs of the last ``fit`` that returned, or
        the inputs of a later ``model(x)`` / ``model.forward(x)`` (a
        reference to the array, not a copy), whichever came last.
        ``loss_and_grad`` and ``backward`` never change it, so an evaluation
        on a test set does not become the data scores are computed on.
        Pruned, refined and copied models inherit it (a pruned model keeps
        the columns of its inputs).
    checkpoints : dict name -> KAN
        In-memory copies made by ``saveckpt``, oldest first (``loadckpt``,
        ``rewind``). Not saved to files, not copied by ``copy``.
    fit_start : dict or None
        After a ``fit`` that restarted the model (its ``n_init``): ``seeds``
        (the draws tried, the model's own first), their training
        ``objectives`` after the trial steps, and the index ``chosen``.

    Example
    -------
    >>> model = KAN([2, 5, 1], grid=5, k=3, seed=0)
    >>> y = model.forward(x)           # (B, 1); keeps what backward needs
    >>> dx = model.backward(dy)        # adds into model.grads, returns dL/dx
    """

    def __init__(self, width, grid=5, k=3, seed=0, grid_range=(-1, 1), base_fun="silu",
                 noise_scale=0.3, scale_base_mu=0.0, scale_base_sigma=1.0, grid_eps=0.02,
                 dtype=np.float64, device="cpu", sp_trainable=True, sb_trainable=True,
                 mult_arity=2):
        self.width, self.mult_arity = v.check_width(width, mult_arity)
        self.grid = v.check_int("grid", grid, 1)
        self.k = v.check_int("k", k, 1)
        self.seed = v.check_int("seed", seed, 0)
        self.grid_range = v.check_grid_range(grid_range)
        self.base_fun = v.check_base_fun(base_fun)
        noise_scale = v.check_float("noise_scale", noise_scale, minimum=0)
        scale_base_mu = v.check_float("scale_base_mu", scale_base_mu)
        scale_base_sigma = v.check_float("scale_base_sigma", scale_base_sigma, minimum=0)
        self.grid_eps = v.check_float("grid_eps", grid_eps, minimum=0)
        if self.grid_eps > 1:
            raise ValueError(f"grid_eps must be in [0, 1], got {self.grid_eps}")
        self.dtype = v.check_dtype(dtype)
        self.backend = get_backend(device)
        self.device = device
        for name, flag in (("sp_trainable", sp_trainable), ("sb_trainable", sb_trainable)):
            if not isinstance(flag, (bool, np.bool_)):
                raise ValueError(f"{name} must be True or False, got {flag!r}")
        self.sp_trainable, self.sb_trainable = bool(sp_trainable), bool(sb_trainable)

        rng = np.random.default_rng(self.seed)
        self.layers = [
            KANLayer(self.width[l], self.width[l + 1], self.grid, self.k, self.backend, self.dtype,
                     rng, grid_range=self.grid_range, base_fun=self.base_fun,
                     noise_scale=noise_scale, scale_base_mu=scale_base_mu,
                     scale_base_sigma=scale_base_sigma, grid_eps=self.grid_eps,
                     mult_arity=self.mult_arity[l + 1])
            for l in range(len(self.width) - 1)
        ]
        self.node_scores = None
        self.edge_scores = None
        self.input_id = None
        self.cache_data = None
        self.checkpoints = {}
        self.fit_start = None
        # what ``fit``'s restarts need to draw other starts of this model, and
        # a digest of this draw, to tell whether the model is still as drawn
        self._draw = dict(width=self.width_spec, mult_arity=self.mult_arity, grid=self.grid,
                          k=self.k, grid_range=self.grid_range, base_fun=self.base_fun,
                          noise_scale=noise_scale, scale_base_mu=scale_base_mu,
                          scale_base_sigma=scale_base_sigma, grid_eps=self.grid_eps,
                          dtype=self.dtype, device=device, sp_trainable=self.sp_trainable,
                          sb_trainable=self.sb_trainable)
        self._drawn = self._digest()

    def _digest(self):
        """A digest of every layer's knots, parameters, mask and symbolic state."""
        h = hashlib.sha256()
        for L in self.layers:
            for n in ("knots", "coef", "scale_base", "scale_sp", "mask", "symbolic_affine"):
                h.update(np.ascontiguousarray(self.backend.to_host(getattr(L, n))).tobytes())
            h.update(np.ascontiguousarray(L.symbolic_mask).tobytes())
        return h.hexdigest()

    def is_initial(self):
        """True while the model is exactly as its constructor drew it: made by
        ``KAN(...)`` (not by pruning, ``refine``, ``copy`` or ``load``) and with
        no knot, parameter, mask or symbolic edge changed since, by training or
        by hand. Only such a model gets ``fit``'s restarts (``n_init``)."""
        return self._draw is not None and self._digest() == self._drawn

    def _redraw(self, seed):
        """A new model with this model's constructor settings and another seed."""
        return type(self)(seed=seed, **self._draw)

    def _take_start(self, other, record):
        """``fit``'s restarts: install the knots and parameters of ``other`` (a
        trained draw of this model, or None to keep this one) and keep ``record``
        as ``fit_start``."""
        if other is not None:
            for L, C in zip(self.layers, other.layers):
                for n in ("knots",) + tuple(L.param_names()):
                    setattr(L, n, getattr(C, n))
        self.fit_start = record

    def _with_layers(self, layers, input_id=None, cache_data=None):
        """A new model of this class with this model's settings and ``layers``
        (new ``KANLayer``s, e.g. from ``layer.derive``): how pruning, ``refine``
        and ``load`` make models. Width and grid follow the layers; no scores."""
        new = copy.copy(self)
        new.layers = list(layers)
        new.width = [new.layers[0].in_dim] + [L.n_nodes for L in new.layers]
        new.mult_arity = [[]] + [list(L.mult_arity) for L in new.layers]
        new.grid = new.layers[0].grid
        new.node_scores = new.edge_scores = None
        new.input_id = None if input_id is None else np.array(input_id, dtype=np.int64)
        new.cache_data = cache_data
        new.checkpoints = {}
        new._draw = new._drawn = None  # a derived model is not a constructor's draw
        return new

    # -- copies and checkpoints -------------------------------------------------
    def copy(self):
        """An independent copy: parameters, knots, symbolic edges, scores and
        ``input_id`` are copied exactly (bit for bit), on the same device;
        ``cache_data`` refers to the same inputs.

        Gradients start at zero, no forward input is kept (call ``forward``
        before ``backward``), and the checkpoints stay with this model.
        ``copy.deepcopy(model)`` gives the same.
        """
        copied = lambda a: None if a is None else [np.array(t) for t in a]
        new = self._with_layers([L.derive() for L in self.layers], input_id=self.input_id,
                                cache_data=self.cache_data)
        new.node_scores, new.edge_scores = copied(self.node_scores), copied(self.edge_scores)
        return new

    def __deepcopy__(self, memo):
        return self.copy()

    # pickling: what multiprocessing and joblib need to send models between processes
    # (``save`` / ``load`` are the file format: no pickle is ever loaded from a file)
    def __getstate__(self):
        """Everything, with host arrays and the backend by device name (a module does
        not pickle; the layers pickle their own arrays). Unpickling asks for the same
        device (``get_backend``: a cuda model needs a GPU there)."""
        state = dict(self.__dict__)
        state.pop("backend")
        if v.is_device_array(state["cache_data"]):
            state["cache_data"] = self.backend.to_host(state["cache_data"])
        return state

    def __setstate__(self, state):
        backend = get_backend(state["device"])
        self.__dict__.update(state)
        self.backend = backend
        for L in self.layers:  # the layers resolved theirs by name: the model's device decides (as ``to``)
            if L.backend is not backend:
                L._install(backend, L._copies(backend))

    def __copy__(self):
        """A shallow copy sharing the layers and arrays (``_with_layers`` replaces the layers)."""
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        return new

    def saveckpt(self, name=None, path=None):
        """Keep an in-memory copy of the model under ``name`` (default: "0", "1", ...
        in order); returns the name. With ``path``, also ``save`` it to that file.

        Nothing is written to disk unless ``path`` is given. ``loadckpt`` gives
        a checkpoint back as a new model; ``rewind`` puts this model back to one.
        """
        if name is None:
            name = str(len(self.checkpoints))
            while name in self.checkpoints:
                name += "'"
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string or None, got {name!r}")
        snap = self.copy()
        if path is not None:
            snap.save(path)
        self.checkpoints.pop(name, None)
        self.checkpoints[name] = snap
        return name

    def _checkpoint(self, name):
        if not self.checkpoints:
            raise ValueError("this model has no checkpoints: call saveckpt() first")
        if name is None:
            name = next(reversed(self.checkpoints))
        if name not in self.checkpoints:
            raise ValueError(f"name must be one of the checkpoints {list(self.checkpoints)}, got {name!r}")
        return self.checkpoints[name]

    def loadckpt(self, name=None):
        """A new model equal to checkpoint ``name`` (default: the latest); this model is unchanged."""
        return self._checkpoint(name).copy()

    def rewind(self, name=None):
        """Put this model back, in place, to checkpoint ``name`` (default: the latest):
        width, grid, parameters, knots, symbolic edges and scores become the
        checkpoint's, bit for bit; the checkpoints are kept. Returns the model."""
        state = vars(self._checkpoint(name).copy())
        state.pop("checkpoints")
        self.__dict__.update(state)
        return self

    @property
    def width_spec(self):
        """``width`` as pykan writes it: [n_sum, n_mult] pairs where a layer has product nodes."""
        return [w if not a else [w - len(a), len(a)] for w, a in zip(self.width, self.mult_arity)]

    # -- parameters -------------------------------------------------------------
    @property
    def params(self):
        """dict name -> array, live: writing into an array changes the model.

        Names are ``"layers.{l}.coef"``, ``"layers.{l}.scale_base"``, ``"layers.{l}.scale_sp"``,
        and ``"layers.{l}.symbolic_affine"`` (I, O, 4) on layers with a symbolic edge.
        """
        return {f"layers.{l}.{n}": getattr(layer, n)
                for l, layer in enumerate(self.layers) for n in layer.param_names()}

    @property
    def grads(self):
        """dict with the keys and shapes of ``params``: the accumulated gradients."""
        return {f"layers.{l}.{n}": getattr(layer, "d" + n)
                for l, layer in enumerate(self.layers) for n in layer.param_names()}

    def zero_grad(self):
        for layer in self.layers:
            layer.zero_grad()

    def to(self, device):
        """Move the model's parameters and gradients to ``device`` in place; returns the model.

        Goes through host memory with the backends' ``to_host``/``asarray``.
        Every array is copied before any is installed, so a failure (an unknown
        device, no GPU) leaves the model as it was. Optimiser state kept
        outside the model is not moved, and the input kept for ``backward`` is
        dropped.
        """
        backend = get_backend(device)
        copies = [layer._copies(backend) for layer in self.layers]
        for layer, arrays in zip(self.layers, copies):
            layer._install(backend, arrays)
        if v.is_device_array(self.cache_data):  # the data stays readable on any device
            self.cache_data = self.backend.to_host(self.cache_data)
        self.backend, self.device = backend, device
        return self

    # -- forward and backward ----------------------------------------------------
    def _input(self, x):
        if v.is_device_array(x):  # checked and converted on the device, no host copy
            return v.check_device_array("x", x, self.width[0], self.dtype, self.backend)
        return self.backend.asarray(v.check_array("x", x, self.width[0], self.dtype), self.dtype)

    def _run(self, x, keep):
        for layer in self.layers:
            x = layer.forward(x, keep=keep)
        return x

    def __call__(self, x, return_device=False):
        """Outputs (B, width[-1]) for inputs x (B, width[0]); keeps nothing for backward.

        x may be a host array or a device array (``__cuda_array_interface__``).
        The result is a host ndarray, or the backend's own array when
        ``return_device`` is true.
        """
        x = self._input(x)
        y = self._run(x, keep=False)
        self.cache_data = x  # the model's data (see the class docstring)
        return y if return_device else self.backend.to_host(y)

    def forward(self, x, return_device=False):
        """Like ``model(x)``, and keeps each layer's input for ``backward``."""
        x = self._input(x)
        y = self._run(x, keep=True)
        self.cache_data = x
        return y if return_device else self.backend.to_host(y)

    def backward(self, dy):
        """dL/dx (B, width[0]) from dy = dL/dy (B, width[-1]) of the last ``forward``.

        Adds the parameter gradients into ``model.grads`` (call ``zero_grad`` first).
        """
        kept = self.layers[0]._x
        if kept is None:
            raise RuntimeError("backward() needs a forward() first (model(x) keeps nothing)")
        if v.is_device_array(dy):
            g = v.check_device_array("dy", dy, self.width[-1], self.dtype, self.backend,
                                     n_rows=kept.shape[0])
        else:
            g = self.backend.asarray(v.check_array("dy", dy, self.width[-1], self.dtype,
                                                   n_rows=kept.shape[0]), self.dtype)
        for layer in reversed(self.layers):
            g = layer.backward(g)
        return self.backend.to_host(g)

    def _target(self, y_true, n_rows):
        """y_true as (B, width[-1]); a 1-D (B,) is accepted when there is one output."""
        arr = np.asarray(y_true) if not hasattr(y_true, "__cuda_array_interface__") else y_true
        if getattr(arr, "ndim", None) == 1 and self.width[-1] == 1:
            arr = np.asarray(arr).reshape(-1, 1)
        return v.check_array("y_true", arr, self.width[-1], self.dtype, n_rows=n_rows)

    def loss_and_grad(self, x, y_true):
        """loss = mean((model(x) - y_true)**2) and its gradient for every parameter.

        Returns ``(loss, grads)``: a float and a dict of new arrays keyed like
        ``params``. ``model.grads`` holds the same values afterwards.
        """
        be = self.backend
        x = self._input(x)
        target = be.asarray(self._target(y_true, x.shape[0]), self.dtype)
        self.zero_grad()
        for layer in self.layers[:-1]:
            x = layer.forward(x, keep=True)
        # the last layer, the loss and its backward in one backend call, as in fit
        last = len(self.layers) - 1
        _, loss, g = self.layers[-1].forward_mse_backward(x, target, need_dx=last > 0)
        for l in range(last - 1, -1, -1):  # nothing reads the input's gradient
            g = self.layers[l].backward(g, need_dx=l > 0)
        return float(loss), {n: self.backend.to_host(a) for n, a in self.grads.items()}

    # -- interpretability: numkan/symbolic.py ------------------------------------
    fix_symbolic = _symbolic.fix_symbolic
    unfix_symbolic = _symbolic.unfix_symbolic
    suggest_symbolic = _symbolic.suggest_symbolic
    auto_symbolic = _symbolic.auto_symbolic
    symbolic_formula = _symbolic.symbolic_formula

    # -- attribution and pruning: numkan/prune.py ----------------------------------
    # prune_edge works in place; the others return new models. Each keeps the
    # scores it computed on the model it scored (pykan's node_scores/edge_scores).
    def attribute(self, x=None):
        """Node, edge and input scores on data ``x`` (B >= 2; default: the model's
        data, ``cache_data``), pykan's semantics (``numkan.prune``).

        Sets ``node_scores`` and ``edge_scores``; returns ``feature_score``
        (width[0],). Changes nothing else.
        """
        self.node_scores, self.edge_scores = _prune.attribute(self, x)
        return self.node_scores[0]

    @property
    def feature_score(self):
        """Input scores (width[0],) from ``attribute`` on the model's data (computed now)."""
        return self.attribute()

    def prune_edge(self, threshold=3e-2, x=None, keep_mean=True):
        """IN PLACE: mask every edge whose score is <= ``threshold``; returns None.
        See ``numkan.prune.prune_edge``."""
        self.node_scores, self.edge_scores = _prune.prune_edge(self, threshold, x, keep_mean)

    def prune_node(self, threshold=1e-2, active_neurons_id=None, x=None, keep_mean=True):
        """A NEW model without the hidden nodes whose score is <= ``threshold``
        (``numkan.prune.prune_node``); this model is unchanged but for its scores."""
        new, found = _prune.prune_node(self, threshold, active_neurons_id, x, keep_mean)
        self._keep_scores(found)
        return new

    def prune_input(self, threshold=1e-2, active_inputs=None, x=None, keep_mean=True):
        """A NEW model without the inputs whose score is <= ``threshold``; its
        ``input_id`` lists the kept inputs (``numkan.prune.prune_input``)."""
        new, found = _prune.prune_input(self, threshold, active_inputs, x, keep_mean)
        self._keep_scores(found)
        return new

    def prune(self, node_th=1e-2, edge_th=3e-2, x=None, keep_mean=True):
        """A NEW model: ``prune_node(node_th)``, then ``prune_edge(edge_th)`` on the copy.

        This model is unchanged but for its scores. ``keep_mean``: see ``numkan.prune``.
        """
        node_th = v.check_float("node_th", node_th, minimum=0)
        edge_th = v.check_float("edge_th", edge_th, minimum=0)
        xh = _prune.model_data(self, x, min_rows=2)
        new = self.prune_node(node_th, x=xh, keep_mean=keep_mean)
        new.prune_edge(edge_th, x=xh, keep_mean=keep_mean)
        return new

    def _keep_scores(self, found):
        if found is not None:
            self.node_scores, self.edge_scores = found

    def plot(self, path=None, beta=3, in_vars=None, out_vars=None, title=None, x=None, **kw):
        """Draw the network with matplotlib (see ``numkan.plot.plot``); returns the Figure."""
        return _plot.plot(self, path, beta=beta, in_vars=in_vars, out_vars=out_vars, title=title, x=x, **kw)

    # -- training, grids, files: numkan/train.py, grids.py, io.py ------------------
    @functools.wraps(_train.fit)
    def fit(self, dataset, *args, **kwargs):
        history = _train.fit(self, dataset, *args, **kwargs)
        # a fit that returned: its training inputs become the model's data
        self.cache_data = check_dataset(dataset, self.width[0], self.width[-1])["train_input"]
        return history
    update_grid = _grids.update_grid
    update_grid_from_samples = _grids.update_grid   # pykan's name
    refine = _grids.refine
    save = _io.save

    load = classmethod(_io.load)

    def __repr__(self):
        mult = f", mult_arity={self.mult_arity}" if any(self.mult_arity) else ""
        return (f"KAN(width={self.width_spec}{mult}, grid={self.grid}, k={self.k}, base_fun={self.base_fun!r}, "
                f"dtype={self.dtype.name}, device={self.device!r})")

    # -- physics-informed training: numkan/pde.py ----------------------------------
    @functools.wraps(_pde.fit_pde)
    def fit_pde(self, x, loss_fn, *args, **kwargs):
        history = _pde.fit_pde(self, x, loss_fn, *args, **kwargs)
        # as after fit: the interior points become the model's data
        self.cache_data = v.check_array("x", x, self.width[0], np.float64)
        return history
