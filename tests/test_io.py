"""save/load: bit-identical round trips, and a clear ValueError for every kind of bad file."""
import io as _bytes_io
import json
import os
import stat
import zipfile

import numpy as np
import pytest

import numkan as nk
from numkan import io

from conftest import HOST_DEVICES


def trained_model(device="cpu", dtype=np.float64):
    """A model whose every array differs from a fresh one: updated grids, a pruned edge, frozen sb."""
    rng = np.random.default_rng(0)
    model = nk.KAN([2, 3, 1], grid=4, k=2, seed=7, base_fun="identity", grid_eps=0.1,
                   dtype=dtype, device=device, sb_trainable=False)
    x = rng.uniform(-1, 1, (100, 2))
    model.update_grid(x)
    L = model.layers[0]
    be = model.backend
    L.coef = be.asarray(rng.normal(size=L.coef.shape), dtype)
    L.scale_sp = be.asarray(rng.normal(size=L.scale_sp.shape), dtype)
    mask = np.ones((2, 3))
    mask[1, 2] = 0
    L.mask = be.asarray(mask, dtype)
    return model, x


def rewrite(path, change):
    """Load the npz at path as a dict, apply change(dict) and write it back."""
    with np.load(path) as z:
        d = {k: z[k] for k in z.files}
    change(d)
    with open(path, "wb") as f:
        np.savez(f, **d)


def header_change(fn):
    def change(d):
        h = json.loads(str(d["header"][()]))
        fn(h)
        d["header"] = np.array(json.dumps(h))
    return change


