"""save/load: bit-identical round trips, and a clear ValueError for every kind of bad file."""
import json
import os

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


def test_register_section_validates_name():
    with pytest.raises(ValueError, match="section name"):
        io.register_section("layers", lambda m: (None, {}), lambda m, meta, a: None)
