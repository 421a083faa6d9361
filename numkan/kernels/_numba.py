"""Every use of Numba's internals in numkan, behind one version guard.

The CPU kernels are written in public Numba (``njit``, ``prange``, fastmath
flags). The few things they need beyond it are here, because they reach into
Numba's private machinery (its compiler pipeline, its array model, llvmlite IR,
its on-disk cache), which may change in any minor release:

    local_array(n, dtype)     a fixed-size scratch array on the stack (llvmlite IR)
    bitcast(value, to)        a number's bits read as another number type (llvmlite IR)
    by_float_type(...)        one name, a compiled implementation per float type (overload)
    serial_part(**options)    njit for a kernel's serial part: noalias, no reference counting
    cache_key(constants)      puts a kernel build's constants into Numba's on-disk cache key
    with_globals(f, names)    a copy of f rebuilt from its ``__code__``, with more globals
    compile_notice            says once on stderr that kernels are being compiled (Numba's event API)

They are written for the Numba versions ``NUMBA_MIN`` <= v < ``NUMBA_BELOW``, the
bounds pyproject.toml gives numba (tests/test_numba_guard.py checks both agree).
Importing this module with any other Numba raises ``UnsupportedNumba`` (an
ImportError) naming the installed version and the range, before any internal
name is touched, and ``kernels.get_backend("cpu")`` reports it as the cause.
"""
import os
import re
import sys
import types as pytypes

import numba

# 0.59 and 0.60 (LLVM 14) compile the kernels, but there b'(x) of the identity base
# at a non-finite x comes out finite where it must be NaN (tests/test_kernels.py).
NUMBA_MIN = "0.61"    # the lowest Numba the kernels' tests pass with (0.61.2)
NUMBA_BELOW = "0.69"  # the first minor release not tested (0.68.1 is)
TESTED = ("0.61.2", "0.68.1")


class UnsupportedNumba(ImportError):
    """The installed Numba is outside the range numkan's compiled kernels were written for."""


def _minor(version):
    m = re.match(r"(\d+)\.(\d+)", version)
    return None if m is None else (int(m.group(1)), int(m.group(2)))


def check_version(version=None):
    """Raise ``UnsupportedNumba`` unless ``version`` (default: the installed Numba's)
    is in [NUMBA_MIN, NUMBA_BELOW). Pre-releases of NUMBA_BELOW are outside, as
    in pip's ``<`` (0.69.0rc1 is not < 0.69)."""
    version = numba.__version__ if version is None else version
    minor = _minor(version)
    if minor is None or not _minor(NUMBA_MIN) <= minor < _minor(NUMBA_BELOW):
        raise UnsupportedNumba(
            f"numba {version} is not supported: numkan's compiled CPU kernels use Numba internals "
            f"written for numba>={NUMBA_MIN},<{NUMBA_BELOW} (tested with {' and '.join(TESTED)}). "
            f"Install a supported version (pip install 'numba>={NUMBA_MIN},<{NUMBA_BELOW}').")
    return version


check_version()

# Below this line: Numba's internals, imported only once the version is known to fit.
import llvmlite.ir as llir  # noqa: E402
from numba import njit, types  # noqa: E402
import numba.core.event  # noqa: E402
from numba.core import cgutils, compiler  # noqa: E402
from numba.extending import intrinsic, overload  # noqa: E402
from numba.np.arrayobj import populate_array  # noqa: E402


# ---------------------------------------------------------------------------
# Stack arrays. A heap array (np.empty) is an opaque allocation: LLVM keeps every
# access in memory and must assume it may overlap the kernel's other arrays. An
# array of constant size in the function's entry block, indexed by constants once
# the loops over it unroll, becomes registers (LLVM's scalar replacement of
# aggregates): the local B-spline triangle and a block of accumulators never
# touch memory. Uninitialised, like np.empty; it must not escape the function that
# makes it (inlined helpers may use it). It has no meminfo (nothing owns it,
# nothing counts references), so functions compiled without Numba's reference
# counting (``serial_part``) can make it.
@intrinsic
def local_array(typingctx, n, dtype):
    """An uninitialised 1-d array of ``n`` (a compile-time constant) ``dtype`` values on the stack."""
    if not isinstance(n, types.IntegerLiteral) or not isinstance(dtype, (types.DType, types.NumberClass)):
        return None
    size = n.literal_value
    elem = dtype.dtype
    arrty = types.Array(elem, 1, "C")

    def codegen(context, builder, signature, args):
        ty = context.get_value_type(elem)
        intp = context.get_value_type(types.intp)
        itemsize = context.get_abi_sizeof(ty)
        # in the entry block, with a constant size: what scalar replacement needs
        data = cgutils.alloca_once(builder, ty, size=llir.Constant(llir.IntType(64), size))
        ary = context.make_array(arrty)(context, builder)
        populate_array(ary, data=data, shape=[llir.Constant(intp, size)], strides=[llir.Constant(intp, itemsize)],
                       itemsize=llir.Constant(intp, itemsize), meminfo=None)  # no meminfo: nothing to count
        return ary._getvalue()

    return arrty(n, dtype), codegen


