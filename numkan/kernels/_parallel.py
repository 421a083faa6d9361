"""How the CPU kernels split work between threads.

Two rules, shared by every Numba kernel of the CPU backend:

- The number of batch chunks depends only on the problem's shape, never on
  the number of threads, so results (sums over the batch are added chunk by
  chunk) are bit-identical on any machine and any ``numba.set_num_threads``.
- Small problems run on one thread. Waking a thread pool costs tens of
  microseconds, and far more on a busy machine, which a layer of a few
  thousand edges does not repay.
"""
from contextlib import contextmanager

import numba

TASKS = 16            # (chunk, input) tasks wanted per reduction over the batch
SERIAL_EDGES = 1 << 17  # below this many edges (B * I * O) a kernel runs on one thread


def batch_chunks(B, I):
    """Batch chunks for kernels whose tasks are (chunk, input) pairs."""
    if I >= TASKS:
        return 1
    return max(1, min(B, -(-TASKS // I)))


def input_block(I):
    """Inputs per task of the backward pass: a few, so that each task reuses its
    tile of dy rows, and no more than leaves ``TASKS`` tasks on the inputs alone."""
    return max(1, min(16, I // TASKS))


@contextmanager
def threads_for(edges):
    """Run the enclosed kernel calls on one thread when the work is small."""
    if edges >= SERIAL_EDGES:
        yield
        return
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(before)
