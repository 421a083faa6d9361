"""model.copy(), copy.deepcopy and the in-memory checkpoints (saveckpt / loadckpt / rewind)."""
import copy
import pickle

import numpy as np
import pytest

import numkan as nk


def data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (n, 2))
    return x, np.sin(np.pi * x[:, :1]) * x[:, 1:2]


def dataset():
    x, y = data()
    return {"train_input": x, "train_label": y, "test_input": x, "test_label": y}


def state(model):
    """Every array and setting that defines the model's function, on the host."""
    out = {"width": list(model.width), "grid": model.grid}
    for l, L in enumerate(model.layers):
        for n in ("knots", "coef", "scale_base", "scale_sp", "mask", "symbolic_affine"):
            out[f"{l}.{n}"] = np.array(L.backend.to_host(getattr(L, n)))
        out[f"{l}.symbolic_mask"] = np.array(L.symbolic_mask)
        out[f"{l}.symbolic_names"] = [list(r) for r in L.symbolic_names]
    return out


def assert_same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], np.ndarray):
            assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


@pytest.mark.parametrize("how", ["copy", "deepcopy"])
def test_a_copy_is_bit_identical_and_independent(how):
    model = nk.KAN([2, 3, 1], grid=4, seed=1, device="numpy")
    model.fit(dataset(), steps=3, log=0)
    model.fix_symbolic(0, 0, 1, "sin")
    model.attribute()
    twin = model.copy() if how == "copy" else copy.deepcopy(model)
    assert type(twin) is type(model) and twin is not model
    assert_same(state(twin), state(model))
    x, _ = data(10, seed=5)
    assert np.array_equal(twin(x), model(x))
    assert all(np.array_equal(a, b) for a, b in zip(twin.node_scores, model.node_scores))
    twin.layers[0].coef[...] += 1.0          # the copy's arrays are its own
    twin.layers[0].symbolic_mask[0, 1] = 0.0
    twin.node_scores[0][...] = -1
    assert not np.array_equal(twin(x), model(x))
    assert model.layers[0].symbolic_mask[0, 1] == 1.0 and model.node_scores[0][0] != -1


def test_checkpoints_round_trip_bit_identically():
    model = nk.KAN([2, 3, 1], grid=4, seed=2, device="numpy")
    model.fit(dataset(), steps=2, log=0)
    first = state(model)
    assert model.saveckpt() == "0"
    model.fit(dataset(), steps=3, log=0)
    model = model.refine(8)  # a new model: its checkpoints start empty
    assert model.checkpoints == {}
    model.saveckpt("fine")
    fine = state(model)
    model.fix_symbolic(1, 0, 0, "x", x=data()[0])
    model.prune_edge(0.5, x=data()[0])
    back = model.loadckpt()                  # the latest, as a new model
    assert_same(state(back), fine)
    assert model.layers[1].symbolic_mask[0, 0] == 1.0  # loadckpt changed nothing
    assert model.rewind("fine") is model
    assert_same(state(model), fine)
    assert list(model.checkpoints) == ["fine"]


def test_rewind_goes_back_across_a_change_of_width():
    model = nk.KAN([2, 4, 1], grid=4, seed=4, device="numpy")
    x, _ = data()
    model.forward(x)
    model.saveckpt("wide")
    before = state(model)
    small = model.prune_node(active_neurons_id=[[0, 2]])
    small.checkpoints = dict(model.checkpoints)
    small.rewind("wide")
    assert small.width == [2, 4, 1]
    assert_same(state(small), before)


def test_checkpoint_errors_name_the_problem(tmp_path):
    model = nk.KAN([2, 1], device="numpy")
    with pytest.raises(ValueError, match="no checkpoints"):
        model.rewind()
    model.saveckpt()
    with pytest.raises(ValueError, match="name must be one of the checkpoints"):
        model.loadckpt("nope")
    with pytest.raises(ValueError, match="name must be a non-empty string"):
        model.saveckpt(3)
    assert not list(tmp_path.iterdir())
    path = tmp_path / "ck"
    model.saveckpt("on disk", path=path)
    assert_same(state(nk.load(path, device="numpy")), state(model))


