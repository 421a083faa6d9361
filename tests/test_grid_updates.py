"""Grid updates inside fit never make a fit worse.

- one update keeps the network's function up to the refit's least-squares
  error: for a one-layer model the training RMSE rises by at most
  sum_i |scale_sp[i]| * (RMS least-squares residual of edge i), computed
  here independently of numkan.grids;
- fit keeps an update only when the training objective does not rise: the
  objective just after each scheduled update is at most the one just before
  (on a case where some unguarded updates would raise it);
- the update at a run's first step adapts only the first layer
  (``update_grid(hidden=False)``), every later one all layers; unless a hidden
  layer's inputs have outgrown its grid, when the first one adapts every layer
  and is kept;
- an update put back does not end the L-BFGS run (its history goes on); a
  kept one does.
"""
import numpy as np
import pytest

import numkan as nk
from numkan import spline, train


def rmse(model, ds):
    return float(np.sqrt(np.mean((model(ds["train_input"]) - ds["train_label"]) ** 2)))


@pytest.fixture(scope="module")
def xy():
    return nk.create_dataset(lambda x: x[:, :1] * x[:, 1:2], n_var=2, train_num=400,
                             test_num=100, seed=1)


def test_one_update_keeps_the_function_up_to_the_refit_error():
    ds = nk.create_dataset(lambda x: np.sin(3 * x[:, :1]) * x[:, 1:2], n_var=2, train_num=300,
                           test_num=10, seed=0)
    model = nk.KAN([2, 1], grid=5, k=3, seed=0, dtype=np.float64)
    model.fit(ds, steps=5, update_grid=False, log=0)
    x = ds["train_input"]
    L = model.layers[0]
    t_old, c_old = L.knots.copy(), L.coef.copy()
    before = rmse(model, ds)
    model.update_grid(x)
    after = rmse(model, ds)
    bound = 0.0
    for i in range(2):
        s_old = spline.basis_matrix(x[:, i], t_old[i], 3) @ c_old[i]          # (N, 1)
        B_new = spline.basis_matrix(x[:, i], L.knots[i], 3)
        c, *_ = np.linalg.lstsq(B_new, s_old, rcond=None)
        bound += abs(L.scale_sp[i, 0]) * np.sqrt(np.mean((B_new @ c - s_old) ** 2))
    assert not np.array_equal(L.knots, t_old)   # the knots did move
    assert after <= before + bound * (1 + 1e-9) + 1e-14, (before, after, bound)


def test_fit_keeps_a_grid_update_only_when_the_objective_does_not_rise(monkeypatch, xy):
    seen = []   # (objective before, after, whether the new knots were kept)
    real = train._grid_update

    def spy(model, x, y, *args):
        before = np.mean((model(x) - y) ** 2)
        knots = [L.knots.copy() for L in model.layers]
        out = real(model, x, y, *args)
        after = np.mean((model(x) - y) ** 2)
        moved = any(not np.array_equal(L.knots, t) for L, t in zip(model.layers, knots))
        seen.append((before, after, moved))
        return out

    monkeypatch.setattr(train, "_grid_update", spy)
    model = nk.KAN([2, 2, 1], grid=3, k=3, seed=1, dtype=np.float64)
    model.fit(xy, steps=40, stop_grid_update_step=40, grid_update_num=8, log=0, n_init=1)
    assert len(seen) == 8
    for before, after, _ in seen:
        assert after <= before * (1 + 1e-9), seen
    # the case exercises both outcomes: some updates are kept, some put back
    assert any(m for *_, m in seen) and not all(m for *_, m in seen), seen


def test_unguarded_updates_would_raise_the_objective(xy):
    """The case above is one where the guard matters: re-fitting after the
    same training without putting anything back raises the objective."""
    model = nk.KAN([2, 2, 1], grid=3, k=3, seed=1, dtype=np.float64)
    rises = []
    for _ in range(7):
        model.fit(xy, steps=5, update_grid=False, log=0)
        before = rmse(model, xy)
        model.update_grid(xy["train_input"], margin=0.05)
        rises.append(rmse(model, xy) / before)
    assert max(rises) > 1.01, rises