@pytest.mark.parametrize("device", HOST_DEVICES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_round_trip_is_bit_identical(tmp_path, device, dtype):
    model, x = trained_model(device, dtype)
    path = model.save(tmp_path / "m")
    assert path == str(tmp_path / "m.npz") and os.path.exists(path)
    assert os.listdir(tmp_path) == ["m.npz"]  # no temporary file left behind
    loaded = nk.load(path, device=device)
    assert np.array_equal(loaded(x), model(x))
    assert loaded.dtype == model.dtype and loaded.width == model.width
    assert (loaded.grid, loaded.k, loaded.seed, loaded.base_fun, loaded.grid_eps) == \
        (model.grid, model.k, model.seed, model.base_fun, model.grid_eps)
    assert (loaded.sp_trainable, loaded.sb_trainable) == (True, False)
    for l in range(2):
        for n in io.LAYER_ARRAYS:
            a = model.backend.to_host(getattr(model.layers[l], n))
            b = loaded.backend.to_host(getattr(loaded.layers[l], n))
            assert a.dtype == b.dtype and np.array_equal(a, b), n
    again = nk.KAN.load(path, device=device)
    assert np.array_equal(again(x), model(x))


def test_load_on_another_device(tmp_path):
    model, x = trained_model("cpu")
    loaded = nk.load(model.save(tmp_path / "m.npz"), device="numpy")
    assert loaded.device == "numpy"
    np.testing.assert_allclose(loaded(x), model(x), rtol=1e-12, atol=1e-14)


def test_save_overwrites(tmp_path):
    a, x = trained_model()
    b = nk.KAN([2, 3, 1], grid=4, k=2, seed=1)
    path = tmp_path / "m.npz"
    a.save(path)
    b.save(path)
    assert np.array_equal(nk.load(path)(x), b(x))


@pytest.mark.parametrize("change,match", [
    (header_change(lambda h: h.update(version=io.FORMAT_VERSION + 1)), "newer numkan"),
    (header_change(lambda h: h.update(format="something")), "not a numkan model"),
    (header_change(lambda h: h.pop("k")), "lacks"),
    (header_change(lambda h: h.update(grid=5)), "has shape"),
    (header_change(lambda h: h.update(width=[2, 4, 1])), "has shape"),
    (header_change(lambda h: h.update(width=[2, 0, 1])), "no valid model"),
    (header_change(lambda h: h["sections"].update(future={})), "does not know"),
    (lambda d: d.update({"header": np.array("{not json")}), "not valid JSON"),
    (lambda d: d.pop("header"), "no 'header'"),
    (lambda d: d.pop("layers.1.coef"), "missing"),
    (lambda d: d.update({"layers.0.coef": d["layers.0.coef"][:, :-1]}), "has shape"),
    (lambda d: d.update({"layers.0.scale_sp": d["layers.0.scale_sp"].astype(np.float32)}), "dtype"),
    (lambda d: d["layers.1.coef"].__setitem__((0, 0, 0), np.nan), "NaN"),
    (lambda d: d["layers.0.grid"].__setitem__((0, 4), 99.0), "non-decreasing"),
    (lambda d: d.update({"layers.2.coef": d["layers.1.coef"]}), "unexpected arrays"),
])
def test_bad_files_raise_value_error(tmp_path, change, match):
    model, _ = trained_model()
    path = model.save(tmp_path / "m.npz")
    rewrite(path, change)
    with pytest.raises(ValueError, match=match):
        nk.load(path)


def set_knots(key, row):
    return lambda d: d[key].__setitem__(0, np.asarray(row, d[key].dtype))


@pytest.mark.parametrize("change,match", [
    # sizes that would need terabytes: refused by the shape check, before a model is built
    (header_change(lambda h: h.update(width=[100000, 100000])), "has shape"),
    (header_change(lambda h: h.update(grid=10**12)), "has shape"),
    (header_change(lambda h: h.update(width=[2] + [1] * 10**5)), r"has shape .*width=\[2, 1, 1, 1, 1, 1, \.\.\.\]"),
    # wrong JSON types
    (header_change(lambda h: h.update(sections=5)), "bad sections 5"),
    (header_change(lambda h: h.update(sections=None)), "bad sections None"),
    (header_change(lambda h: h.update(grid="4")), "bad grid '4'"),
    (header_change(lambda h: h.update(grid=True)), "bad grid True"),
    (header_change(lambda h: h.update(k=None)), "bad k None"),
    (header_change(lambda h: h.update(seed=-1)), "bad seed -1"),
    (header_change(lambda h: h.update(width="21")), "bad width '21'"),
    (header_change(lambda h: h.update(width=[2, 3.0, 1])), "bad width"),
    (header_change(lambda h: h.update(grid_range="12")), "bad grid_range '12'"),
    (header_change(lambda h: h.update(grid_range={"-1": 0, "1": 0})), "bad grid_range"),
    (header_change(lambda h: h.update(grid_range=[1, 1])), "no valid model.*grid_range"),
    (header_change(lambda h: h.update(grid_eps=[0.1])), "bad grid_eps"),
    (header_change(lambda h: h.update(base_fun=["silu"])), "bad base_fun"),
    (header_change(lambda h: h.update(base_fun="device")), "no valid model.*base_fun"),
    (header_change(lambda h: h.update(dtype="int8")), "bad dtype 'int8'"),
    (header_change(lambda h: h.update(sb_trainable=0)), "bad sb_trainable 0"),
    (header_change(lambda h: h.update(version="1")), "bad format version '1'"),
    (header_change(lambda h: h.update(version=True)), "bad format version True"),
    (lambda d: d.update({"header": np.array(["{}"])}), "0-d unicode"),
    (lambda d: d.update({"header": np.array("[" * 100000)}), "not valid JSON"),
    # masks are 0 or 1
    (lambda d: d["layers.0.mask"].__setitem__((0, 0), 7.0), "holds 7.0, expected only 0 and 1"),
    (lambda d: d["layers.1.mask"].__setitem__((2, 0), 0.5), "holds 0.5, expected only 0 and 1"),
    # knots a spline cannot use
    (lambda d: d["layers.0.grid"].__setitem__(0, 0.25), "unusable in float64.*equal interior knots"),
    (set_knots("layers.0.grid", [-1e308, -1, 0, 1, 1e308, 1e308, 1e308, 1e308, 1e308]),
     "unusable in float64.*overflows"),
    (lambda d: d["layers.0.grid"].__setitem__((1, 0), np.inf), "NaN or inf"),
])
def test_hostile_headers_and_arrays_raise_value_error_naming_the_file(tmp_path, change, match):
    model, _ = trained_model()
    path = model.save(tmp_path / "m.npz")
    rewrite(path, change)
    with pytest.raises(ValueError, match=match) as info:
        nk.load(path)
    assert str(info.value).startswith(path)


def test_float32_knots_must_span_a_finite_interval_in_float32(tmp_path):
    model, _ = trained_model(dtype=np.float32)
    path = model.save(tmp_path / "m.npz")
    rewrite(path, set_knots("layers.0.grid", [-3e38, -1, 0, 1, 3e38, 3e38, 3e38, 3e38, 3e38]))
    with pytest.raises(ValueError, match="unusable in float32.*overflows float32"):
        nk.load(path)


def symbolic_model():
    model = nk.KAN([2, 2, 1], grid=3, k=2, seed=3)
    model.fix_symbolic(0, 1, 0, "sin", fit_params=False)
    model.fix_symbolic(1, 0, 0, "x^2", fit_params=False)
    return model


@pytest.mark.parametrize("names", [
    [[[1, 0, ["sin"]]], [[0, 0, "x^2"]]],   # a name that is not a string
    [5, [[0, 0, "x^2"]]],                   # a layer's entries that are not a list
    [[[1, 0, "sin"]], [[0, 0, None]]],
    [[[1, 0, "no-such-function"]], [[0, 0, "x^2"]]],
])
def test_bad_symbolic_sections_raise_value_error_naming_the_file(tmp_path, names):
    model = symbolic_model()
    path = model.save(tmp_path / "m.npz")
    rewrite(path, header_change(lambda h: h["sections"]["symbolic"].update(names=names)))
    with pytest.raises(ValueError, match="symbolic") as info:
        nk.load(path)
    assert str(info.value).startswith(path)


@pytest.mark.parametrize("change,match", [
    (lambda d: d["symbolic.0.mask"].__setitem__((1, 0), 7.0), "only 0 and 1"),
    (lambda d: d.update({"symbolic.0.mask": d["symbolic.0.mask"].astype("<U3")}), "only 0 and 1"),
    (lambda d: d["symbolic.1.affine"].__setitem__((0, 0, 2), np.nan), "NaN or inf"),
    (header_change(lambda h: h["sections"]["symbolic"].update(input_id=[0, 2**70])), "symbolic"),
])
def test_bad_symbolic_arrays_raise_value_error_naming_the_file(tmp_path, change, match):
    model = symbolic_model()
    path = model.save(tmp_path / "m.npz")
    rewrite(path, change)
    with pytest.raises(ValueError, match=match) as info:
        nk.load(path)
    assert str(info.value).startswith(path)


def test_symbolic_round_trip(tmp_path):
    model = symbolic_model()
    x = np.random.default_rng(1).uniform(-1, 1, (20, 2))
    loaded = nk.load(model.save(tmp_path / "m.npz"))
    assert np.array_equal(loaded(x), model(x))
    for a, b in zip(model.layers, loaded.layers):
        assert a.symbolic_mask.dtype == b.symbolic_mask.dtype and np.array_equal(a.symbolic_mask, b.symbolic_mask)
        assert a.symbolic_names == b.symbolic_names


def patch_zip(path, local=None, central=None):
    """Overwrite fields of every member's local header / central directory entry:
    ``local`` and ``central`` map a byte offset inside the record to the bytes written there."""
    data = bytearray(open(path, "rb").read())
    for sig, fields in ((b"PK\x03\x04", local), (b"PK\x01\x02", central)):
        start = data.find(sig)
        while fields and start >= 0:
            for offset, value in fields.items():
                data[start + offset:start + offset + len(value)] = value
            start = data.find(sig, start + 4)
    open(path, "wb").write(bytes(data))


@pytest.mark.parametrize("local,central,match", [
    # zipfile raised NotImplementedError / RuntimeError for these two
    ({8: b"\x63\x00"}, {10: b"\x63\x00"}, "compression method 99"),
    ({6: b"\x01\x00"}, {8: b"\x01\x00"}, "encrypted"),
    # a stored member that claims to unpack to more than it holds
    ({22: b"\xff\xff\xff\x7f"}, {24: b"\xff\xff\xff\x7f"}, "claim"),
])
def test_zip_records_that_zipfile_cannot_read_raise_value_error(tmp_path, local, central, match):
    model, _ = trained_model()
    path = model.save(tmp_path / "m.npz")
    patch_zip(path, local, central)
    with pytest.raises(ValueError, match=match) as info:
        nk.load(path)
    assert str(info.value).startswith(path)


def write_npz_with_member(path, name, npy_bytes, compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "a", compression=compression) as z:
        z.writestr(name, npy_bytes)


def npy_bytes(shape, body=b"\0" * 64, descr="<f8"):
    buf = _bytes_io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue() + body


@pytest.mark.parametrize("member,match", [
    # numpy would allocate 8 * 10**13 bytes from this header before reading the data
    (npy_bytes((10**6, 10**6, 10)), "declares shape"),
    (npy_bytes((3,)), "declares shape"),
    (npy_bytes((2, 4)), "unexpected arrays"),  # a well-formed member: refused only as unexpected
    (npy_bytes((3,), descr="|O"), "dtype object"),
    (npy_bytes((1,), descr=[("a", "<f8")]), "dtype"),
], ids=["huge", "short", "well-formed", "object", "record"])
def test_npy_headers_are_checked_before_allocation(tmp_path, member, match):
    model, _ = trained_model()
    path = model.save(tmp_path / "m.npz")
    write_npz_with_member(path, "extra.npy", member)
    with pytest.raises(ValueError, match=match) as info:
        nk.load(path)
    assert str(info.value).startswith(path)


def test_a_highly_compressed_member_is_refused(tmp_path):
    model, _ = trained_model()
    path = model.save(tmp_path / "m.npz")
    n = 4 * 2**20   # 32 MiB of zeros deflate to about 32 KiB: far beyond MAX_EXPANSION
    write_npz_with_member(path, "bomb.npy", npy_bytes((n,), b"\0" * 8 * n), zipfile.ZIP_DEFLATED)
    with pytest.raises(ValueError, match="MAX_EXPANSION"):
        nk.load(path)


def test_a_compressed_copy_still_loads(tmp_path):
    model, x = trained_model()
    path = model.save(tmp_path / "m.npz")
    with np.load(path) as z:
        d = {n: z[n] for n in z.files}
    np.savez_compressed(tmp_path / "c.npz", **d)
    assert np.array_equal(nk.load(tmp_path / "c.npz")(x), model(x))


def test_truncated_and_garbage_files(tmp_path):
    model, _ = trained_model()
    path = model.save(tmp_path / "m.npz")
    data = open(path, "rb").read()
    for name, content in (("half", data[: len(data) // 2]), ("tail", data[:-30]),
                          ("garbage", b"PK\x03\x04" + bytes(range(200))), ("empty", b"")):
        bad = tmp_path / f"{name}.npz"
        bad.write_bytes(content)
        with pytest.raises(ValueError, match="not a readable numkan model file|not a numkan"):
            nk.load(bad)
    npy = tmp_path / "plain.npy"
    np.save(npy, np.zeros(3))
    with pytest.raises(ValueError, match="single array"):
        nk.load(npy)
    with pytest.raises(FileNotFoundError):
        nk.load(tmp_path / "nope.npz")


def mode_of(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_save_keeps_the_mode_of_the_file_it_replaces(tmp_path):
    model, _ = trained_model()
    path = tmp_path / "m.npz"
    model.save(path)
    os.chmod(path, 0o640)
    model.save(path)
    assert mode_of(path) == 0o640


def test_a_new_file_gets_the_umask_default(tmp_path):
    model, _ = trained_model()
    old = os.umask(0o027)
    try:
        model.save(tmp_path / "m.npz")
    finally:
        os.umask(old)
    assert mode_of(tmp_path / "m.npz") == 0o640  # 0o666 less the umask, not mkstemp's 0o600


def test_save_through_a_symlink_writes_its_target(tmp_path):
    a, x = trained_model()
    b = nk.KAN([2, 3, 1], grid=4, k=2, seed=1)
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "m.npz"
    a.save(target)
    link = tmp_path / "link.npz"
    link.symlink_to(target)
    assert b.save(link) == str(link)
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert np.array_equal(nk.load(target)(x), b(x))
    assert sorted(os.listdir(tmp_path / "real")) == ["m.npz"]


@pytest.mark.parametrize("exc", [KeyboardInterrupt, OSError(28, "No space left on device")])
def test_a_failed_save_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch, exc):
    a, x = trained_model()
    b = nk.KAN([2, 3, 1], grid=4, k=2, seed=1)
    path = tmp_path / "m.npz"
    a.save(path)
    before = path.read_bytes()

    def fail(*args, **kwargs):
        raise exc
    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(type(exc) if isinstance(exc, BaseException) else exc) as info:
        b.save(path)
    assert os.listdir(tmp_path) == ["m.npz"] and path.read_bytes() == before
    if isinstance(exc, OSError):  # the error names the user's path, not the temporary one
        assert info.value.filename == str(path) and str(path) in str(info.value)
        assert ".tmp" not in str(info.value) and info.value.errno == 28


def test_save_flushes_the_file_before_the_rename_and_the_directory_after(tmp_path, monkeypatch):
    model, _ = trained_model()
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.path.isdir(f"/proc/self/fd/{fd}") and "dir" or "file"))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.path.basename(dst)))
        real_replace(src, dst)
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    model.save(tmp_path / "m.npz")
    assert events == [("fsync", "file"), ("replace", "m.npz"), ("fsync", "dir")]


