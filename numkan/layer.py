"""KANLayer: the parameters of one layer and its forward/backward pass.

The spline maths lives in the backend kernels (``numkan.kernels``); a layer
holds the arrays, remembers its input for the backward pass and owns its
gradients. The symbolic branch's maths (a few host lines) is written here,
beside the calls to the spline kernels.

    knots       (I, G+2k+1)  knots, one row per input (not trained); G = ``grid``
    coef        (I, K, O)    spline coefficients, K = G + k
    scale_base  (I, O)       weight of the base function b(x)
    scale_sp    (I, O)       weight of the spline
    mask        (I, O)       1 for a live edge, 0 for a pruned one (not trained)

and the symbolic branch, phi_s = c * f(a*x + b) + d per edge (``numkan.symbolic`` fixes
edges to formulas; ``numkan.functions`` holds the library f comes from):

    symbolic_affine  (I, O, 4)  (a, b, c, d), trained (backend array)
    symbolic_mask    (I, O)     1 where the edge's symbolic part is live (host, not trained)
    symbolic_names   I lists of O names from ``SYMBOLIC_LIB`` (host)

so that every edge is

    phi[i,o](x) = mask[i,o] * (scale_base[i,o] b(x) + scale_sp[i,o] spline[i,o](x))
                  + symbolic_mask[i,o] * (c f(a x + b) + d)

Multiplication nodes (pykan's MultKAN). The O edge outputs ("subnodes")
are summed as above; a layer whose next node layer has product nodes then
multiplies groups of them: the first ``n_sum`` subnodes are sum nodes as
they are, and product node j multiplies the next ``mult_arity[j]``:

    z[b, n] = prod_{s in group n} y[b, s]     groups: [offsets[n], offsets[n+1])
    dy[b, s] = dz[b, n] * prod_{t in group n, t != s} y[b, t]

(``group_product_forward``/``_backward`` of the backend; no division, so a
factor that is 0 still gets its gradient). ``n_nodes = n_sum + len(mult_arity)``
is the layer's output width; without product nodes z = y.
"""
import copy
import weakref

import numpy as np

from . import _validate, spline
from .functions import SYMBOLIC_LIB
from .kernels import get_backend

PARAM_NAMES = ("coef", "scale_base", "scale_sp")
# every backend array a layer holds: what ``to`` moves between devices
ARRAY_NAMES = ("knots", "mask") + PARAM_NAMES + tuple("d" + n for n in PARAM_NAMES)
ARRAY_NAMES += ("symbolic_affine", "dsymbolic_affine")
# what ``derive`` may replace: the edge arrays (backend) and the symbolic state (host)
EDGE_ARRAYS = ("knots", "coef", "scale_base", "scale_sp", "mask", "symbolic_affine")


