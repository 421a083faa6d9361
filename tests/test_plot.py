"""model.plot renders a PNG with the Agg backend (skipped without matplotlib)."""
import sys

import numpy as np
import pytest

import numkan as nk


def small_model():
    model = nk.KAN([2, 3, 1], grid=5, seed=0)
    x = np.random.default_rng(0).uniform(-1, 1, (200, 2))
    model.forward(x)
    model.fix_symbolic(0, 0, 1, "sin", fit_params=False)
    model.layers[0].symbolic_affine[0, 1] = [3.0, 0.0, 1.0, 0.0]
    model.layers[0].mask[1, 2] = 0  # a pruned edge: not drawn
    return model, x


def test_plot_renders_png(tmp_path):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.image import imread

    model, x = small_model()
    y0 = model(x)
    path = tmp_path / "net.png"
    fig = model.plot(path=str(path), in_vars=["$x$", "$y$"], out_vars=["$f$"], title="test", beta=3)
    assert path.exists() and path.stat().st_size > 5000
    img = imread(str(path))
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 200
    assert img[..., :3].std() > 0.01  # not a blank canvas
    # one panel per live edge: 2*3 - 1 pruned + 3 (the main axes is the first)
    assert len(fig.axes) == 1 + 5 + 3
    labels = [t.get_text() for a in fig.axes[1:] for t in a.texts]
    assert labels == ["sin"]
    plt.close(fig)
    # plotting leaves the model's function alone
    np.testing.assert_array_equal(model(x), y0)


def test_plot_bad_arguments():
    pytest.importorskip("matplotlib")
    model, _ = small_model()
    with pytest.raises(ValueError, match="in_vars"):
        model.plot(in_vars=["a"])
    with pytest.raises(ValueError, match="beta"):
        model.plot(beta=-1)


def test_plot_without_matplotlib_says_how_to_install(monkeypatch):
    model, _ = small_model()
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match="pip install matplotlib"):
        model.plot()


def test_pykan_flow_and_keywords(tmp_path):
    """pykan's model(dataset['train_input']); model.plot(folder=...) on a fresh model."""
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.image import imread

    model = nk.KAN([2, 3, 1], grid=4, seed=1, device="numpy")
    x = np.random.default_rng(1).uniform(-1, 1, (100, 2))
    model(x)
    before = {n: np.array(a) for n, a in model.params.items()}
    small = model.plot(folder=tmp_path / "figures")
    path = tmp_path / "figures" / "kan.png"
    assert path.exists() and imread(str(path)).shape[2] in (3, 4)
    big = model.plot(scale=2.0, tick=True, sample=True, varscale=1.5, mask=True, metric="backward")
    assert np.allclose(big.get_size_inches(), 2.0 * small.get_size_inches())
    for n, a in model.params.items():  # drawing changes nothing
        np.testing.assert_array_equal(a, before[n])
    for kw, msg in ((dict(scale=0), "scale must be"), (dict(metric="forward_u"), "metric must be"),
                    (dict(mask=False), "mask must be True"), (dict(tick="yes"), "tick must be"),
                    (dict(folder=tmp_path, path=str(path)), "path or folder")):
        with pytest.raises(ValueError, match=msg):
            model.plot(**kw)
    plt.close("all")
