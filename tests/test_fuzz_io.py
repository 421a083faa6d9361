"""Fuzzing ``load`` with damaged and hostile files.

Every file made here must either load to a valid model or raise ValueError
naming the file: never another exception, never a crash, never a
MemoryError. Three kinds of damage:

    bytes    bit flips, byte writes, insertions, deletions and truncations of
             a saved file, aimed mostly at the zip records and .npy headers,
             and telling values written into the zip's flag and method fields.
             The zip's CRC-32 guards the data, so a file that still loads must
             give the very model that was saved.
    header   edits of the JSON header (wrong types, nulls, huge sizes, the
             symbolic section's metadata), written back as a well-formed .npz.
    arrays   edits of the arrays (NaN, inf, masks of 7, knots that go down or
             span nothing, wrong shapes and dtypes, missing and extra arrays).

For header and array edits a model that loads must be *valid*: finite arrays
of the declared shapes and dtype, masks of 0 and 1, finite non-decreasing
knots spanning an interval, a forward pass on the reference kernels that
raises nothing, and a save/load round trip that gives it back unchanged.

Each hypothesis example writes a batch of files and loads them all in one
subprocess (run as ``python tests/test_fuzz_io.py MANIFEST``), so a crash of
the interpreter fails the test instead of ending the run; the subprocess's
address space is capped, so a file that makes ``load`` allocate without bound
shows up as a MemoryError instead of swapping the machine.
"""
import json
import math
import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

WORKER_TIMEOUT_S = 120
MEMORY_CAP_BYTES = 4 << 30
BATCH = 30
# a tenth of the profile's example count, at least 3: 3 batches (90 files) per kind under the
# default profile, about 7 s a kind on a 2-core machine; 40 batches under "thorough"
EXAMPLES = max(3, settings().max_examples // 10)
# a failing batch already lists every failing case; shrinking would rerun subprocesses for minutes
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                phases=[Phase.explicit, Phase.reuse, Phase.generate])


# ---------------------------------------------------------------------------
# the worker: runs in the subprocess, loads every file of a manifest
def _state(model):
    """Everything a file stores, as host values, for bit-exact comparison."""
    be = model.backend
    s = {"width": list(model.width), "grid": model.grid, "k": model.k, "seed": model.seed,
         "grid_range": list(model.grid_range), "base_fun": model.base_fun,
         "grid_eps": model.grid_eps, "dtype": str(np.dtype(model.dtype)),
         "sp_trainable": model.sp_trainable, "sb_trainable": model.sb_trainable,
         "input_id": None if model.input_id is None else list(model.input_id)}
    for l, L in enumerate(model.layers):
        for n in ("knots", "coef", "scale_base", "scale_sp", "mask", "symbolic_affine"):
            a = np.asarray(be.to_host(getattr(L, n)))
            s[f"{l}.{n}"] = (a.dtype.str, a.shape, a.tobytes())
        sm = np.asarray(L.symbolic_mask)
        s[f"{l}.symbolic_mask"] = (sm.dtype.str, sm.tobytes())
        # a name on an edge whose symbolic part is off is not state (prune_edge leaves one; files omit it)
        s[f"{l}.symbolic_names"] = [[name if sm[i, o] else "0" for o, name in enumerate(r)]
                                    for i, r in enumerate(L.symbolic_names)]
    return s