def test_save_errors_name_the_users_path(tmp_path):
    model, _ = trained_model()
    path = tmp_path / "no-such-dir" / "m.npz"
    with pytest.raises(FileNotFoundError) as info:
        model.save(path)
    assert info.value.filename == str(path) and ".tmp" not in str(info.value)
    directory = tmp_path / "d.npz"
    directory.mkdir()
    with pytest.raises(IsADirectoryError) as info:
        model.save(directory)
    assert info.value.filename == str(directory) and os.listdir(tmp_path) == ["d.npz"]


def test_save_and_load_take_the_same_name(tmp_path):
    model = nk.KAN([2, 3, 1], grid=4, seed=3, device="numpy")
    x = np.random.default_rng(0).uniform(-1, 1, (20, 2))
    written = model.save(tmp_path / "m1")
    assert written.endswith("m1.npz") and not (tmp_path / "m1").exists()
    for name in (tmp_path / "m1", str(tmp_path / "m1"), tmp_path / "m1.npz"):
        assert np.array_equal(nk.load(name, device="numpy")(x), model(x))
    with pytest.raises(FileNotFoundError):
        nk.load(tmp_path / "m2", device="numpy")


def test_a_text_file_is_not_a_model_and_pickle_is_not_mentioned(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("a text file, not a model\n")
    with pytest.raises(ValueError, match="not a readable numkan model file") as info:
        nk.load(path, device="numpy")
    assert "pickle" not in str(info.value)
