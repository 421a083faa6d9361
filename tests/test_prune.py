"""Attribution scores and pruning: scores against a direct (B, I, O) computation,
pruned models against the original with the same edges masked, and which
methods copy and which change the model in place."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import numkan as nk
from numkan import prune as nkprune
from numkan.kernels import reference

from conftest import HOST_DEVICES, assert_close


def edge_values(layer, x):
    """(B, I, O) edge outputs, the slow obvious way (tests only)."""
    B, I = x.shape
    out = np.zeros((B, I, layer.out_dim))
    for i in range(I):
        xi = np.ascontiguousarray(x[:, i:i + 1])
        y = np.zeros((B, layer.out_dim))
        sl = lambda n: np.asarray(getattr(layer, n))[i:i + 1].astype(np.float64)
        reference.spline_forward(y, xi, sl("knots"), sl("coef"), sl("scale_base"), sl("scale_sp"),
                                 sl("mask"), layer.k, layer.base_fun)
        out[:, i] = y
    aff = np.asarray(layer.symbolic_affine)
    for i, o in zip(*np.nonzero(layer.symbolic_mask)):
        a, b, c, d = aff[i, o]
        out[:, i, o] += layer.symbolic_mask[i, o] * (c * nk.SYMBOLIC_LIB[layer.symbolic_names[i][o]](a * x[:, i] + b) + d)
    return out


def direct_scores(model, x):
    """pykan's attribution written out with full (B, I, O) arrays."""
    hs = [x]
    for layer in model.layers:
        hs.append(edge_values(layer, hs[-1]).sum(axis=1))
    S = np.eye(model.width[-1])
    nodes, edges = [S.mean(0)], []
    for l in range(len(model.layers) - 1, -1, -1):
        E = np.std(edge_values(model.layers[l], hs[l]), axis=0, ddof=1)
        N = np.std(hs[l + 1], axis=0, ddof=1)
        e = np.stack([E * S[k] / (N + 1e-4) for k in range(S.shape[0])])
        S = e.sum(axis=2)
        edges.insert(0, e.mean(0))
        nodes.insert(0, S.mean(0))
    return nodes, edges


@pytest.mark.parametrize("device", HOST_DEVICES)
@given(width=st.lists(st.integers(1, 4), min_size=2, max_size=4), seed=st.integers(0, 999),
       n_sym=st.integers(0, 3))
@settings(max_examples=10)
def test_attribute_matches_direct_computation(device, width, seed, n_sym):
    model = nk.KAN(width, grid=4, seed=seed, device=device)
    rng = np.random.default_rng(seed)
    for _ in range(n_sym):  # a few symbolic edges take the per-input path
        l = int(rng.integers(len(model.layers)))
        layer = model.layers[l]
        i, o = int(rng.integers(layer.in_dim)), int(rng.integers(layer.out_dim))
        model.fix_symbolic(l, i, o, "sin", fit_params=False)
        layer.symbolic_affine[i, o] = [2.0, 0.3, 0.7, 0.1]
        layer.mask[i, o] = 1.0  # both parts live: the sum is what counts
    x = rng.uniform(-1, 1, (64, width[0]))
    feat = model.attribute(x)
    nodes, edges = direct_scores(model, x)
    for l in range(len(width)):
        assert_close(f"node_scores[{l}]", model.node_scores[l], nodes[l], rtol=1e-8, floor=1e-10)
    for l in range(len(width) - 1):
        assert model.edge_scores[l].shape == (width[l], width[l + 1])
        assert_close(f"edge_scores[{l}]", model.edge_scores[l], edges[l], rtol=1e-8, floor=1e-10)
    np.testing.assert_array_equal(feat, model.node_scores[0])


def test_edge_std_from_the_moments_op_matches_the_edge_outputs():
    from numkan.activations import edge_outputs
    model = nk.KAN([3, 4], grid=5, seed=2, device="numpy")
    x = np.random.default_rng(0).uniform(-1, 1, (50, 3))
    with_op = nkprune._edge_std(model.layers[0], x)
    direct = np.stack([np.std(edge_outputs(model.layers[0], x, i), axis=0, ddof=1) for i in range(3)])
    assert_close("edge std", with_op, direct, rtol=1e-9, floor=1e-12)


