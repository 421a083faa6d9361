"""The first run says what it is doing: a notice on stderr when numkan's kernels
are compiled, once per process, and nothing when they load from Numba's cache."""
import io
import types

import numba
import numba.core.event
import numpy as np
import pytest

from numkan.kernels import _numba
from numkan import warmup


def _fresh_function(module):
    """A new njit function (never compiled, no cache) that claims to live in ``module``."""
    def plus_one(a):
        return a + 1
    plus_one.__module__ = module
    return numba.njit(cache=False)(plus_one)


@pytest.fixture
def notice():
    stream = io.StringIO()
    listener = _numba._CompileNotice(stream)
    numba.core.event.register("numba:compile", listener)
    try:
        yield listener, stream
    finally:
        numba.core.event.unregister("numba:compile", listener)


def test_a_compilation_of_a_numkan_kernel_is_announced_once(notice, monkeypatch):
    monkeypatch.delenv("NUMKAN_QUIET", raising=False)
    listener, stream = notice
    _fresh_function("somewhere.else")(1.0)  # not numkan's: nothing said
    assert stream.getvalue() == "" and not listener.said
    _fresh_function("numkan.kernels.cpu")(1.0)  # a real compilation through Numba's event
    first = stream.getvalue()
    assert first.startswith("numkan: compiling the CPU kernels (plus_one first")
    assert "once" in first and "python -m numkan.warmup" in first and first.endswith("\n")
    _fresh_function("numkan.kernels.cpu")(2.0)
    assert stream.getvalue() == first  # once per process


def test_a_cache_hit_or_a_compiled_signature_says_nothing(notice, monkeypatch):
    monkeypatch.delenv("NUMKAN_QUIET", raising=False)
    listener, stream = notice
    f = _fresh_function("somewhere.else")
    f(1.0)
    f.py_func.__module__ = "numkan.kernels.cpu"
    f(3.0)  # same signature: no compilation, no event
    assert stream.getvalue() == ""


def test_the_notice_names_gpu_kernels_and_can_be_silenced(monkeypatch):
    stream = io.StringIO()
    listener = _numba._CompileNotice(stream)
    event = types.SimpleNamespace(data={"dispatcher": _fresh_function("numkan.kernels.cuda")})
    monkeypatch.setenv("NUMKAN_QUIET", "1")
    listener.on_start(event)
    assert stream.getvalue() == "" and not listener.said
    monkeypatch.delenv("NUMKAN_QUIET")
    listener.on_start(event)
    assert stream.getvalue().startswith("numkan: compiling the GPU kernels (plus_one first")


def test_kernel_names_are_short():
    def forward():
        pass
    forward.__qualname__ = "_forward_kernel.<locals>.forward"
    assert _numba._kernel_name(forward) == "forward"
    forward.__qualname__ = "_find_span"
    assert _numba._kernel_name(forward) == "find_span"


def test_warmup_fits_the_models_it_names():
    out = io.StringIO()
    seconds = warmup.warm(k=(3,), dtypes=("float64",), widths=([2, 3, 1],), out=out)
    assert seconds > 0
    assert out.getvalue().startswith("numkan.warmup: float64, k = 3, width [2, 3, 1]: ")


def test_warmup_command_line_rejects_an_unknown_dtype(capsys):
    with pytest.raises(SystemExit) as e:
        warmup.main(["--dtype", "float16"])
    assert e.value.code == 2
    assert "float16" in capsys.readouterr().err
