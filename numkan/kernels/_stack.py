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
pass it down to inlined helpers. It has no meminfo (nothing owns it, nothing
counts references to it), so it can be made in functions compiled without
Numba's reference counting (``cpu._SerialPartCompiler``).
"""
import llvmlite.ir as llir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic
from numba.np.arrayobj import populate_array


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