def test_the_models_data_rule():
    """Interpretability calls without x use the last fit's training inputs or a later
    model(x) / forward(x); never the inputs of loss_and_grad."""
    x, y = data(64, seed=1)
    x_test, y_test = data(32, seed=2)
    model = nk.KAN([2, 3, 1], grid=4, seed=0, device="numpy")
    with pytest.raises(ValueError, match="has no data"):
        model.attribute()
    model(x)                                   # pykan's model(dataset['train_input']); model.plot()
    assert model.cache_data is not None and np.array_equal(model.cache_data, x)
    on_x = model.attribute()
    model.loss_and_grad(x_test, y_test)        # an evaluation on a test set
    np.testing.assert_array_equal(model.attribute(), on_x)
    np.testing.assert_array_equal(model.attribute(x), on_x)
    assert not np.array_equal(model.attribute(x_test), on_x)
    model.fit({"train_input": x, "train_label": y, "test_input": x_test, "test_label": y_test},
              steps=2, batch=16, log=0)
    np.testing.assert_array_equal(model.cache_data, x)   # the whole training set, not a batch
    model.forward(x_test)
    assert np.array_equal(model.cache_data, x_test)
    assert model.refine(6).cache_data is model.cache_data
    assert model.prune_input(active_inputs=[1]).cache_data.shape == (32, 1)


# pickling: multiprocessing and joblib send models between processes that way
@pytest.mark.parametrize("device,dtype", [("cpu", np.float64), ("numpy", np.float32)])
def test_a_pickled_model_comes_back_bit_identical_and_trains_on(device, dtype):
    model = nk.KAN([2, [2, 1], 1], grid=4, seed=2, device=device, dtype=dtype)
    model.fit(dataset(), steps=2, log=0)
    model.fix_symbolic(0, 1, 0, "sin", fit_params=False)
    model.attribute()
    model.saveckpt("a")
    x, y = data(10, seed=5)
    model.loss_and_grad(x, y)
    twin = pickle.loads(pickle.dumps(model))
    assert type(twin) is type(model) and twin.device == device and twin.dtype == dtype
    assert twin.backend is model.backend and all(L.backend is model.backend for L in twin.layers)
    assert_same(state(twin), state(model))
    assert np.array_equal(twin(x), model(x))
    for n, g in model.grads.items():  # the gradients travel too
        assert np.array_equal(twin.grads[n], g), n
    assert all(np.array_equal(a, b) for a, b in zip(twin.node_scores, model.node_scores))
    assert np.array_equal(twin.cache_data, model.cache_data)
    assert_same(state(twin.loadckpt("a")), state(model.loadckpt("a")))
    # independent, and it trains on
    twin.layers[0].coef[...] += 1.0
    assert not np.array_equal(twin(x), model(x))
    before = model(x)
    twin.fit(dataset(), steps=2, log=0)
    assert np.array_equal(model(x), before)


def test_a_pickled_layer_needs_a_forward_before_backward():
    model = nk.KAN([2, 3, 1], grid=4, seed=3)
    x, _ = data(8)
    model(x)
    layer = pickle.loads(pickle.dumps(model.layers[0]))
    assert layer.backend is model.backend
    with pytest.raises(RuntimeError, match="forward"):
        layer.backward(np.zeros((8, 3)))
    assert np.array_equal(layer.forward(x), model.layers[0].forward(x))


def _fit_seed(seed):  # a worker: models go to and come back from another process by pickle
    model = nk.KAN([2, 3, 1], grid=4, seed=seed)
    model.fit(dataset(), steps=2, log=0)
    return model


def test_models_fitted_in_worker_processes_come_back_whole():
    import concurrent.futures
    import multiprocessing
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: nothing inherited
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=ctx) as pool:
        models = list(pool.map(_fit_seed, [0, 1]))
    x, _ = data(10, seed=5)
    for seed, m in zip([0, 1], models):
        assert np.array_equal(m(x), _fit_seed(seed)(x))