def test_first_step_update_adapts_only_the_first_layer(monkeypatch, xy):
    calls = []
    real = train._update_grid
    monkeypatch.setattr(train, "_update_grid",
                        lambda m, x, margin, hidden: (calls.append(hidden), real(m, x, margin, hidden)))
    model = nk.KAN([2, 2, 1], grid=3, k=3, seed=0, dtype=np.float64)
    model.fit(xy, steps=10, stop_grid_update_step=10, grid_update_num=2, log=0)
    assert calls == [False, True]


def test_update_grid_hidden_false_leaves_later_layers_alone(xy):
    model = nk.KAN([2, 2, 1], grid=3, k=3, seed=0, dtype=np.float64)
    model.fit(xy, steps=3, update_grid=False, log=0)
    later = [(L.knots.copy(), L.coef.copy()) for L in model.layers[1:]]
    first = model.layers[0].knots.copy()
    model.update_grid(xy["train_input"], margin=0.1, hidden=False)
    assert not np.array_equal(model.layers[0].knots, first)
    for L, (g, c) in zip(model.layers[1:], later):
        np.testing.assert_array_equal(L.knots, g)
        np.testing.assert_array_equal(L.coef, c)
    with pytest.raises(TypeError, match="hidden must be True or False, got 1"):
        model.update_grid(xy["train_input"], hidden=1)


def test_a_grid_update_put_back_does_not_end_the_lbfgs_run(monkeypatch, xy):
    """A scheduled update that is put back changed nothing: L-BFGS goes on with its
    curvature history, so a fit whose every update is put back is the fit without
    grid updates, number for number, in one scipy run. A kept update changed the
    objective: the run ends there and the next starts at that step, each update made
    once."""
    runs = []
    real_min = train.minimize
    monkeypatch.setattr(train, "minimize", lambda *a, **kw: (runs.append(1), real_min(*a, **kw))[1])
    monkeypatch.setattr(train, "GRID_UPDATE_RTOL", -np.inf)  # every guarded update put back
    kw = dict(steps=12, stop_grid_update_step=12, grid_update_num=4, log=0, n_init=1)
    model = nk.KAN([2, 2, 1], grid=3, k=3, seed=1, dtype=np.float64)
    assert not train.outside_grids(model, xy["train_input"])  # no forced first-step update here
    with_updates = model.fit(xy, **kw)
    assert len(runs) == 1
    without = nk.KAN([2, 2, 1], grid=3, k=3, seed=1, dtype=np.float64).fit(xy, update_grid=False, **kw)
    assert with_updates["train_loss"] == without["train_loss"]
    assert with_updates["test_loss"] == without["test_loss"]

    runs.clear()
    monkeypatch.setattr(train, "GRID_UPDATE_RTOL", np.inf)  # every update kept
    made = []
    real_update = train._update_grid
    monkeypatch.setattr(train, "_update_grid",
                        lambda m, x, margin, hidden: (made.append(hidden), real_update(m, x, margin, hidden)))
    res = nk.KAN([2, 2, 1], grid=3, k=3, seed=1, dtype=np.float64).fit(xy, **kw)
    assert made == [False, True, True, True]  # steps 0, 3, 6, 9
    assert len(runs) == 4 and len(res["train_loss"]) == 12


def test_a_hidden_layer_outside_its_grid_is_adapted_at_the_first_step(monkeypatch, xy):
    """``outside_grids`` says whether some hidden layer's inputs leave its grid's
    interior (NaN samples aside); when they do, the first step's update adapts every
    layer and is kept even where it raises the objective, and afterwards every hidden
    input is inside its grid."""
    model = nk.KAN([2, 3, 1], grid=4, k=3, seed=2, dtype=np.float64)
    x = xy["train_input"]
    assert not train.outside_grids(model, x)
    model.layers[0].scale_base[...] *= 40.0  # hidden values far beyond the hidden grid [-1, 1]
    assert train.outside_grids(model, x)
    assert not train.outside_grids(model, np.full((5, 2), np.nan))
    calls = []
    real = train._update_grid
    monkeypatch.setattr(train, "_update_grid",
                        lambda m, p, margin, hidden: (calls.append(hidden), real(m, p, margin, hidden)))
    monkeypatch.setattr(train, "GRID_UPDATE_RTOL", -np.inf)  # a guarded update would be put back
    model.fit(xy, steps=2, stop_grid_update_step=2, grid_update_num=1, log=0, n_init=1)
    assert calls == [True]
    assert not train.outside_grids(model, x)
