"""Saving and loading a KAN: one ``.npz`` file, every array plus a JSON header.

File layout (format version 1):

    header                 0-d unicode array holding the JSON header below
    layers.{l}.grid        (I, G+2k+1)   knots
    layers.{l}.coef        (I, G+k, O)
    layers.{l}.scale_base  (I, O)
    layers.{l}.scale_sp    (I, O)
    layers.{l}.mask        (I, O)
    {section}.{name}       arrays of an extra section (see below)

    header = {"format": "numkan.KAN", "version": 1, "numkan": "<version>",
              "width": [...], "grid": G, "k": k, "seed": s, "grid_range": [lo, hi],
              "base_fun": "...", "grid_eps": e, "dtype": "float64",
              "sp_trainable": true, "sb_trainable": true,
              "sections": {"<name>": <JSON metadata of that section>}}

Arrays are stored in the model's dtype, exactly, so a loaded model gives
bit-identical outputs. Nothing device-specific is stored: ``load`` puts the
model on the device it is asked for. Files are read with
``allow_pickle=False``: loading never runs code.

Extra state (e.g. the symbolic edges) joins the file as a *section*:
``register_section(name, save_fn, load_fn)`` with ``save_fn(model) -> (meta,
arrays)`` (a JSON-able dict and a dict of named ndarrays; ``meta = None``
leaves the section out) and ``load_fn(model, meta, arrays)`` that installs
them (raising ValueError on bad content). A file that holds a section this
numkan does not know was written by a newer one, and is refused.
"""
import json
import os
import tempfile
import zipfile
import zlib

import numpy as np

FORMAT = "numkan.KAN"
FORMAT_VERSION = 1
LAYER_ARRAYS = ("grid", "coef", "scale_base", "scale_sp", "mask")
_SECTIONS = {}


def register_section(name, save_fn, load_fn):
    """Add a named block of extra state to every saved file (see the module docstring)."""
    if not isinstance(name, str) or not name.isidentifier() or name in ("header", "layers"):
        raise ValueError(f"section name must be an identifier other than 'header' and 'layers', got {name!r}")
    _SECTIONS[name] = (save_fn, load_fn)


def _header(model):
    from . import __version__
    return {"format": FORMAT, "version": FORMAT_VERSION, "numkan": __version__,
            "width": list(model.width), "grid": int(model.grid), "k": int(model.k),
            "seed": int(model.seed), "grid_range": [float(g) for g in model.grid_range],
            "base_fun": model.base_fun, "grid_eps": float(model.grid_eps),
            "dtype": np.dtype(model.dtype).name,
            "sp_trainable": bool(getattr(model, "sp_trainable", True)),
            "sb_trainable": bool(getattr(model, "sb_trainable", True)),
            "sections": {}}


