"""numkan: Kolmogorov-Arnold Networks in NumPy and Numba, with hand-written gradients.

B-spline edges evaluated on their local support (k+1 non-zero bases per input),
so a layer costs the same at any grid size.
"""
from ._version import __version__
from .kernels import get_backend
from .layer import KANLayer
from .model import KAN
from .datasets import create_dataset
from .functions import SYMBOLIC_LIB, SymbolicFunction, add_symbolic

load = KAN.load

__all__ = ["KAN", "KANLayer", "get_backend", "create_dataset", "load", "SYMBOLIC_LIB",
           "SymbolicFunction", "add_symbolic", "__version__"]
