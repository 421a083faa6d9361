"""Fixed-size scratch arrays on the stack, for the compiled CPU kernels.

``local_array(n, dtype)`` inside an ``njit`` function gives a 1-d array of
``n`` elements (``n`` a compile-time constant) that lives in the function's
stack frame instead of on the heap. That matters for speed, not for meaning:

- a heap array (``np.empty``) is an opaque allocation, so LLVM keeps every
  read and write of it in memory, and must assume it may overlap the other
  arrays of the kernel (runtime overlap checks before each vectorised loop);
- a stack array of constant size, indexed by constants once the loops over
  it are unrolled (their trip counts are constants such as k + 1), is turned
  into plain registers by LLVM's scalar replacement of aggregates. The local
  B-spline triangle and a block of output accumulators then never touch memory.

The array is uninitialised, like ``np.empty``, and must not escape the
function that creates it (it dies with the stack frame): the kernels only
pass it down to inlined helpers.
"""
import llvmlite.ir as llir
import numba
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic


@intrinsic
def _stack_pointer(typingctx, size, dtype):
    """A pointer to ``size`` (a literal int) elements of ``dtype``, alloca'd in the entry block."""
    if not isinstance(size, types.IntegerLiteral) or not isinstance(dtype, (types.DType, types.NumberClass)):
        return None
    n = size.literal_value
    elem = dtype.dtype

    def codegen(context, builder, signature, args):
        ty = context.get_value_type(elem)
        # in the entry block, with a constant size: what scalar replacement needs
        return cgutils.alloca_once(builder, ty, size=llir.Constant(llir.IntType(64), n))

    return types.CPointer(elem)(size, dtype), codegen


@njit(inline="always")
def local_array(n, dtype):
    """An uninitialised 1-d array of ``n`` (a compile-time constant) ``dtype`` values on the stack."""
    return numba.carray(_stack_pointer(n, dtype), (n,))
