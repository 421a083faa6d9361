"""Synthetic regression data sets, as pykan's ``create_dataset`` builds them.

    dataset = create_dataset(f, n_var=2)
    dataset["train_input"]   (train_num, n_var)     uniform in ``ranges``
    dataset["train_label"]   (train_num, n_out)     f(train_input)
    dataset["test_input"]    (test_num, n_var)
    dataset["test_label"]    (test_num, n_out)

All arrays are float64 NumPy arrays on the host; ``KAN.fit`` converts them to
the model's dtype and device.
"""
import numpy as np

from . import _validate as v


def _check_ranges(ranges, n_var):
    """ranges -> (n_var, 2) float array: one (lo, hi) pair, or one pair per variable."""
    try:
        r = np.asarray(ranges, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"ranges must be a pair (lo, hi) or {n_var} such pairs, got {ranges!r}") from None
    if r.shape == (2,):
        r = np.broadcast_to(r, (n_var, 2))
    if r.shape != (n_var, 2):
        raise ValueError(f"ranges must be a pair (lo, hi) or {n_var} such pairs (shape ({n_var}, 2)), "
                         f"got shape {r.shape}: {ranges!r}")
    if not np.all(np.isfinite(r)) or np.any(r[:, 0] >= r[:, 1]):
        raise ValueError(f"every range must be finite with lo < hi, got {r.tolist()}")
    return np.array(r)


def _labels(f, x, name):
    """f(x) as a finite (N, n_out) float64 array."""
    y = np.asarray(f(x), dtype=np.float64)
    if y.ndim == 1:
        y = y[:, None]
    if y.ndim != 2 or y.shape[0] != x.shape[0]:
        raise ValueError(f"f must map an ({x.shape[0]}, {x.shape[1]}) array to shape "
                         f"({x.shape[0]},) or ({x.shape[0]}, n_out), got shape {y.shape}")
    if not np.all(np.isfinite(y)):
        raise ValueError(f"f returned non-finite values for the {name} inputs")
    return y


def create_dataset(f, n_var=2, ranges=(-1, 1), train_num=1000, test_num=1000, seed=0,
                   normalize_input=False, normalize_label=False):
    """Draw inputs uniformly in ``ranges`` and label them with ``f``.

    Parameters
    ----------
    f : callable
        Maps an (N, n_var) float64 array to (N,) or (N, n_out), e.g.
        ``lambda x: np.exp(np.sin(np.pi * x[:, 0]) + x[:, 1] ** 2)``.
    n_var : int
        Number of input variables.
    ranges : (lo, hi) or sequence of n_var pairs
        Sampling interval of every variable, or of each one.
    train_num, test_num : int
        Number of training and test samples.
    seed : int
        Seed of the ``numpy.random.Generator`` that draws the inputs
        (training inputs first, then test inputs).
    normalize_input, normalize_label : bool
        Standardise inputs / labels with the mean and standard deviation of
        the *training* set (applied to both splits, as pykan does). The
        statistics are returned as ``input_mean``/``input_std`` and
        ``label_mean``/``label_std`` so predictions can be mapped back.

    Returns
    -------
    dict with ``train_input``, ``train_label``, ``test_input``, ``test_label``.
    """
    if not callable(f):
        raise TypeError(f"f must be callable, got {type(f).__name__}")
    n_var = v.check_int("n_var", n_var, 1)
    train_num = v.check_int("train_num", train_num, 1)
    test_num = v.check_int("test_num", test_num, 1)
    seed = v.check_int("seed", seed, 0)
    for name, flag in (("normalize_input", normalize_input), ("normalize_label", normalize_label)):
        if not isinstance(flag, (bool, np.bool_)):
            raise TypeError(f"{name} must be True or False, got {flag!r}")
    r = _check_ranges(ranges, n_var)

    rng = np.random.default_rng(seed)
    lo, width = r[:, 0], r[:, 1] - r[:, 0]
    train_input = lo + width * rng.random((train_num, n_var))
    test_input = lo + width * rng.random((test_num, n_var))
    train_label = _labels(f, train_input.copy(), "train")
    test_label = _labels(f, test_input.copy(), "test")
    if test_label.shape[1] != train_label.shape[1]:
        raise ValueError(f"f returned {train_label.shape[1]} outputs for the train inputs "
                         f"but {test_label.shape[1]} for the test inputs")

    out = {}
    if normalize_input:
        mean, std = train_input.mean(axis=0), _safe_std(train_input)
        train_input, test_input = (train_input - mean) / std, (test_input - mean) / std
        out.update(input_mean=mean, input_std=std)
    if normalize_label:
        mean, std = train_label.mean(axis=0), _safe_std(train_label)
        train_label, test_label = (train_label - mean) / std, (test_label - mean) / std
        out.update(label_mean=mean, label_std=std)
    out.update(train_input=train_input, train_label=train_label,
               test_input=test_input, test_label=test_label)
    return out


def _safe_std(a):
    """Column standard deviation, with 1 where a column is constant (no division by 0)."""
    std = a.std(axis=0)
    return np.where(std > 0, std, 1.0)


def check_dataset(dataset, n_in, n_out):
    """Validate a fit() data set; returns host float64 copies of the four arrays.

    Labels may be 1-D when the model has one output.
    """
    if not isinstance(dataset, dict):
        raise TypeError(f"dataset must be a dict with train_input, train_label, test_input, "
                        f"test_label, got {type(dataset).__name__}")
    out = {}
    for split in ("train", "test"):
        for part, cols in (("input", n_in), ("label", n_out)):
            key = f"{split}_{part}"
            if key not in dataset:
                raise ValueError(f"dataset is missing {key!r} (has {sorted(dataset)})")
            a = dataset[key]
            if hasattr(a, "__cuda_array_interface__") and not isinstance(a, np.ndarray):
                a = a.copy_to_host() if hasattr(a, "copy_to_host") else a.get()
            if hasattr(a, "detach"):  # a torch tensor from a pykan notebook
                a = a.detach().cpu().numpy()
            a = np.asarray(a)
            if part == "label" and a.ndim == 1 and cols == 1:
                a = a[:, None]
            out[key] = v.check_array(f"dataset[{key!r}]", a, cols, np.float64)
        n_x, n_y = out[f"{split}_input"].shape[0], out[f"{split}_label"].shape[0]
        if n_x != n_y:
            raise ValueError(f"dataset['{split}_input'] has {n_x} rows but "
                             f"dataset['{split}_label'] has {n_y}")
    return out


__all__ = ["create_dataset", "check_dataset"]
