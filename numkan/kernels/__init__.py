"""The one device seam: ``get_backend(name)`` is the only code that knows devices.

A backend is a module with the same functions and signatures:

    name                                  "numpy", "cpu" or "cuda"
    asarray(a, dtype) / to_host(a)        host <-> backend storage
    zeros(shape, dtype), fill(a, value)   allocation and in-place fill
    copy_into(dst, src)                   dst[...] = src for backend arrays of one shape and
                                          dtype, on the backend (a device-to-device copy on cuda)
    upload_into(dst, src)                 dst[...] = src for a host ndarray src of dst's shape and
                                          dtype (one upload on cuda; no staging copy)
    all_finite(*arrays) -> bool           no NaN/inf in any of the backend arrays; one
                                          boolean comes back however many arrays are checked
    spline_forward(y, x, knots, coef, scale_base, scale_sp, mask, k, base_fun)
    spline_backward(dx, dcoef, dscale_base, dscale_sp,
                    dy, x, knots, coef, scale_base, scale_sp, mask, k, base_fun)
                                          dx None: the input gradient is not wanted (a
                                          backend may then skip the bases' derivatives)

    fixed_input(x) -> F                   x (B, I) that the caller passes again and again and does
                                          not change (fit's batch through the first layer); F.x is x
    fixed_forward(y, F, knots, coef, scale_base, scale_sp, mask, k, base_fun)
    fixed_backward(dcoef, dscale_base, dscale_sp, dy, F, knots, coef, scale_base, scale_sp,
                   mask, k, base_fun)     spline_forward / spline_backward (without dx) of F.x:
                                          a backend may keep in F what depends on x alone (the
                                          compiled CPU backend: each sample's span, u and b(x))

    local_bases(x, knots, k) -> (span, N) reference.local_basis's span (B, I) and bases
                                          (B, I, k+1) without derivatives, for host float64 x
                                          and knots: what grid updates fit on (spline.py)
    normal_sums(x, t_old, coef_old, t_new, k) -> (gram, rhs)
                                          the normal equations of moving splines to new knots
                                          (spline.refit: grid updates, refine), host float64:
                                          gram (I, K, K) = A_new^T A_new, rhs (I, K, O) =
                                          A_new^T A_old coef_old, A the design matrices of x

    group_product_forward(z, y, offsets)       z[b, n] = product of y[b, offsets[n]:offsets[n+1]]
    group_product_backward(dy, dz, y, offsets) dy[b, s] = dz[b, n] * the other factors of s's group
                                          (multiplication nodes; offsets an int64 backend array)

knots (I, G + 2k + 1) is the knot array of every input (KAN_MATH's t), k the
spline order, base_fun "silu", "identity" or "zero".

training ops (numkan.train calls these; see reference.py for the maths):

    mse_loss_grad(dy, y, target) -> float   loss = mean((y-target)^2); dy = 2(y-target)/y.size
    spline_mse(y, dx, dcoef, dscale_base, dscale_sp, target, x, knots, coef, scale_base, scale_sp,
               mask, k, base_fun) -> float
        a network's last layer and its loss in one call: spline_forward into y,
        mse_loss_grad against target, spline_backward with that dy (dx None: not
        wanted); a backend may keep each sample's span and bases between the passes
    adam_step(p, g, m, v, lr, beta1, beta2, eps, t)      one Adam update of p in place
    edge_moments_forward(s1, s2, xs1, xs2, x, knots, coef, scale_base, scale_sp, mask, k, base_fun)
        s1/s2 (I, O) = batch sums of phi and phi^2 per edge, xs1/xs2 (I,) of x and x^2
        (float64 outputs): what the sparsity regulariser's standard deviations need
    edge_moments_backward(dx, dcoef, dscale_base, dscale_sp, ds1, ds2, dxs1, dxs2,
                          x, knots, coef, scale_base, scale_sp, mask, k, base_fun)
        adds their vector-Jacobian products into dx and the parameter gradients

input-derivative ops (numkan.pde calls these for physics-informed training; the
maths is derived in ``numkan.pde``'s docstring):

    spline_jet_forward(y, Jy, Hy, x, J, H, knots, coef, scale_base, scale_sp, mask, k, base_fun)
        a layer's output jet from its input's: x (B, I) with J, H (B, I, D) its first and
        diagonal second derivatives with respect to the network's D inputs gives
        y (B, O), Jy, Hy (B, O, D) (overwritten); needs k >= 2
    spline_jet_backward(dx, dJ, dH, dcoef, dscale_base, dscale_sp, gy, gJ, gH,
                        x, J, H, knots, coef, scale_base, scale_sp, mask, k, base_fun)
        its vector-Jacobian products, added into dx, dJ, dH and the parameter gradients
        (cuda: NotImplementedError for now)

``reference`` (name "numpy") is pure NumPy and is the definition of correct;
``cpu`` compiles the same maths with Numba (its training ops in ``cpu_train``,
the Numba internals it needs, behind a version guard, in ``_numba``). Layers, models and training code
call ``backend.<op>`` and never branch on the device.
"""
import warnings

from . import reference

DEVICES = ("cpu", "numpy", "cuda")
_warned_no_numba = False


def _cpu_backend():
    """The compiled backend, or the reference when Numba itself cannot be imported.

    Only a failure of ``import numba`` means "Numba is missing": ImportError,
    or OSError from a broken install (llvmlite's shared library that does not
    load). If Numba imports and numkan's compiled kernels then fail to import,
    that is a bug or an unsupported Numba (``_numba.check_version``), and
    falling back would hide it behind a slow model: it is an error that names
    the cause.
    """
    global _warned_no_numba
    try:
        import numba
    except (ImportError, OSError) as exc:
        if not _warned_no_numba:
            warnings.warn(
                f"numba could not be imported ({type(exc).__name__}: {exc}); device='cpu' runs "
                "the pure-NumPy reference kernels, which are much slower. "
                "Install numba for the compiled kernels.",
                RuntimeWarning, stacklevel=4)
            _warned_no_numba = True
        return reference
    try:
        from . import cpu
    except Exception as exc:
        raise RuntimeError(
            f"numkan's compiled CPU kernels (numkan.kernels.cpu) failed to import with numba "
            f"{getattr(numba, '__version__', '?')}: {type(exc).__name__}: {str(exc).rstrip('.')}. "
            "Use device='numpy' for the reference kernels meanwhile.") from exc
    return cpu


def get_backend(name):
    """Return the backend module for ``name`` ("cpu", "numpy" or "cuda").

    "cpu" falls back to the NumPy reference, with one warning per process,
    when Numba cannot be imported (``import numba`` raises ImportError or
    OSError); when Numba imports but the compiled kernels do not (an
    unsupported Numba version among the causes), it raises RuntimeError naming
    the cause.
    """
    if not isinstance(name, str) or name not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {name!r}")
    if name == "numpy":
        return reference
    if name == "cpu":
        return _cpu_backend()
    try:
        from . import cuda
    except ImportError as exc:
        raise RuntimeError(
            f"device='cuda' needs numba-cuda and an NVIDIA GPU: {exc}. "
            "Install the extra with pip install 'numkan[cuda]'.") from exc
    cuda.check_available()
    return cuda