def save(model, path):
    """Write ``model`` to ``path`` (".npz" is appended when missing); returns the path written.

    The file is written to a temporary name and renamed, so an interrupted
    save never leaves a half-written file under ``path``.
    """
    path = os.fspath(path)
    if not path.endswith(".npz"):
        path += ".npz"
    be = model.backend
    header = _header(model)
    arrays = {}
    for l, L in enumerate(model.layers):
        for n in LAYER_ARRAYS:
            arrays[f"layers.{l}.{n}"] = np.ascontiguousarray(be.to_host(getattr(L, n)))
    for name, (save_fn, _) in _SECTIONS.items():
        meta, extra = save_fn(model)
        if meta is None:
            continue
        header["sections"][name] = meta
        for key, a in extra.items():
            arrays[f"{name}.{key}"] = np.asarray(a)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(suffix=".npz.tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, header=np.array(json.dumps(header)), **arrays)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def _read(path):
    """(header dict, arrays dict) from the file, or a ValueError saying what is wrong."""
    try:
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise ValueError("it holds a single array, not an .npz archive")
        with z:
            files = list(z.files)
            if "header" not in files:
                raise ValueError("it has no 'header' entry")
            contents = {n: z[n] for n in files}
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
        raise ValueError(f"{path} is not a readable numkan model file "
                         f"(corrupt or truncated?): {exc}") from None
    raw = contents.pop("header")
    try:
        header = json.loads(str(raw[()]))
    except (ValueError, TypeError, IndexError) as exc:
        raise ValueError(f"{path}: the header is not valid JSON: {exc}") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ValueError(f"{path} is not a numkan model file (header format "
                         f"{header.get('format') if isinstance(header, dict) else header!r}, "
                         f"expected {FORMAT!r})")
    version = header.get("version")
    if not isinstance(version, int) or version < 1:
        raise ValueError(f"{path}: bad format version {version!r}")
    if version > FORMAT_VERSION:
        raise ValueError(f"{path} was written by a newer numkan (format version {version}; "
                         f"this numkan reads up to version {FORMAT_VERSION}): upgrade numkan")
    return header, contents


def _expected_shapes(model, l):
    L = model.layers[l]
    I, O, G, k = L.in_dim, L.out_dim, model.grid, model.k
    return {"grid": (I, G + 2 * k + 1), "coef": (I, G + k, O), "scale_base": (I, O),
            "scale_sp": (I, O), "mask": (I, O)}


def load(path, device="cpu"):
    """Read a model written by ``save`` and put it on ``device``.

    Raises ValueError for a file that is corrupt or truncated, written by a
    newer numkan, or whose arrays do not match the header (missing, wrong
    shape or dtype, non-finite, knots not non-decreasing).
    """
    from .model import KAN
    path = os.fspath(path)
    header, arrays = _read(path)
    keys = ("width", "grid", "k", "seed", "grid_range", "base_fun", "grid_eps", "dtype",
            "sp_trainable", "sb_trainable")
    missing = [key for key in keys if key not in header]
    if missing:
        raise ValueError(f"{path}: the header lacks {missing}")
    unknown = sorted(set(header.get("sections", {})) - set(_SECTIONS))
    if unknown:
        raise ValueError(f"{path} holds sections {unknown} that this numkan does not know "
                         "(written by a newer version?)")
    try:
        model = KAN(header["width"], grid=header["grid"], k=header["k"], seed=header["seed"],
                    grid_range=header["grid_range"], base_fun=header["base_fun"],
                    grid_eps=header["grid_eps"], dtype=header["dtype"], device=device,
                    sp_trainable=header["sp_trainable"], sb_trainable=header["sb_trainable"])
    except ValueError as exc:
        if "device" in str(exc):
            raise
        raise ValueError(f"{path}: the header describes no valid model: {exc}") from None
    dtype = model.dtype
    be = model.backend
    staged = []
    for l in range(len(model.layers)):
        for n, shape in _expected_shapes(model, l).items():
            key = f"layers.{l}.{n}"
            if key not in arrays:
                raise ValueError(f"{path}: array {key!r} is missing")
            a = arrays[key]
            if a.shape != shape:
                raise ValueError(f"{path}: array {key!r} has shape {a.shape}, expected {shape} "
                                 f"for width={model.width}, grid={model.grid}, k={model.k}")
            if a.dtype != dtype:
                raise ValueError(f"{path}: array {key!r} has dtype {a.dtype}, expected {dtype}")
            if not np.all(np.isfinite(a)):
                raise ValueError(f"{path}: array {key!r} holds NaN or inf")
            if n == "grid" and np.any(np.diff(a, axis=1) < 0):
                raise ValueError(f"{path}: the knots in {key!r} are not non-decreasing")
            staged.append((model.layers[l], n, a))
    extra = sorted(set(arrays) - {f"layers.{l}.{n}" for l in range(len(model.layers))
                                  for n in LAYER_ARRAYS}
                   - {f"{s}.{k}" for s in header.get("sections", {}) for k in _section_keys(arrays, s)})
    if extra:
        raise ValueError(f"{path}: unexpected arrays {extra[:5]} (does the header match the arrays?)")
    for L, n, a in staged:
        setattr(L, n, be.asarray(a, dtype))
    for name, meta in header.get("sections", {}).items():
        _SECTIONS[name][1](model, meta, {k: arrays[f"{name}.{k}"] for k in _section_keys(arrays, name)})
    return model


def _section_keys(arrays, name):
    prefix = name + "."
    return [k[len(prefix):] for k in arrays if k.startswith(prefix)]
