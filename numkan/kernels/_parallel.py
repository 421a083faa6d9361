"""How the CPU kernels split work between threads, and which threads run them.

Three rules, shared by every Numba kernel of the CPU backend:

- The number of batch chunks depends only on the problem's shape, never on
  the number of threads, so results (sums over the batch are added chunk by
  chunk) are bit-identical on any machine and any ``numba.set_num_threads``.
- Small problems run on one thread. Waking a thread pool costs tens of
  microseconds, and far more on a busy machine, which a layer of a few
  thousand edges does not repay.
- Every launch goes through ``threads_for``, which keeps the process safe to
  fork and to call from several Python threads (below).

The threading layer (Numba's pool of worker threads), threads and ``fork``
--------------------------------------------------------------------------
numkan leaves the choice to Numba (TBB when installed, else GNU OpenMP "omp"
on Linux, else its own "workqueue"; ``NUMBA_THREADING_LAYER`` overrides it)
and makes each layer fail safely where it is unsafe, rather than choosing
"workqueue" for everyone: workqueue hands even a one-thread launch to a
worker thread, which makes the small layers that are numkan's common case
several times slower than omp (benchmarks/RESULTS.md, "Threading layers").

- "omp" is thread-safe but not fork-safe: Numba kills a child forked after
  its OpenMP threads started (``multiprocessing``'s "fork" start method, the
  Linux default before Python 3.14) at its first parallel launch, and
  ``Pool.map`` then waits forever. ``threads_for`` raises a ``RuntimeError``
  in such a child instead, which says to use "spawn" or "forkserver".
- "workqueue" is fork-safe but not thread-safe: two Python threads launching
  parallel kernels at once abort the process. ``threads_for`` holds a
  process-wide lock around each launch while the layer is "workqueue"
  (kernels from several Python threads take turns).
- "tbb" is both (``pip install tbb``).
"""
import os
import threading
from contextlib import contextmanager

import numba

TASKS = 16            # (chunk, input) tasks wanted per reduction over the batch
SERIAL_EDGES = 1 << 17  # below this many edges (B * I * O) a kernel runs on one thread


def _layer_started():
    """The threading layer Numba started, or None before its first parallel launch."""
    try:
        return numba.threading_layer()
    except ValueError:  # Numba raises this until its threads are launched
        return None


# Launch state. _layer is None until the first launch has shown which layer
# Numba started; until then every launch takes the lock, which is always safe.
_layer = None
_launch_lock = threading.RLock()  # reentrant: a wrapper may launch inside another's block
_forked_from = None  # in a child forked from an "omp" process: the parent's pid


def _after_fork_in_child():
    # The child has one thread: a lock another thread of the parent held at
    # the fork would never be released, so the child gets a fresh one.
    global _launch_lock, _forked_from
    _launch_lock = threading.RLock()
    if _layer_started() == "omp":  # started by numkan or by other code before the fork
        _forked_from = os.getppid()


if hasattr(os, "register_at_fork"):  # POSIX only; spawn-only platforms never fork
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _check_fork():
    if _forked_from is not None:
        raise RuntimeError(
            "numkan's CPU kernels cannot run in a process forked from one (pid "
            f"{_forked_from}) whose Numba threads run the 'omp' threading layer: GNU OpenMP is "
            "not fork-safe and Numba would kill this process. Start worker processes with "
            "multiprocessing.get_context('spawn') (or 'forkserver'), or choose a fork-safe "
            "threading layer before numkan's first kernel runs: install tbb, or set "
            "NUMBA_THREADING_LAYER=workqueue.")


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
    """Launch the enclosed kernel calls: on one thread when the work is small,
    one launch at a time while the layer is "workqueue", and never in a child
    forked from an "omp" process (see the module docstring)."""
    global _layer
    _check_fork()
    serial = edges < SERIAL_EDGES
    lock = _launch_lock if _layer is None or _layer == "workqueue" else None
    if lock is not None:
        lock.acquire()
    try:
        if serial:
            before = numba.get_num_threads()
            numba.set_num_threads(1)
            try:
                yield
            finally:
                numba.set_num_threads(before)
        else:
            yield
    finally:
        if _layer is None:
            _layer = _layer_started()
        if lock is not None:
            lock.release()