def _invalid(model, path):
    """Why a loaded model is not usable, or None when it is."""
    import numkan as nk
    be = model.backend
    dtype = np.dtype(model.dtype)
    if dtype not in (np.float32, np.float64):
        return f"bad dtype: {dtype}"
    G, k = model.grid, model.k
    for l, L in enumerate(model.layers):
        I, O = model.width[l], model.width[l + 1]
        shapes = {"knots": (I, G + 2 * k + 1), "coef": (I, G + k, O), "scale_base": (I, O),
                  "scale_sp": (I, O), "mask": (I, O)}
        for n, shape in shapes.items():
            a = np.asarray(be.to_host(getattr(L, n)))
            if a.shape != shape or a.dtype != dtype:
                return f"bad array: layer {l} {n} is {a.dtype} {a.shape}, expected {dtype} {shape}"
            if not np.all(np.isfinite(a)):
                return f"non-finite array: layer {l} {n}"
        for name, mask in (("mask", np.asarray(be.to_host(L.mask))), ("symbolic_mask", L.symbolic_mask)):
            if not np.all((mask == 0) | (mask == 1)):
                return f"mask not 0/1: layer {l} {name} holds {np.unique(mask)[:5]}"
        t = np.asarray(be.to_host(L.knots))
        with np.errstate(over="ignore"):
            span = t[:, -1] - t[:, 0]
        if np.any(np.diff(t, axis=1) < 0) or not np.all(np.isfinite(span) & (span > 0)):
            return f"unusable knots: layer {l} {t[:2]}"
    y = nk.load(path, device="numpy")(np.linspace(-3, 3, 7 * model.width[0]).reshape(7, -1))
    if y.shape != (7, model.width[-1]):
        return f"bad forward: shape {y.shape}"
    with tempfile.TemporaryDirectory() as d:
        again = nk.load(model.save(os.path.join(d, "again.npz")))
    if _state(again) != _state(model):
        return "round trip: saving and loading it again changed it"
    return None


def _check_one(case):
    import numkan as nk
    if case.get("abort"):  # lets the harness's own test see a worker die
        os.abort()
    path = case["file"]
    try:
        model = nk.load(path)
    except ValueError as exc:
        return "ok" if path in str(exc) else f"ValueError not naming the file: {exc}"[:300]
    if case["expect"] == "exact":
        reference = nk.load(case["reference"])
        return "ok" if _state(model) == _state(reference) else "differs: it loaded, but is not the model that was saved"
    return _invalid(model, path) or "ok"


def _worker(manifest):
    try:
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP_BYTES, resource.RLIM_INFINITY))
    except (ImportError, ValueError, OSError):
        pass  # no cap where the OS has none: the cases stay small then
    with open(manifest) as f:
        cases = json.load(f)
    for n, case in enumerate(cases):
        try:
            outcome = _check_one(case)
        except BaseException as exc:  # what the test is looking for: report it and go on
            outcome = f"{type(exc).__name__}: {exc}"[:300]
        print(json.dumps([n, outcome]), flush=True)


# ---------------------------------------------------------------------------
# the parent: saved models to damage, strategies, one subprocess per batch
@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    """Saved files of three models: float64 with updated grids and a pruned
    edge, float32, and one with symbolic edges and pruned inputs."""
    import numkan as nk
    d = tmp_path_factory.mktemp("bases")
    rng = np.random.default_rng(0)
    a = nk.KAN([2, 3, 1], grid=4, k=2, seed=7, base_fun="identity", grid_eps=0.1, sb_trainable=False)
    a.update_grid(rng.uniform(-1, 1, (50, 2)))
    a.layers[0].mask[1, 2] = 0
    b = nk.KAN([1, 2], grid=3, k=3, seed=2, dtype=np.float32)
    c = nk.KAN([3, 2, 1], grid=3, k=2, seed=3)
    c.fix_symbolic(0, 1, 0, "sin", fit_params=False)
    c.fix_symbolic(1, 0, 0, "x^2", fit_params=False)
    c = c.prune_input(active_inputs=[0, 2], x=rng.uniform(-1, 1, (20, 3)))  # input_id is saved too
    return [a.save(d / "a.npz"), b.save(d / "b.npz"), c.save(d / "c.npz")]


def _read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def _hot_offsets(data):
    """(offsets in the zip records and the .npy headers that follow them, offsets
    of the records' flag and compression-method fields): where damage is most interesting."""
    records, fields = set(), set()
    # signature, record length to damage, offsets of the flag and method fields in the record
    for sig, length, at in ((b"PK\x03\x04", 30 + 40 + 128, [6, 7, 8, 9]),
                            (b"PK\x01\x02", 46 + 40, [8, 9, 10, 11]),
                            (b"PK\x05\x06", 22, [])):
        start = data.find(sig)
        while start >= 0:
            records.update(range(start, min(start + length, len(data))))
            fields.update(start + a for a in at if start + a < len(data))
            start = data.find(sig, start + 4)
    return sorted(records), sorted(fields)