def dead_node_model(device):
    """[3, 4, 2] whose hidden node 2 gets no input (its incoming edges are masked)."""
    model = nk.KAN([3, 4, 2], grid=5, seed=7, device=device)
    model.layers[0].mask[:, 2] = 0
    return model


def masked_copy_output(model, x, layer_node_pairs):
    """Outputs of ``model`` with every edge into and out of the given (layer, node) masked."""
    saved = [(np.array(L.mask), np.array(L.symbolic_mask)) for L in model.layers]
    for l, j in layer_node_pairs:
        model.layers[l - 1].mask[:, j] = 0
        model.layers[l - 1].symbolic_mask[:, j] = 0
        model.layers[l].mask[j, :] = 0
        model.layers[l].symbolic_mask[j, :] = 0
    y = model(x)
    for L, (m, s) in zip(model.layers, saved):
        L.mask[...] = m
        L.symbolic_mask[...] = s
    return y


def test_prune_node_returns_a_smaller_model_with_the_same_function(host_device):
    model = dead_node_model(host_device)
    x = np.random.default_rng(0).uniform(-1, 1, (200, 3))
    y0 = model.forward(x)
    before = {n: np.array(a) for n, a in model.params.items()}
    plain = model.prune_node(1e-2, keep_mean=False)
    assert plain is not model and model.width == [3, 4, 2] and plain.width == [3, 3, 2]
    for n, a in model.params.items():  # the original is untouched
        np.testing.assert_array_equal(np.asarray(a), before[n])
    np.testing.assert_array_equal(model(x), y0)
    # without keep_mean the new model is the old one with the node's edges masked ...
    expected = masked_copy_output(model, x, [(1, 2)])
    assert_close("pruned model", plain(x), expected, rtol=1e-12, floor=1e-12)
    # ... which differs from the original by the removed (here constant) contributions
    out = edge_values(model.layers[1], np.zeros((1, 4)))[0, 2]  # node 2 is 0 on all data
    assert np.all(np.abs(out) > 1e-6)
    np.testing.assert_allclose(y0 - plain(x), np.broadcast_to(out, y0.shape), atol=1e-12)
    # keep_mean (the default) moves those constants onto live edges: same outputs
    new = model.prune_node(1e-2)
    assert new.width == [3, 3, 2]
    assert_close("pruned model, keep_mean", new(x), y0, rtol=1e-10, floor=1e-10)
    # manual mode keeps exactly the given nodes
    manual = model.prune_node(active_neurons_id=[[0, 3]], keep_mean=False)
    assert manual.width == [3, 2, 2]
    assert_close("manual", manual(x), masked_copy_output(model, x, [(1, 1), (1, 2)]), rtol=1e-12, floor=1e-12)


def test_prune_edge_masks_in_place(host_device):
    model = nk.KAN([3, 3, 1], grid=5, seed=1, device=host_device)
    model.layers[0].scale_base[0, 1] = 0  # edge (0, 0 -> 1) nearly flat: a small score
    model.layers[0].scale_sp[0, 1] = 1e-6
    model.fix_symbolic(0, 1, 1, "x", fit_params=False)
    model.layers[0].symbolic_affine[1, 1] = [1, 0, 1e-7, 0.3]  # a symbolic edge with a tiny score
    x = np.random.default_rng(0).uniform(-1, 1, (100, 3))
    model.forward(x)
    result = model.prune_edge(threshold=1e-3)
    assert result is None
    m0 = np.asarray(model.layers[0].mask)
    assert m0[0, 1] == 0 and model.layers[0].symbolic_mask[1, 1] == 0
    assert model.width == [3, 3, 1]
    kept = model.edge_scores[0] > 1e-3
    assert np.all(m0[kept] == 1)


def test_prune_edge_keeps_the_mean_of_pruned_edges(host_device):
    model = nk.KAN([3, 2], grid=5, seed=4, device=host_device)
    layer = model.layers[0]
    layer.scale_base[1, 0] = 0  # edge (1 -> 0): a constant 0.3 on the grid
    layer.coef[1, :, 0] = 0.3 / float(layer.scale_sp[1, 0])
    model.fix_symbolic(0, 2, 1, "x", fit_params=False)  # edge (2 -> 1): constant 0.7, symbolic
    layer.symbolic_affine[2, 1] = [1.0, 0.0, 0.0, 0.7]
    x = np.random.default_rng(0).uniform(-1, 1, (80, 3))
    y0 = model.forward(x)
    model.prune_edge(1e-6)
    assert float(layer.mask[1, 0]) == 0 and layer.symbolic_mask[2, 1] == 0
    assert_close("outputs after prune_edge", model(x), y0, rtol=1e-10, floor=1e-10)


