"""KANLayer: the parameters of one layer and its forward/backward pass.

The maths lives in the backend kernels (``numkan.kernels``); a layer holds the
arrays, remembers its input for the backward pass and owns its gradients.

    grid        (I, G+2k+1)  knots, one row per input (not trained)
    coef        (I, K, O)    spline coefficients, K = G + k
    scale_base  (I, O)       weight of the base function b(x)
    scale_sp    (I, O)       weight of the spline
    mask        (I, O)       1 for a live edge, 0 for a pruned one (not trained)

and the symbolic branch (``numkan.symbolic``), phi_s = c * f(a*x + b) + d per edge:

    symbolic_affine  (I, O, 4)  (a, b, c, d), trained (backend array)
    symbolic_mask    (I, O)     1 where the edge's symbolic part is live (host, not trained)
    symbolic_names   I lists of O names from ``SYMBOLIC_LIB`` (host)
"""
import numpy as np

from . import _validate, spline, symbolic

PARAM_NAMES = ("coef", "scale_base", "scale_sp")
# every backend array a layer holds: what ``to`` moves between devices
ARRAY_NAMES = ("grid", "mask") + PARAM_NAMES + tuple("d" + n for n in PARAM_NAMES)
ARRAY_NAMES += ("symbolic_affine", "dsymbolic_affine")


class KANLayer:
    """One KAN layer with I inputs and O outputs: y[b,o] = sum_i phi[i,o](x[b,i]).

    Built by ``KAN``, which validates the arguments; ``rng`` is the model's
    ``numpy.random.Generator``, drawn from in a fixed order so that the same
    seed gives the same layer on every backend and dtype.
    """

    def __init__(self, in_dim, out_dim, grid, k, backend, dtype, rng, grid_range=(-1.0, 1.0),
                 base_fun="silu", noise_scale=0.3, scale_base_mu=0.0, scale_base_sigma=1.0,
                 grid_eps=0.02):
        self.in_dim, self.out_dim, self.num, self.k = in_dim, out_dim, grid, k
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
        for i in range(I):  # the spline through the noise at the G+1 interior knots
            coef[i] = spline.fit_coef(t[i, k:k + G + 1], noise[:, i, :], t[i], k)

        put = lambda a: backend.asarray(a, self.dtype)
        self.grid = put(t)
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

    # -- the pass -------------------------------------------------------------
    def forward(self, x, keep=True):
        """y (B, O) from x (B, I), both backend arrays; keeps x for backward when ``keep``."""
        if tuple(x.shape[1:]) != (self.in_dim,) or x.dtype != self.dtype:
            raise ValueError(f"x must have shape (batch, {self.in_dim}) and dtype {self.dtype}, "
                             f"got shape {tuple(x.shape)} and dtype {x.dtype}")
        y = self.backend.zeros((x.shape[0], self.out_dim), self.dtype)
        self.backend.spline_forward(y, x, self.grid, self.coef, self.scale_base, self.scale_sp,
                                    self.mask, self.k, self.base_fun)
        if symbolic.is_active(self):  # evaluated on the host, only when some edge is symbolic
            y = symbolic.branch_forward(self, x, y)
        if keep:
            self._x = x
        return y

    def backward(self, dy):
        """dx (B, I) from dy (B, O); adds this layer's parameter gradients into d*."""
        if self._x is None:
            raise RuntimeError("backward() needs a forward() first")
        x = self._x
        if tuple(dy.shape) != (x.shape[0], self.out_dim) or dy.dtype != self.dtype:
            raise ValueError(f"dy must have shape ({x.shape[0]}, {self.out_dim}) and dtype {self.dtype}, "
                             f"got shape {tuple(dy.shape)} and dtype {dy.dtype}")
        dx = self.backend.zeros(x.shape, self.dtype)
        self.backend.spline_backward(dx, self.dcoef, self.dscale_base, self.dscale_sp, dy, x,
                                     self.grid, self.coef, self.scale_base, self.scale_sp,
                                     self.mask, self.k, self.base_fun)
        if symbolic.is_active(self):
            dx = symbolic.branch_backward(self, x, dy, dx)
        return dx

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
        self.backend, self._x = backend, None
        return self

    def param_names(self):
        """Names of the trained arrays: PARAM_NAMES, plus "symbolic_affine" when some edge is symbolic."""
        return PARAM_NAMES + (("symbolic_affine",) if symbolic.is_active(self) else ())

    def zero_grad(self):
        for n in PARAM_NAMES:
            self.backend.fill(getattr(self, "d" + n), 0)
        self.backend.fill(self.dsymbolic_affine, 0)

    def __repr__(self):
        return (f"KANLayer(in_dim={self.in_dim}, out_dim={self.out_dim}, grid={self.num}, "
                f"k={self.k}, base_fun={self.base_fun!r}, dtype={self.dtype.name})")