def _run_batch(tmp_dir, cases):
    """Load every case in one subprocess; returns the failing (case, outcome) pairs."""
    import numkan
    manifest = os.path.join(tmp_dir, "manifest.json")
    with open(manifest, "w") as f:
        json.dump(cases, f)
    # the worker imports the numkan this process imported, however it was found
    env = dict(os.environ)
    # (and no empty entry, which would put the working directory on the path)
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.dirname(os.path.dirname(numkan.__file__))]
        + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    try:
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), manifest], env=env,
                              capture_output=True, text=True, timeout=WORKER_TIMEOUT_S)
        out, err, rc = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        out, err, rc = exc.stdout or "", "timed out", "timeout"
        out = out.decode() if isinstance(out, bytes) else out
    done = {}
    for line in out.splitlines():
        try:
            n, outcome = json.loads(line)
        except (ValueError, TypeError):  # something else the worker printed
            continue
        done[n] = outcome
    failures = [(cases[n]["what"], o) for n, o in sorted(done.items()) if o != "ok"]
    if len(done) < len(cases):  # the case after the last report killed (or hung) the worker
        n = len(done)
        failures.append((cases[n]["what"], f"worker ended (rc {rc}) while loading it: {err[-800:]}"))
    return failures


def _report(failures):
    kinds = sorted({o.split(":")[0][:60] for _, o in failures})
    lines = [f"{len(failures)} bad outcome(s) of {len(kinds)} kind(s): {kinds}"]
    lines += [f"  {what:.200} -> {outcome}" for what, outcome in failures[:12]]
    return "\n".join(lines)


def _byte_edit(size, hot):
    records, fields = hot
    offset = st.one_of(st.integers(0, size - 1), st.sampled_from(records), st.sampled_from(fields))
    return st.one_of(
        # values that mean something in a flag or method field: encrypted, patched data,
        # strong encryption; methods implode, deflate64, bzip2, lzma, AES, and none at all
        st.tuples(st.just("set"), st.sampled_from(fields),
                  st.sampled_from([0x01, 0x20, 0x40, 0x08, 6, 9, 12, 14, 99, 0xFF])),
        st.tuples(st.just("flip"), offset, st.integers(0, 7)),
        st.tuples(st.just("set"), offset, st.integers(0, 255)),
        st.tuples(st.just("insert"), offset, st.binary(min_size=1, max_size=8)),
        st.tuples(st.just("delete"), offset, st.integers(1, 16)),
        st.tuples(st.just("truncate"), st.integers(0, size - 1)))


def _apply_bytes(data, edits):
    data = bytearray(data)
    for op, *args in edits:
        if op == "truncate":
            del data[args[0]:]
            continue
        at = min(args[0], max(len(data) - 1, 0))
        if op == "flip" and data:
            data[at] ^= 1 << args[1]
        elif op == "set" and data:
            data[at] = args[1]
        elif op == "insert":
            data[at:at] = args[1]
        elif op == "delete":
            del data[at:at + args[1]]
    return bytes(data)


@FUZZ
@given(data=st.data())
def test_damaged_bytes_load_exactly_or_raise_value_error(bases, tmp_path_factory, data):
    tmp = str(tmp_path_factory.mktemp("bytes"))
    raws = [_read_bytes(p) for p in bases]
    hots = [_hot_offsets(b) for b in raws]
    cases = []
    for n in range(BATCH):
        which = data.draw(st.integers(0, len(bases) - 1))
        path, raw = bases[which], raws[which]
        edits = data.draw(st.lists(_byte_edit(len(raw), hots[which]), min_size=1, max_size=3))
        bad = os.path.join(tmp, f"{n}.npz")
        with open(bad, "wb") as f:
            f.write(_apply_bytes(raw, edits))
        cases.append({"file": bad, "expect": "exact", "reference": path,
                      "what": f"{os.path.basename(path)} {edits!r}"})
    failures = _run_batch(tmp, cases)
    assert not failures, _report(failures)