def test_prune_input_removes_ignored_inputs(host_device):
    model = nk.KAN([4, 3, 1], grid=5, seed=3, device=host_device)
    layer = model.layers[0]
    layer.mask[1, :] = 0  # input 1 is ignored; input 3's edges are constants (spline of 0.4s)
    layer.scale_base[3, :] = 0
    layer.coef[3] = 0.4
    x = np.random.default_rng(0).uniform(-1, 1, (100, 4))
    y0 = model.forward(x)
    score = model.feature_score
    assert set(np.argsort(score)[:2]) == {1, 3} and np.all(score[[1, 3]] < 1e-6)  # sums of moments: ~sqrt(eps)
    new = model.prune_input(1e-2)
    assert new.width == [2, 3, 1] and list(new.input_id) == [0, 2] and model.width == [4, 3, 1]
    assert_close("pruned inputs", new(x[:, new.input_id]), y0, rtol=1e-10, floor=1e-10)
    plain = model.prune_input(1e-2, keep_mean=False)  # the constants are dropped: outputs move
    assert np.max(np.abs(plain(x[:, plain.input_id]) - y0)) > 1e-3
    with pytest.raises(ValueError, match=r"\(batch, 2\)"):
        new(x)
    # prune_input after prune_input composes the ids
    newer = new.prune_input(active_inputs=[1])
    assert list(newer.input_id) == [2]


def test_prune_returns_new_model_and_keeps_symbolic_edges():
    model = dead_node_model("cpu")
    model.fix_symbolic(0, 0, 1, "sin", fit_params=False)
    model.layers[0].symbolic_affine[0, 1] = [2.0, 0.1, 1.0, 0.0]
    x = np.random.default_rng(0).uniform(-1, 1, (200, 3))
    model.forward(x)
    masks = [np.array(L.mask) for L in model.layers]
    y0 = model(x)
    new = model.prune(node_th=1e-2, edge_th=0.0)
    assert new is not model and new.width == [3, 3, 2]
    for L, m in zip(model.layers, masks):
        np.testing.assert_array_equal(np.asarray(L.mask), m)
    assert new.layers[0].symbolic_mask[0, 1] == 1 and new.layers[0].symbolic_names[0][1] == "sin"
    assert_close("prune", new(x), y0, rtol=1e-10, floor=1e-10)
    # the copy keeps its data: scores can be computed without passing x again
    assert new.feature_score.shape == (3,)


def test_bad_arguments():
    model = nk.KAN([2, 2, 1], grid=3, seed=0, device="numpy")
    with pytest.raises(ValueError, match="the model has no data: pass x"):
        model.attribute()
    x = np.random.default_rng(0).uniform(-1, 1, (20, 2))
    with pytest.raises(ValueError, match="at least 2 rows"):
        model.attribute(x[:1])
    model.forward(x)
    masks = [np.array(L.mask) for L in model.layers]
    with pytest.raises(ValueError, match="threshold"):
        model.prune_edge(threshold=-1)
    with pytest.raises(ValueError, match="threshold"):
        model.prune_edge(threshold="big")
    with pytest.raises(ValueError, match="active_neurons_id"):
        model.prune_node(active_neurons_id=[[5]])
    with pytest.raises(ValueError, match="active_inputs"):
        model.prune_input(active_inputs=[])
    # not integers: the message names the argument (numpy's own error did not)
    for bad in ([["a"]], [[0.5]], [[True]], [[[0], [0, 1]]], [None]):
        with pytest.raises(ValueError, match=r"active_neurons_id\[0\] must be .*integer"):
            model.prune_node(active_neurons_id=bad)
    for bad in (["x"], [1.0], [[0], [1, 0]]):
        with pytest.raises(ValueError, match=r"active_inputs must be .*integer"):
            model.prune_input(active_inputs=bad)
    for L, m in zip(model.layers, masks):
        np.testing.assert_array_equal(np.asarray(L.mask), m)
