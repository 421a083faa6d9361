"""The Numba version guard (``numkan.kernels._numba``): the range it accepts is
the one pyproject.toml gives numba, the installed Numba is in it, a version
outside it is an error naming the version and the range, and device="cpu"
reports that error instead of falling back to the reference kernels.
"""
import json
import os
import pathlib
import re
import subprocess
import sys
import textwrap

import pytest

numba = pytest.importorskip("numba", reason="numba is not installed")
from packaging.requirements import Requirement  # noqa: E402  (pytest's own dependency)
from packaging.version import Version  # noqa: E402

from numkan.kernels import _numba  # noqa: E402

PYPROJECT = pathlib.Path(__file__).resolve().parents[1] / "pyproject.toml"


def numba_requirement():
    """The numba entry of pyproject.toml's [project] dependencies."""
    text = PYPROJECT.read_text()
    try:
        import tomllib
        deps = tomllib.loads(text)["project"]["dependencies"]
    except ImportError:  # Python 3.10: read the one line
        deps = re.findall(r'"([^"]+)"', re.search(r"^dependencies\s*=\s*\[(.*)\]", text, re.M).group(1))
    found = [Requirement(d) for d in deps if Requirement(d).name == "numba"]
    assert len(found) == 1, deps
    return found[0]


def test_pyproject_bounds_are_the_guards_range():
    spec = numba_requirement().specifier
    assert {(s.operator, s.version) for s in spec} == {(">=", _numba.NUMBA_MIN), ("<", _numba.NUMBA_BELOW)}, \
        f"pyproject.toml has numba{spec}, the guard numba>={_numba.NUMBA_MIN},<{_numba.NUMBA_BELOW}"
    for v in _numba.TESTED:  # the versions named as tested are inside both
        assert spec.contains(v) and _numba.check_version(v) == v


def test_installed_numba_is_in_range():
    assert numba_requirement().specifier.contains(Version(numba.__version__).base_version)
    assert _numba.check_version() == numba.__version__


@pytest.mark.parametrize("version", ["0.59.1", "0.60.0", "0.69.0", "0.69.0rc1", "0.70.2", "1.0.0", "0.9.0",
                                     "unknown"])
def test_versions_outside_the_range_are_an_error_naming_the_cause(version):
    with pytest.raises(ImportError) as info:
        _numba.check_version(version)
    assert isinstance(info.value, _numba.UnsupportedNumba)
    message = str(info.value)
    assert f"numba {version} is not supported" in message, message
    assert f">={_numba.NUMBA_MIN},<{_numba.NUMBA_BELOW}" in message, message
    # pip's reading of pyproject.toml's bounds agrees (pre-releases of the upper bound excluded)
    if version != "unknown":
        assert not numba_requirement().specifier.contains(version, prereleases=True)


@pytest.mark.parametrize("version", ["0.61.0", "0.61.2", "0.68.1", "0.68.9", "0.65.0+12.gabcdef"])
def test_versions_inside_the_range_pass(version):
    assert _numba.check_version(version) == version
    assert numba_requirement().specifier.contains(Version(version).base_version)


UNSUPPORTED = textwrap.dedent("""
    import json, sys, warnings
    import numba
    numba.__version__ = "0.99.0"    # what an unsupported release reports
    errors, backends = [], []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from numkan.kernels import get_backend
        for _ in range(2):  # the second call must fail too, not find a half-imported module
            try:
                backends.append(get_backend("cpu").__name__)
            except Exception as exc:
                errors.append([type(exc).__name__, str(exc)])
    warned = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    sys.stdout.write(json.dumps(dict(errors=errors, backends=backends, warnings=warned)) + "\\n")
""")


def test_get_backend_reports_an_unsupported_numba_instead_of_falling_back():
    proc = subprocess.run([sys.executable, "-c", UNSUPPORTED], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONWARNINGS=""))
    assert proc.returncode == 0, f"subprocess failed:\n{proc.stdout}\n{proc.stderr}"
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["backends"] == [] and out["warnings"] == [], out
    assert len(out["errors"]) == 2, out
    for name, message in out["errors"]:
        assert name == "RuntimeError", out
        assert "numkan.kernels.cpu" in message and "numba 0.99.0 is not supported" in message, message
        assert f"numba>={_numba.NUMBA_MIN},<{_numba.NUMBA_BELOW}" in message, message