# JSON values of every type, with the sizes and names a hostile header would use
SIZES = st.sampled_from([0, 1, 2, 3, -1, 10**5, 10**6, 10**12, 2**31, 2**63, 2**64])
JSON_SCALARS = st.one_of(
    st.none(), st.booleans(), SIZES, st.integers(-2**70, 2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=6),
    st.sampled_from(["silu", "identity", "float32", "float64", "int8", "sin", "x^2", "0",
                     "numkan.KAN", "symbolic", "layers"]))
JSON_VALUES = st.recursive(
    JSON_SCALARS, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=3),
    max_leaves=8)
HEADER_PATHS = st.one_of(
    st.sampled_from(["width", "grid", "k", "seed", "grid_range", "base_fun", "grid_eps", "dtype",
                     "sp_trainable", "sb_trainable", "sections", "format", "version", "numkan",
                     "extra"]).map(lambda k: [k]),
    st.tuples(st.sampled_from(["width", "grid_range"]), st.integers(0, 3)).map(list),
    st.sampled_from([["sections", "symbolic"], ["sections", "symbolic", "names"],
                     ["sections", "symbolic", "input_id"], ["sections", "future"]]),
    st.tuples(st.just("sections"), st.just("symbolic"), st.just("names"), st.integers(0, 2),
              st.integers(0, 1), st.integers(0, 3)).map(list))
# the hostile headers that were found by hand, so that every run tries a few of them
KNOWN_BAD_HEADERS = st.sampled_from([
    ("set", ["sections"], 5), ("set", ["sections"], None), ("set", ["sections"], []),
    ("set", ["width"], [100000, 100000]), ("set", ["grid"], 10**12), ("set", ["k"], 10**9),
    ("set", ["width"], [2] + [1] * 1000), ("set", ["grid_range"], [-1e308, 1e308]),
    ("set", ["sections", "symbolic", "names", 0, 0, 2], ["sin"]),
    ("set", ["sections", "symbolic", "names", 0, 0, 2], None),
    ("set", ["sections", "symbolic", "names", 0], 5),
    ("set", ["sections", "symbolic", "input_id"], [0, 2**70])])
HEADER_EDIT = st.one_of(
    KNOWN_BAD_HEADERS,
    st.tuples(st.just("set"), HEADER_PATHS, JSON_VALUES),
    st.tuples(st.just("set"), HEADER_PATHS, st.lists(SIZES, max_size=4)),
    st.tuples(st.just("delete"), HEADER_PATHS, st.none()))


def _apply_header(h, edits):
    for op, path, value in edits:
        node = h
        for key in path[:-1]:
            try:
                node = node[key]
            except (KeyError, IndexError, TypeError):
                node = None
                break
        last = path[-1]
        if isinstance(node, dict) or (isinstance(node, list) and isinstance(last, int)
                                      and last < len(node)):
            if op == "set":
                node[last] = value
            elif isinstance(node, dict):
                node.pop(last, None)
            else:
                del node[last]


def _write_npz(path, arrays):
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _arrays_of(path):
    with np.load(path) as z:
        return {n: z[n] for n in z.files}


@FUZZ
@given(data=st.data())
def test_hostile_headers_load_validly_or_raise_value_error(bases, tmp_path_factory, data):
    tmp = str(tmp_path_factory.mktemp("header"))
    cases = []
    for n in range(BATCH):
        path = bases[data.draw(st.integers(0, len(bases) - 1))]
        arrays = _arrays_of(path)
        h = json.loads(str(arrays["header"][()]))
        edits = data.draw(st.lists(HEADER_EDIT, min_size=1, max_size=2))
        _apply_header(h, edits)
        arrays["header"] = np.array(json.dumps(h))
        bad = os.path.join(tmp, f"{n}.npz")
        _write_npz(bad, arrays)
        cases.append({"file": bad, "expect": "valid", "what": f"{os.path.basename(path)} {edits!r}"})
    failures = _run_batch(tmp, cases)
    assert not failures, _report(failures)


SPECIALS = [math.nan, math.inf, -math.inf, 7.0, 0.5, -1.0, 2.0, 1e308, -1e308, 3e38, 0.0, 1e-320]
DTYPES = ["<f8", "<f4", "<f2", ">f8", "<i8", "|b1", "<U3", "<c16", "|O"]