class KANLayer:
    """One KAN layer with I inputs and O outputs: y[b,o] = sum_i phi[i,o](x[b,i]).

    Built by ``KAN``, which validates the arguments; ``rng`` is the model's
    ``numpy.random.Generator``, drawn from in a fixed order so that the same
    seed gives the same layer on every backend and dtype.
    """

    def __init__(self, in_dim, out_dim, grid, k, backend, dtype, rng, grid_range=(-1.0, 1.0),
                 base_fun="silu", noise_scale=0.3, scale_base_mu=0.0, scale_base_sigma=1.0,
                 grid_eps=0.02, mult_arity=()):
        # out_dim counts the output nodes; with product nodes the edges end in more subnodes
        self.mult_arity = [int(a) for a in mult_arity]
        self.n_nodes = out_dim
        out_dim = out_dim - len(self.mult_arity) + sum(self.mult_arity)
        self.in_dim, self.out_dim, self.grid, self.k = in_dim, out_dim, grid, k
        self.base_fun, self.grid_eps, self.grid_range = base_fun, grid_eps, tuple(grid_range)
        self.backend, self.dtype = backend, np.dtype(dtype)
        I, O, G = in_dim, out_dim, grid

        # draws in float64, in this order, whatever the backend and dtype
        noise = (rng.random((G + 1, I, O)) - 0.5) * noise_scale / G
        sb = (scale_base_mu + scale_base_sigma * (rng.random((I, O)) * 2 - 1)) / np.sqrt(I)

        # checked before anything is fitted on them: a range whose knots overflow, or
        # collapse when rounded to the dtype, is an error here, not NaN in the kernels
        t = spline.uniform_grid(self.grid_range, G, k, I)
        _validate.check_knots(f"grid_range={self.grid_range} with grid={G}, k={k}", t, k, self.dtype)
        coef = np.empty((I, G + k, O))
        # each spline through the noise at its G+1 interior knots
        for i, A in spline.basis_matrices(t[:, k:k + G + 1].T, t, k):
            coef[i] = spline.lstsq_coef(A, noise[:, i, :])

        put = lambda a: backend.asarray(a, self.dtype)
        self.knots = put(t)
        self.coef = put(coef)
        self.scale_base = put(sb)
        self.scale_sp = put(np.full((I, O), 1.0 / np.sqrt(I)))
        self.mask = put(np.ones((I, O)))
        self.dcoef = backend.zeros(self.coef.shape, self.dtype)
        self.dscale_base = backend.zeros((I, O), self.dtype)
        self.dscale_sp = backend.zeros((I, O), self.dtype)
        # symbolic branch: off (symbolic_mask 0) until fix_symbolic; no random draws
        self.symbolic_affine = put(np.tile([1.0, 0.0, 1.0, 0.0], (I, O, 1)))
        self.dsymbolic_affine = backend.zeros((I, O, 4), self.dtype)
        self.symbolic_mask = np.zeros((I, O))
        self.symbolic_names = [["0"] * O for _ in range(I)]
        self._x = None
        self._fixed = None  # a weak reference to the fixed input of the last kept forward (``subnodes``), if any
        self._y = None  # the subnodes of the last kept forward, when there are product nodes

    # -- product nodes ------------------------------------------------------------
    @property
    def n_sum(self):
        """Number of sum nodes (the first outputs)."""
        return self.n_nodes - len(self.mult_arity)

    @property
    def offsets(self):
        """(n_nodes + 1,) int64: output node n multiplies subnodes offsets[n] .. offsets[n+1] - 1."""
        return np.concatenate([np.arange(self.n_sum + 1),
                               self.n_sum + np.cumsum(self.mult_arity, dtype=np.int64)]).astype(np.int64)

    @property
    def node_of(self):
        """(out_dim,) int64: the output node each subnode (edge output) feeds."""
        return np.repeat(np.arange(self.n_nodes), np.diff(self.offsets))

    def subnode_ids(self, nodes):
        """The subnodes (edge outputs) that feed the output nodes ``nodes``, in order."""
        off = self.offsets
        return np.concatenate([np.arange(off[n], off[n + 1]) for n in nodes] +
                              [np.zeros(0, np.int64)]).astype(np.int64)

    def _group_offsets(self):
        """``offsets`` as a backend array, checked against the subnodes first: the
        compiled kernels index with it unchecked, and mult_arity is a plain list
        that can be edited by hand."""
        off = self.offsets
        if off[-1] != self.out_dim or np.any(np.diff(off) < 1):
            raise ValueError(f"mult_arity {self.mult_arity} with {self.n_sum} sum nodes needs "
                             f"{off[-1]} subnodes, but the layer's edges end in {self.out_dim}")
        return self.backend.asarray(off, np.int64)

    def _products(self, y):
        z = self.backend.zeros((y.shape[0], self.n_nodes), self.dtype)
        self.backend.group_product_forward(z, y, self._group_offsets())
        return z

    # -- the pass -------------------------------------------------------------
    def forward(self, x, keep=True, out=None, fixed=None):
        """Outputs (B, n_nodes) from x (B, I), both backend arrays; keeps x for backward
        when ``keep``. ``out``, ``fixed``: see ``subnodes``."""
        y = self.subnodes(x, out, fixed)
        if keep:
            self._x = x
            # weakly: the caller owns the fixed input (fit's objective), and what a backend
            # keeps in it (per sample and input) should go when the caller is done with it
            self._fixed = weakref.ref(fixed) if fixed is not None and fixed.x is x else None
            self._y = y if self.mult_arity else None
        return self._products(y) if self.mult_arity else y

    def subnodes(self, x, out=None, fixed=None):
        """The edge sums y (B, O) before any product node (the outputs when there are none).

        ``out``: a backend array (B, O) of the layer's dtype that the sums are written
        into (a training loop's buffer, reused from call to call); None allocates one.
        ``fixed``: the backend's ``fixed_input(x)`` of this same x, when the caller passes
        one batch again and again (fit's batch through the first layer): the backend may
        keep in it what depends on x alone. ``backward`` uses it too."""
        if tuple(x.shape[1:]) != (self.in_dim,) or x.dtype != self.dtype:
            raise ValueError(f"x must have shape (batch, {self.in_dim}) and dtype {self.dtype}, "
                             f"got shape {tuple(x.shape)} and dtype {x.dtype}")
        shape = (x.shape[0], self.out_dim)
        if out is not None and (tuple(out.shape) != shape or out.dtype != self.dtype):
            raise ValueError(f"out must have shape {shape} and dtype {self.dtype}, "
                             f"got shape {tuple(out.shape)} and dtype {out.dtype}")
        y = self.backend.zeros(shape, self.dtype) if out is None else out  # overwritten by the kernel
        if fixed is not None and fixed.x is x:
            self.backend.fixed_forward(y, fixed, self.knots, self.coef, self.scale_base, self.scale_sp,
                                       self.mask, self.k, self.base_fun)
        else:
            self.backend.spline_forward(y, x, self.knots, self.coef, self.scale_base, self.scale_sp,
                                        self.mask, self.k, self.base_fun)
        if self.has_symbolic:  # evaluated on the host, only when some edge is symbolic
            y = self._branch_forward(x, y)
        return y

    def backward(self, dz, out=None, need_dx=True):
        """dx (B, I) from dz (B, n_nodes); adds this layer's parameter gradients into d*.
        ``out``: a backend array (B, I) of the layer's dtype to return dx in (its contents
        are replaced), as in ``subnodes``; None allocates one. ``need_dx=False`` (training's
        first layer, whose input gradient nobody reads) returns None and lets the backend
        skip dx's work; a layer with symbolic edges computes and returns it anyway."""
        if self._x is None:
            raise RuntimeError("backward() needs a forward() first")
        x = self._x
        if not self.mult_arity:
            dy = dz
        else:
            if tuple(dz.shape) != (x.shape[0], self.n_nodes) or dz.dtype != self.dtype:
                raise ValueError(f"dy must have shape ({x.shape[0]}, {self.n_nodes}) and dtype "
                                 f"{self.dtype}, got shape {tuple(dz.shape)} and dtype {dz.dtype}")
            dy = self.backend.zeros(self._y.shape, self.dtype)
            self.backend.group_product_backward(dy, dz, self._y, self._group_offsets())
        if tuple(dy.shape) != (x.shape[0], self.out_dim) or dy.dtype != self.dtype:
            raise ValueError(f"dy must have shape ({x.shape[0]}, {self.out_dim}) and dtype {self.dtype}, "
                             f"got shape {tuple(dy.shape)} and dtype {dy.dtype}")
        fixed = None if self._fixed is None else self._fixed()
        if not need_dx and not self.has_symbolic and fixed is not None:
            self.backend.fixed_backward(self.dcoef, self.dscale_base, self.dscale_sp, dy, fixed,
                                        self.knots, self.coef, self.scale_base, self.scale_sp,
                                        self.mask, self.k, self.base_fun)
            return None
        if not need_dx and not self.has_symbolic:
            self.backend.spline_backward(None, self.dcoef, self.dscale_base, self.dscale_sp, dy, x,
                                         self.knots, self.coef, self.scale_base, self.scale_sp,
                                         self.mask, self.k, self.base_fun)
            return None
        dx = self._dx_room(x, out, "out")
        self.backend.spline_backward(dx, self.dcoef, self.dscale_base, self.dscale_sp, dy, x,
                                     self.knots, self.coef, self.scale_base, self.scale_sp,
                                     self.mask, self.k, self.base_fun)
        if self.has_symbolic:
            dx = self._branch_backward(x, dy, dx)
        return dx

    def _dx_room(self, x, out, name):
        """A zeroed backend array of x's shape for the kernels to add dx into: ``out``
        (checked; its argument name is ``name``) or a new one."""
        if out is None:
            return self.backend.zeros(x.shape, self.dtype)
        if tuple(out.shape) != tuple(x.shape) or out.dtype != self.dtype:
            raise ValueError(f"{name} must have shape {tuple(x.shape)} and dtype {self.dtype}, "
                             f"got shape {tuple(out.shape)} and dtype {out.dtype}")
        self.backend.fill(out, 0)  # the kernel adds into it
        return out

    def forward_mse_backward(self, x, target, out=None, dx_out=None, need_dx=True):
        """``forward(x, keep=True, out=out)``, the mean squared error of the outputs against
        ``target`` (B, n_nodes) and ``backward(dy, out=dx_out, need_dx=need_dx)`` with
        dy = 2 (outputs - target) / outputs.size, as one backend call (``spline_mse``)
        where the layer has neither product nodes nor symbolic edges: a network's last
        layer in training. Returns (outputs, loss, dx). The backward runs whatever the
        loss: a caller that finds it not finite discards the gradients."""
        if self.mult_arity or self.has_symbolic:
            y = self.forward(x, keep=True, out=out)
            dy = self.backend.zeros(y.shape, self.dtype)
            loss = self.backend.mse_loss_grad(dy, y, target)
            return y, loss, self.backward(dy, out=dx_out, need_dx=need_dx)
        if tuple(x.shape[1:]) != (self.in_dim,) or x.dtype != self.dtype:
            raise ValueError(f"x must have shape (batch, {self.in_dim}) and dtype {self.dtype}, "
                             f"got shape {tuple(x.shape)} and dtype {x.dtype}")
        shape = (x.shape[0], self.out_dim)
        for name, a in (("target", target), ("out", out)):
            if a is not None and (tuple(a.shape) != shape or a.dtype != self.dtype):
                raise ValueError(f"{name} must have shape {shape} and dtype {self.dtype}, "
                                 f"got shape {tuple(a.shape)} and dtype {a.dtype}")
        dx = self._dx_room(x, dx_out, "dx_out") if need_dx else None
        y = self.backend.zeros(shape, self.dtype) if out is None else out  # overwritten by the kernel
        loss = self.backend.spline_mse(y, dx, self.dcoef, self.dscale_base, self.dscale_sp, target, x, self.knots,
                                       self.coef, self.scale_base, self.scale_sp, self.mask, self.k, self.base_fun)
        self._x, self._fixed, self._y = x, None, None  # as forward(keep=True)
        return y, loss, dx

    # -- the symbolic branch (host, float64) -------------------------------------
    @property
    def has_symbolic(self):
        """True when some edge is symbolic (then its symbolic part is evaluated)."""
        # count_nonzero: a quarter of .any()'s cost (no ufunc reduction), and this runs at every pass
        return np.count_nonzero(self.symbolic_mask) != 0

    def _symbolic_groups(self, inputs=None):
        """(i, f, outs) per input i (all, or those in ``inputs``) and library function f
        used by its symbolic edges: the edges one vectorised call evaluates."""
        sm = self.symbolic_mask
        rows = np.nonzero(np.any(sm != 0, axis=1))[0] if inputs is None else inputs
        for i in rows:
            by_name = {}
            for o in np.nonzero(sm[i])[0]:
                by_name.setdefault(self.symbolic_names[i][o], []).append(o)
            for name, outs in by_name.items():
                yield int(i), SYMBOLIC_LIB[name], np.asarray(outs)

    def symbolic_values(self, xh, inputs=None):
        """Symbolic part ys (B, O) float64 from host inputs xh (B, I), summed over
        every input (or those in ``inputs``):

            ys[b,o] = sum_i symbolic_mask[i,o] * (c[i,o] * f[i,o](a[i,o] * x[b,i] + b[i,o]) + d[i,o])

        One (B, n) temporary per input and function, n <= O: no (B, I, O) array.
        """
        xh = np.asarray(xh, dtype=np.float64)
        aff = np.asarray(self.backend.to_host(self.symbolic_affine), dtype=np.float64)
        ys = np.zeros((xh.shape[0], self.out_dim))
        for i, fun, outs in self._symbolic_groups(inputs):
            a, b, c, d = (aff[i, outs, q] for q in range(4))
            f = fun(a * xh[:, i, None] + b)                       # (B, n)
            ys[:, outs] += self.symbolic_mask[i, outs] * (c * f + d)
        return ys

    def _branch_forward(self, x, y):
        """y + symbolic part, as a new backend array (x (B, I), y (B, O) backend arrays)."""
        be = self.backend
        return be.asarray(be.to_host(y) + self.symbolic_values(be.to_host(x)), self.dtype)

    def _branch_backward(self, x, dy, dx):
        """Gradients of the symbolic part: returns dx + its share (new backend array) and adds
        (+=, in place) into ``dsymbolic_affine`` (I, O, 4).

        With g = dy, u = a*x + b, m = symbolic_mask[i,o]:
            d a[i,o]  += sum_b g[b,o] * m * c * f'(u) * x[b,i]
            d b[i,o]  += sum_b g[b,o] * m * c * f'(u)
            d c[i,o]  += sum_b g[b,o] * m * f(u)
            d d[i,o]  += sum_b g[b,o] * m
            dx[b,i]   += sum_o g[b,o] * m * c * f'(u) * a
        """
        be = self.backend
        xh = np.asarray(be.to_host(x), dtype=np.float64)
        g = np.asarray(be.to_host(dy), dtype=np.float64)
        aff = np.asarray(be.to_host(self.symbolic_affine), dtype=np.float64)
        daff = np.zeros(aff.shape)
        dxs = np.zeros(xh.shape)
        for i, fun, outs in self._symbolic_groups():
            a, b, c, d = (aff[i, outs, q] for q in range(4))
            xi = xh[:, i, None]
            f, df = fun.value_and_deriv(a * xi + b)               # (B, n)
            gm = g[:, outs] * self.symbolic_mask[i, outs]        # (B, n)
            gcf = gm * c * df
            daff[i, outs, 0] = np.sum(gcf * xi, axis=0)
            daff[i, outs, 1] = np.sum(gcf, axis=0)
            daff[i, outs, 2] = np.sum(gm * f, axis=0)
            daff[i, outs, 3] = np.sum(gm, axis=0)
            dxs[:, i] += gcf @ a
        acc = be.to_host(self.dsymbolic_affine) + daff
        self.dsymbolic_affine[...] = be.asarray(acc, self.dtype)  # in place: grads stay live
        return be.asarray(be.to_host(dx) + dxs, self.dtype)

    # -- new layers from this one -----------------------------------------------
    def derive(self, **state):
        """A new layer with this layer's settings and state, some of it replaced.

        ``state``: any of ``EDGE_ARRAYS`` (host or backend arrays, stored in the
        layer's dtype), ``symbolic_mask`` and ``symbolic_names``; what is not
        given is copied. The sizes follow ``coef`` (I, G + k, O): refining
        the grid or dropping nodes gives a layer of another shape. Gradients
        are new zeros and no input is kept. This layer is not changed.
        """
        unknown = sorted(set(state) - set(EDGE_ARRAYS) - {"symbolic_mask", "symbolic_names", "mult_arity"})
        if unknown:
            raise TypeError(f"derive() got unknown layer state {unknown}; expected names from "
                            f"{EDGE_ARRAYS + ('symbolic_mask', 'symbolic_names')}")
        be, dt = self.backend, self.dtype
        new = copy.copy(self)
        for n in EDGE_ARRAYS:
            a = state[n] if n in state else be.to_host(getattr(self, n))
            setattr(new, n, be.asarray(a, dt))
        new.symbolic_mask = np.array(state.get("symbolic_mask", self.symbolic_mask), dtype=np.float64)
        new.symbolic_names = [list(row) for row in state.get("symbolic_names", self.symbolic_names)]
        new.in_dim, K, new.out_dim = new.coef.shape
        new.grid = K - new.k
        new.mult_arity = [int(a) for a in state.get("mult_arity", self.mult_arity)]
        new.n_nodes = new.out_dim - sum(new.mult_arity) + len(new.mult_arity)
        new._y = None
        for n in PARAM_NAMES + ("symbolic_affine",):
            setattr(new, "d" + n, be.zeros(getattr(new, n).shape, dt))
        new._x = new._fixed = None
        return new

    def subset(self, ins, nodes):
        """A new layer holding the inputs ``ins`` and the output nodes ``nodes`` (index
        arrays) of this one, with the edges between them (a product node keeps all
        of its subnodes)."""
        outs = self.subnode_ids(nodes)
        arity = [self.mult_arity[n - self.n_sum] for n in nodes if n >= self.n_sum]
        host = lambda n: np.asarray(self.backend.to_host(getattr(self, n)))
        ix = np.ix_(ins, outs)
        return self.derive(knots=host("knots")[ins], coef=host("coef")[ins][:, :, outs],
                           scale_base=host("scale_base")[ix], scale_sp=host("scale_sp")[ix],
                           mask=host("mask")[ix], symbolic_affine=host("symbolic_affine")[ix],
                           symbolic_mask=self.symbolic_mask[ix],
                           symbolic_names=[[self.symbolic_names[i][o] for o in outs] for i in ins],
                           mult_arity=arity)

    # -- devices and parameters ---------------------------------------------------
    def to(self, backend):
        """Move every array to ``backend`` (through host memory); returns the layer.

        All copies are made before any is installed, so a failure leaves the
        layer as it was. The kept forward input is dropped.
        """
        return self._install(backend, self._copies(backend))

    def _copies(self, backend):
        return {n: backend.asarray(self.backend.to_host(getattr(self, n)), self.dtype)
                for n in ARRAY_NAMES}

    def _install(self, backend, arrays):
        for n, a in arrays.items():
            setattr(self, n, a)
        self.backend, self._x, self._fixed, self._y = backend, None, None, None
        return self

    # -- pickling (multiprocessing and joblib send layers and models between processes) --
    def __getstate__(self):
        """The layer's state with host copies of its arrays and its backend by name (a
        module does not pickle). What a forward kept for ``backward`` is not sent: a
        forward comes first after unpickling, as after ``copy``."""
        state = dict(self.__dict__)
        be = state.pop("backend")
        for n in ARRAY_NAMES:
            state[n] = be.to_host(state[n])
        state["backend"] = be.name
        state["_x"] = state["_fixed"] = state["_y"] = None
        return state

    def __setstate__(self, state):
        state = dict(state)
        backend = get_backend(state.pop("backend"))
        for n in ARRAY_NAMES:
            state[n] = backend.asarray(state[n], state["dtype"])
        self.__dict__.update(state)
        self.backend = backend

    def __copy__(self):
        """A shallow copy sharing the arrays (``derive`` replaces them), not a pickle's."""
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        return new

    def param_names(self):
        """Names of the trained arrays: PARAM_NAMES, plus "symbolic_affine" when some edge is symbolic."""
        return PARAM_NAMES + (("symbolic_affine",) if self.has_symbolic else ())

    def zero_grad(self):
        for n in PARAM_NAMES:
            self.backend.fill(getattr(self, "d" + n), 0)
        self.backend.fill(self.dsymbolic_affine, 0)

    def __repr__(self):
        mult = f", mult_arity={self.mult_arity}" if self.mult_arity else ""
        return (f"KANLayer(in_dim={self.in_dim}, out_dim={self.out_dim}{mult}, grid={self.grid}, "
                f"k={self.k}, base_fun={self.base_fun!r}, dtype={self.dtype.name})")