@intrinsic
def bitcast(typingctx, value, to):
    """The bits of the number ``value`` read as the number type ``to`` of the same width
    (np.float32 <-> np.int32, np.float64 <-> np.int64)."""
    if not isinstance(to, types.NumberClass) or not isinstance(value, (types.Integer, types.Float)):
        return None
    target = to.instance_type
    if not isinstance(target, (types.Integer, types.Float)) or target.bitwidth != value.bitwidth:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(target))

    return target(value, to), codegen


def by_float_type(name, float64, float32):
    """A function ``name(x)`` for compiled code only: ``float64(x)`` for a float64 x,
    ``float32(x)`` for a float32 x (both compiled functions, each compiled as
    its own, with its own fastmath flags, then inlined by LLVM)."""
    def stub(x):
        raise NotImplementedError(f"{name} is only callable from compiled code")

    stub.__name__ = stub.__qualname__ = name

    @overload(stub)
    def _impl(x):
        if x == types.float64:
            return lambda x: float64(x)
        if x == types.float32:
            return lambda x: float32(x)
        return None

    return stub


# ---------------------------------------------------------------------------
# A kernel's serial part (the body of its prange loop, written as a function of
# its own) compiled the way Numba compiles an outlined prange body: its array
# arguments marked as not overlapping one another (LLVM noalias), and no
# reference counting (which would add increments and decrements of the arrays
# handed to inlined helpers in the innermost loops). Such a part allocates
# nothing on the heap: every array it touches is its caller's, or on its stack.
class _SerialPartCompiler(compiler.Compiler):
    def __init__(self, typingctx, targetctx, library, args, return_type, flags, locals):
        flags = flags.copy()
        flags.noalias = True
        flags.nrt = False
        super().__init__(typingctx, targetctx, library, args, return_type, flags, locals)


def serial_part(**options):
    """``njit(**options)`` for a kernel's serial part: noalias arguments, no
    reference counting, and force-inlined by LLVM into the parallel kernel that
    calls it (Numba's parallel passes then see only the few lines of that kernel)."""
    return njit(pipeline_class=_SerialPartCompiler, forceinline=True, **options)


# ---------------------------------------------------------------------------
# Numba's on-disk cache tells two compiled functions with the same code and
# argument types apart only by the contents of their closures (not their globals,
# not their compile options). The kernels built by a factory share their code, so
# each one passes all its build's constants to ``cache_key``: the call compiles to
# nothing, but it makes them free variables of the function, held in its closure.
@njit(inline="always")
def cache_key(constants):
    """No-op: see above. ``constants`` is a tuple of the build's constants."""
    return None


def with_globals(f, names, cache_key=()):
    """A copy of the plain function f with the dict ``names`` added to (or replacing)
    its globals, which Numba reads as constants when it compiles the copy. The other
    globals are a copy of the module's as they stand at the call: f may only use
    names defined above it. ``cache_key`` names the build's constants that f's
    closure must hold (see ``cache_key``); a missing one is an error, not a cache
    entry shared by two builds."""
    missing = [n for n in cache_key if n not in f.__code__.co_freevars]
    if missing:
        raise RuntimeError(f"{f.__qualname__} does not hold {missing} in its closure: "
                           "Numba's on-disk cache could not tell its builds apart (call cache_key)")
    g = pytypes.FunctionType(f.__code__, {**f.__globals__, **names}, f.__name__, f.__defaults__, f.__closure__)
    g.__doc__ = f.__doc__
    return g


# ---------------------------------------------------------------------------
# The first compilation says so. A cold start (an empty Numba cache: a new
# install, an upgrade, a new kind of layer) spends tens of seconds compiling
# before the first result, and a silent pause looks like a hang. Numba fires its
# "numba:compile" event only on a real compilation (a cache hit loads without
# it), so a listener costs nothing on warm runs and on every call after the
# first: it speaks once per process, when one of numkan's own kernels is first
# compiled. Set NUMKAN_QUIET=1 to silence it.
COMPILE_NOTICE = (
    "numkan: compiling the {what} kernels ({kernel} first; first use of this kind of layer "
    "since install or upgrade: once, about 8 s for a narrow model and up to half a minute for "
    "wide layers on a 2-core machine; later runs load them from Numba's cache in well under a second). Run `python -m numkan.warmup` after "
    "installing to do this ahead of time.\n")


def _kernel_name(py_func):
    """'_forward_kernel.<locals>.forward' -> 'forward', '_find_span' -> 'find_span'."""
    return py_func.__qualname__.rsplit(".", 1)[-1].strip("_")


class _CompileNotice(numba.core.event.Listener):
    def __init__(self, stream=None):
        self.stream, self.said = stream, False

    def on_start(self, event):
        if self.said or os.environ.get("NUMKAN_QUIET"):
            return
        py_func = getattr(event.data.get("dispatcher"), "py_func", None)
        module = getattr(py_func, "__module__", "") or ""
        if not module.startswith("numkan."):
            return
        self.said = True
        what = "GPU" if module.endswith(".cuda") else "CPU"
        stream = self.stream or sys.stderr
        try:
            stream.write(COMPILE_NOTICE.format(what=what, kernel=_kernel_name(py_func)))
            stream.flush()
        except (OSError, ValueError):  # a closed or broken stderr must not stop a computation
            pass

    def on_end(self, event):
        pass


compile_notice = _CompileNotice()
numba.core.event.register("numba:compile", compile_notice)