def _array_edit(keys):
    key = st.sampled_from(keys)
    return st.one_of(
        st.tuples(st.just("set"), key, st.integers(0, 10**6), st.sampled_from(SPECIALS)),
        st.tuples(st.just("replace"), key, st.lists(st.integers(0, 4), max_size=3).map(tuple),
                  st.sampled_from(DTYPES)),
        st.tuples(st.just("cast"), key, st.sampled_from(DTYPES[:6])),
        st.tuples(st.just("reshape"), key, st.sampled_from(["T", "drop_last", "add_axis", "flat"])),
        st.tuples(st.just("knots"), key, st.integers(0, 10**6),
                  st.sampled_from(["reverse", "constant", "scale", "shift", "swap"])),
        st.tuples(st.just("delete"), key),
        st.tuples(st.just("add"), st.sampled_from(["layers.9.coef", "layers.0.extra", "symbolic.9.mask",
                                                   "future.x", "junk"])))


def _apply_arrays(arrays, edits):
    for op, key, *args in edits:
        if op == "add":
            arrays[key] = np.zeros(3)
            continue
        if key not in arrays:
            continue
        a = arrays[key]
        if op == "delete":
            del arrays[key]
        elif op == "set" and a.size and a.dtype.kind == "f":
            a = a.copy()
            a.flat[args[0] % a.size] = args[1]
        elif op == "replace":
            shape, dtype = args
            a = np.ones(shape, dtype=object if dtype == "|O" else dtype)
        elif op == "cast":
            with np.errstate(all="ignore"):
                a = a.astype(args[0])
        elif op == "reshape":
            if args[0] == "drop_last" and a.ndim == 0:  # no last axis to shorten (a replaced scalar)
                continue
            # only the reshape drawn is made: another may not apply to this array
            a = {"T": lambda: a.T, "drop_last": lambda: a[..., :-1], "add_axis": lambda: a[None],
                 "flat": a.ravel}[args[0]]()
        elif op == "knots" and a.ndim == 2 and a.size and a.dtype.kind == "f":
            a = a.copy()
            row = args[0] % a.shape[0]
            with np.errstate(all="ignore"):
                if args[1] == "reverse":
                    a[row] = a[row, ::-1]
                elif args[1] == "constant":
                    a[row] = a[row, 0]
                elif args[1] == "scale":
                    a[row] = a[row] * a.dtype.type(1e300 if a.dtype == np.float64 else 1e37)
                elif args[1] == "shift":
                    a[row] = a[row] + np.finfo(a.dtype).max / 2
                elif args[1] == "swap" and a.shape[1] > 1:
                    a[row, [0, -1]] = a[row, [-1, 0]]
        if op != "delete":
            arrays[key] = a


@FUZZ
@given(data=st.data())
def test_hostile_arrays_load_validly_or_raise_value_error(bases, tmp_path_factory, data):
    tmp = str(tmp_path_factory.mktemp("arrays"))
    cases = []
    for n in range(BATCH):
        path = bases[data.draw(st.integers(0, len(bases) - 1))]
        arrays = _arrays_of(path)
        keys = sorted(k for k in arrays if k != "header")
        edits = data.draw(st.lists(_array_edit(keys), min_size=1, max_size=2))
        _apply_arrays(arrays, edits)
        bad = os.path.join(tmp, f"{n}.npz")
        _write_npz(bad, arrays)
        cases.append({"file": bad, "expect": "valid", "what": f"{os.path.basename(path)} {edits!r}"})
    failures = _run_batch(tmp, cases)
    assert not failures, _report(failures)


def test_the_worker_reports_a_crash(tmp_path):
    """The harness itself: a worker that dies is a failure naming the case it was on."""
    bad = tmp_path / "x.npz"
    bad.write_bytes(b"")
    cases = [{"file": str(bad), "expect": "valid", "what": "first"},
             {"file": str(bad), "expect": "valid", "what": "second"}]
    failures = _run_batch(str(tmp_path), [cases[0], {**cases[1], "abort": True}])
    assert [w for w, _ in failures] == ["second"] and "worker ended" in failures[0][1]


if __name__ == "__main__":
    _worker(sys.argv[1])
