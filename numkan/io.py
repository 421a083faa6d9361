"""Saving and loading a KAN: one ``.npz`` file, every array plus a JSON header.

File layout (format version 1):

    header                 0-d unicode array holding the JSON header below
    layers.{l}.grid        (I, G+2k+1)   knots, ``layer.knots`` (as ``_validate.check_knots`` requires)
    layers.{l}.coef        (I, G+k, O)   O = the layer's edge outputs (its nodes, or more
                                         with multiplication nodes: their subnodes)
    layers.{l}.scale_base  (I, O)
    layers.{l}.scale_sp    (I, O)
    layers.{l}.mask        (I, O)        0 or 1
    symbolic.{l}.affine    (I, O, 4)     symbolic edges' (a, b, c, d)  } only when some edge is
    symbolic.{l}.mask      (I, O)        0 or 1                         } symbolic or an input pruned

    header = {"format": "numkan.KAN", "version": 1, "numkan": "<version>",
              "width": [...], "grid": G, "k": k, "seed": s, "grid_range": [lo, hi],
              "base_fun": "...", "grid_eps": e, "dtype": "float64",
              "sp_trainable": true, "sb_trainable": true,
              "mult_arity": [[], [2, 2], []],      (version 2, only with multiplication nodes)
              "sections": {"<name>": <JSON metadata of that section>}}

Arrays are stored in the model's dtype, exactly, so a loaded model gives
bit-identical outputs. Nothing device-specific is stored: ``load`` puts the
model on the device it is asked for.

Loading never runs code and never trusts a size: the archive is read member
by member (stored or deflated members only, as numpy writes them), each
member's ``.npy`` header is checked against the bytes the member really
holds before its array is allocated, the whole archive may expand to at most
``MAX_EXPANSION`` times its size on disk, and the model is built only after
the header's sizes agree with the arrays present. So the memory a file can
make ``load`` take is a few times what the file holds unpacked, itself at
most ``MAX_EXPANSION`` times the file. Any file that is not a valid model
raises ValueError naming the file.

The symbolic edges and ``input_id`` join the file as the "symbolic"
*section*: its metadata in ``header["sections"]["symbolic"]`` is
``{"names": [[[i, o, name], ...] per layer], "input_id": [...] or null}``,
its arrays are ``symbolic.*``. Wrong JSON types in it (TypeError, KeyError,
IndexError, AttributeError, OverflowError) are reported as the file's
ValueError. A file that holds a section this numkan does not know was
written by a newer one, and is refused.
"""
import json
import math
import numbers
import os
import reprlib
import secrets
import stat
import struct
import zipfile
import zlib

import numpy as np
from numpy.lib import format as npy_format

from . import _validate as v
from ._version import __version__
from .functions import SYMBOLIC_LIB
from .kernels import get_backend

FORMAT = "numkan.KAN"
FORMAT_VERSION = 2  # 2 adds "mult_arity"; a model without product nodes is written as version 1
# file key -> layer attribute
LAYER_ARRAYS = {"grid": "knots", "coef": "coef", "scale_base": "scale_base", "scale_sp": "scale_sp",
                "mask": "mask"}
# The arrays of a file may take at most this many times the file's size once
# unpacked (plus a little for tiny files). ``save`` writes stored members (a
# ratio of about 1); a copy re-packed with ``np.savez_compressed`` stays far
# below it, while a "zip bomb" that claims gigabytes from kilobytes does not.
MAX_EXPANSION = 64
_SLACK_BYTES = 1 << 20
_HEADER_KEYS = ("width", "grid", "k", "seed", "grid_range", "base_fun", "grid_eps", "dtype",
                "sp_trainable", "sb_trainable")
def _header(model):
    mult = any(model.mult_arity)
    extra = {"mult_arity": [list(map(int, a)) for a in model.mult_arity]} if mult else {}
    return {"format": FORMAT, "version": FORMAT_VERSION if mult else 1, "numkan": __version__,
            "width": list(model.width), "grid": int(model.grid), "k": int(model.k),
            "seed": int(model.seed), "grid_range": [float(g) for g in model.grid_range],
            "base_fun": model.base_fun, "grid_eps": float(model.grid_eps),
            "dtype": np.dtype(model.dtype).name,
            "sp_trainable": bool(model.sp_trainable), "sb_trainable": bool(model.sb_trainable),
            "sections": {}, **extra}


# ---------------------------------------------------------------------------
# save: write a temporary file beside the target, flush it to disk, rename it
def save(model, path):
    """Write ``model`` to ``path`` (".npz" is appended when missing); returns that path.

    The file is written under a temporary name in the target's directory
    (".<name>.<hex>.tmp"), flushed to disk and renamed over the target, so an
    interrupted save never leaves a half-written file under ``path``. Any
    error, KeyboardInterrupt included, removes the temporary file (only a
    killed process can leave one behind) and leaves ``path`` as it was. A file
    that is replaced keeps its permission bits; a new file gets the umask's
    default, as ``open`` would give it. When ``path`` is a symbolic link, the
    file it points to is written and the link stays. Errors name ``path``.
    """
    path = os.fspath(path)
    if not path.endswith(".npz"):
        path += ".npz"
    # everything that can fail on the model's side happens before the disk is touched
    be = model.backend
    header = _header(model)
    arrays = {}
    for l, L in enumerate(model.layers):
        for key, n in LAYER_ARRAYS.items():
            arrays[f"layers.{l}.{key}"] = np.ascontiguousarray(be.to_host(getattr(L, n)))
    meta, extra = _save_symbolic(model)
    if meta is not None:
        header["sections"]["symbolic"] = meta
        for key, a in extra.items():
            arrays[f"symbolic.{key}"] = np.asarray(a)
    header = np.array(json.dumps(header))

    # renaming onto a link would replace the link: write next to (and over) its target
    target = os.path.realpath(path)
    directory = os.path.dirname(target)
    tmp = None
    try:
        try:
            mode = stat.S_IMODE(os.stat(target).st_mode) & 0o777
        except FileNotFoundError:
            mode = None
        fd, tmp = _create_temp(directory, os.path.basename(target))
        with os.fdopen(fd, "wb") as f:
            if mode is not None:
                _chmod(f, tmp, mode)
            np.savez(f, header=header, **arrays)
            f.flush()
            os.fsync(f.fileno())  # the data is on disk before the name points at it
        os.replace(tmp, target)
        tmp = None
        _fsync_dir(directory)  # ... and so is the rename
    except OSError as exc:
        # the temporary name means nothing to the caller: report the path they gave
        if exc.errno is None:
            raise OSError(f"could not save to {path}: {exc}") from None
        raise type(exc)(exc.errno, exc.strerror, path) from None
    finally:
        # any failure, KeyboardInterrupt included, takes the temporary file with it
        if tmp is not None:
            try:
                os.remove(tmp)
            except OSError:
                pass
    return path


def _create_temp(directory, base):
    """(fd, name) of a new file in ``directory``, created with mode 0o666 less the umask.

    Not ``tempfile.mkstemp``: its files are 0600, and the saved file would keep that.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        name = os.path.join(directory, f".{base}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(name, flags, 0o666), name
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name in {directory}")


def _chmod(f, name, mode):
    if hasattr(os, "fchmod"):
        os.fchmod(f.fileno(), mode)
    else:  # Windows before Python 3.13
        os.chmod(name, mode)


def _fsync_dir(directory):
    """Make a rename in ``directory`` durable, where the OS lets a directory be fsync'ed."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # Windows cannot open a directory
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse it; the file itself is already on disk
        pass
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------
# load: every check made before anything the file asks for is allocated
class _Corrupt(Exception):
    """A reason the archive is unreadable; ``_read`` turns it into the ValueError."""


# Exceptions that zipfile, zlib and numpy's .npy parser raise on damaged bytes.
# NotImplementedError (an unknown compression method, strong encryption),
# RuntimeError (an encrypted member), struct.error (a short record) and
# RecursionError (a deeply nested .npy header) are all among them.
_READ_ERRORS = (ValueError, OSError, EOFError, KeyError, IndexError, TypeError, OverflowError,
                RuntimeError, struct.error, zipfile.BadZipFile, zlib.error, _Corrupt)


def _read(path):
    """(header dict, arrays dict) from the file, or a ValueError saying what is wrong."""
    with open(path, "rb") as f:  # a missing or unreadable file raises OSError naming it
        single = f.read(6) == b"\x93NUMPY"
        file_size = f.seek(0, os.SEEK_END)
        f.seek(0)
        if single:
            raise ValueError(f"{path} holds a single array (.npy), not an .npz archive")
        try:
            contents = _read_members(f, file_size)
        except _READ_ERRORS as exc:
            raise ValueError(f"{path} is not a readable numkan model file "
                             f"(corrupt or truncated?): {type(exc).__name__}: {exc}") from None
    if "header" not in contents:
        raise ValueError(f"{path} is not a numkan model file: it has no 'header' entry")
    raw = contents.pop("header")
    if raw.shape != () or raw.dtype.kind != "U":
        raise ValueError(f"{path}: the header is a {raw.dtype} array of shape {raw.shape}, "
                         "expected a 0-d unicode string")
    try:
        header = json.loads(str(raw[()]))
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"{path}: the header is not valid JSON: {type(exc).__name__}: {exc}") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ValueError(f"{path} is not a numkan model file (header format "
                         f"{header.get('format') if isinstance(header, dict) else header!r:.80}, "
                         f"expected {FORMAT!r})")
    version = header.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"{path}: bad format version {version!r:.80}, expected an integer >= 1")
    if version > FORMAT_VERSION:
        raise ValueError(f"{path} was written by a newer numkan (format version {version}; "
                         f"this numkan reads up to version {FORMAT_VERSION}): upgrade numkan")
    return header, contents


def _read_members(f, file_size):
    """{name: array} of the .npz archive open as ``f``, its sizes checked before each read."""
    with zipfile.ZipFile(f) as z:
        infos = z.infolist()
        names = [i.filename for i in infos]
        if len(set(names)) != len(names):
            raise _Corrupt("it names a member twice")
        unpacked = 0
        for info in infos:
            if not info.filename.endswith(".npy"):
                raise _Corrupt(f"member {info.filename!r:.80} is not an .npy array")
            if info.flag_bits & 0x1:
                raise _Corrupt(f"member {info.filename!r:.80} is encrypted")
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise _Corrupt(f"member {info.filename!r:.80} uses compression method "
                               f"{info.compress_type} (numpy writes stored or deflated members)")
            if info.compress_size > file_size or (
                    info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size):
                raise _Corrupt(f"member {info.filename!r:.80} claims sizes ({info.compress_size} "
                               f"packed, {info.file_size} unpacked) that the file cannot hold")
            unpacked += info.file_size
        if unpacked > MAX_EXPANSION * file_size + _SLACK_BYTES:
            raise _Corrupt(f"its members claim {unpacked} bytes unpacked from a file of "
                           f"{file_size} bytes (more than MAX_EXPANSION = {MAX_EXPANSION} times)")
        return {info.filename[:-4]: _read_npy(z, info) for info in infos}


def _read_npy(z, info):
    """One member's array; its shape and dtype must account for exactly the bytes it holds."""
    with z.open(info) as m:
        version = npy_format.read_magic(m)
        if version == (1, 0):
            shape, fortran, dtype = npy_format.read_array_header_1_0(m)
        elif version == (2, 0):
            shape, fortran, dtype = npy_format.read_array_header_2_0(m)
        else:
            raise _Corrupt(f"member {info.filename!r:.80} has .npy version {version}")
        # plain numbers and strings only: no objects (pickles), records or sub-arrays
        if dtype.kind not in "biufU" or dtype.fields is not None or dtype.shape != () \
                or dtype.itemsize == 0:
            raise _Corrupt(f"member {info.filename!r:.80} has dtype {dtype}")
        if not all(isinstance(n, int) and n >= 0 for n in shape):
            raise _Corrupt(f"member {info.filename!r:.80} has shape {shape!r:.80}")
        count = math.prod(shape)
        nbytes = count * dtype.itemsize
        if m.tell() + nbytes != info.file_size:
            raise _Corrupt(f"member {info.filename!r:.80} declares shape {shape} of {dtype} "
                           f"({nbytes} bytes) but holds {info.file_size - m.tell()} bytes")
        data = m.read(nbytes)
        if len(data) != nbytes or m.read(1):  # reading to the end also checks the CRC
            raise _Corrupt(f"member {info.filename!r:.80} is truncated")
    a = np.frombuffer(data, dtype=dtype, count=count)
    return a.reshape(shape, order="F" if fortran else "C").copy()

# ---------------------------------------------------------------------------
# the "symbolic" section: symbolic edges and input_id
def _save_symbolic(model):
    """(meta, arrays) of the "symbolic" section; meta None when nothing is symbolic and no
    input was pruned."""
    ids = model.input_id
    if not any(np.any(layer.symbolic_mask) for layer in model.layers) and ids is None:
        return None, {}
    arrays, names = {}, []
    for l, layer in enumerate(model.layers):
        arrays[f"{l}.affine"] = np.ascontiguousarray(layer.backend.to_host(layer.symbolic_affine))
        arrays[f"{l}.mask"] = np.array(layer.symbolic_mask, dtype=np.float64)
        names.append([[int(i), int(o), layer.symbolic_names[i][o]]
                      for i, o in zip(*np.nonzero(layer.symbolic_mask))])
    meta = {"names": names, "input_id": None if ids is None else [int(t) for t in ids]}
    return meta, arrays


def _load_symbolic(model, meta, arrays, state):
    """Check a saved "symbolic" section against ``model`` (built from the header) and add
    each layer's symbolic state to ``state`` (one dict per layer, for ``layer.derive``);
    returns the section's input_id (or None). ValueError on bad content."""
    L = len(model.layers)
    if not isinstance(meta, dict) or not isinstance(meta.get("names"), list) or len(meta["names"]) != L:
        raise ValueError(f"the symbolic section's metadata is malformed: {meta!r:.200}")
    staged = []
    for l, layer in enumerate(model.layers):
        I, O = layer.in_dim, layer.out_dim
        aff, sm = arrays.get(f"{l}.affine"), arrays.get(f"{l}.mask")
        if aff is None or sm is None:
            raise ValueError(f"the symbolic section lacks the arrays of layer {l}")
        if aff.shape != (I, O, 4) or sm.shape != (I, O):
            raise ValueError(f"symbolic arrays of layer {l} have shapes {aff.shape}, {sm.shape}; "
                             f"expected {(I, O, 4)} and {(I, O)}")
        if aff.dtype != model.dtype:
            raise ValueError(f"symbolic affine of layer {l} has dtype {aff.dtype}, expected {model.dtype}")
        if sm.dtype.kind not in "biuf" or not np.all((sm == 0) | (sm == 1)):
            raise ValueError(f"symbolic mask of layer {l} must hold only 0 and 1, got dtype {sm.dtype}, "
                             f"values {np.unique(sm)[:5]}")
        if not np.all(np.isfinite(aff)):
            raise ValueError(f"symbolic affine of layer {l} holds NaN or inf")
        names = [["0"] * O for _ in range(I)]
        for entry in meta["names"][l]:
            try:
                i, o, name = entry
            except (TypeError, ValueError):
                raise ValueError(f"bad symbolic edge entry {entry!r} in layer {l}") from None
            if not (isinstance(i, int) and isinstance(o, int) and 0 <= i < I and 0 <= o < O):
                raise ValueError(f"symbolic edge ({i}, {o}) is outside layer {l} ({I} x {O})")
            if name not in SYMBOLIC_LIB:
                raise ValueError(f"symbolic edge ({l}, {i}, {o}) uses {name!r}, which is not in "
                                 "SYMBOLIC_LIB: add it with numkan.add_symbolic before loading")
            names[i][o] = name
        missing = [(i, o) for i, o in zip(*np.nonzero(sm)) if names[i][o] == "0" and
                   [i, o, "0"] not in meta["names"][l]]
        if missing:
            raise ValueError(f"symbolic edges {missing[:5]} of layer {l} have no function name")
        staged.append((layer, aff, sm, names))
    ids = meta.get("input_id")
    if ids is not None:
        if not isinstance(ids, list) or len(ids) != model.width[0] or \
                not all(isinstance(t, int) and t >= 0 for t in ids):
            raise ValueError(f"the symbolic section's input_id {ids!r} does not match width[0] = "
                             f"{model.width[0]}")
    for st, (layer, aff, sm, names) in zip(state, staged):
        st.update(symbolic_affine=aff, symbolic_mask=sm, symbolic_names=names)
    return None if ids is None else np.asarray(ids, dtype=np.int64)


def _is_int(x):
    return isinstance(x, int) and not isinstance(x, bool)


def _is_real(x):
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _check_header(path, header):
    """The model's constructor arguments from the header, each of the right type."""
    missing = [key for key in _HEADER_KEYS if key not in header]
    if missing:
        raise ValueError(f"{path}: the header lacks {missing}")
    h = {key: header[key] for key in _HEADER_KEYS}
    problems = []
    if not (isinstance(h["width"], list) and len(h["width"]) >= 2
            and all(_is_int(w) and w >= 1 for w in h["width"])):
        problems.append(f"width {h['width']!r:.80} (expected a list of at least 2 integers >= 1)")
    arity = header.get("mult_arity")
    h["mult_arity"] = arity
    if not problems and arity is not None:
        rows_ok = isinstance(arity, list) and len(arity) == len(h["width"]) and all(
            isinstance(a, list) and len(a) <= w and all(_is_int(t) and t >= 2 for t in a)
            for a, w in zip(arity, h["width"]))
        if not rows_ok or arity[0]:
            problems.append(f"mult_arity {arity!r:.80} (expected one list of integers >= 2 per node "
                            "layer, none for the inputs, at most one per node)")
    for key, lo in (("grid", 1), ("k", 1), ("seed", 0)):
        if not (_is_int(h[key]) and h[key] >= lo):
            problems.append(f"{key} {h[key]!r:.80} (expected an integer >= {lo})")
    gr = h["grid_range"]
    if not (isinstance(gr, list) and len(gr) == 2 and all(_is_real(t) for t in gr)):
        problems.append(f"grid_range {gr!r:.80} (expected a pair of numbers)")
    if not _is_real(h["grid_eps"]):
        problems.append(f"grid_eps {h['grid_eps']!r:.80} (expected a number)")
    for key in ("base_fun", "dtype"):
        if not isinstance(h[key], str):
            problems.append(f"{key} {h[key]!r:.80} (expected a string)")
    if isinstance(h["dtype"], str) and h["dtype"] not in ("float32", "float64"):
        problems.append(f"dtype {h['dtype']!r:.80} (expected 'float32' or 'float64')")
    for key in ("sp_trainable", "sb_trainable"):
        if not isinstance(h[key], bool):
            problems.append(f"{key} {h[key]!r:.80} (expected true or false)")
    sections = header.get("sections", {})
    if not isinstance(sections, dict):
        problems.append(f"sections {sections!r:.80} (expected an object)")
    if problems:
        raise ValueError(f"{path}: the header describes no valid model: bad " + "; bad ".join(problems))
    unknown = sorted(set(sections) - {"symbolic"})
    if unknown:
        raise ValueError(f"{path} holds sections {unknown} that this numkan does not know "
                         "(written by a newer version?)")
    return h, sections


def _expected_shapes(width, G, k, arity):
    """{key: shape} of every layer array a model of this width, grid, order and
    product nodes (``arity`` per node layer) holds."""
    shapes = {}
    outs = [w - len(a) + sum(a) for w, a in zip(width, arity)]
    for l, (I, O) in enumerate(zip(width[:-1], outs[1:])):
        shapes.update({f"layers.{l}.grid": (I, G + 2 * k + 1), f"layers.{l}.coef": (I, G + k, O),
                       f"layers.{l}.scale_base": (I, O), f"layers.{l}.scale_sp": (I, O),
                       f"layers.{l}.mask": (I, O)})
    return shapes


def load(cls, path, device="cpu"):
    """Read a model written by ``save``, as an instance of ``cls``, on ``device``.

    ``KAN.load(path)`` (and ``numkan.load``) call this with their class.
    ``path`` is the name given to ``save``, with or without its ".npz": when
    no file ``path`` exists and ``path`` lacks the suffix, ``path + ".npz"``
    is read.

    Raises ValueError naming the file for any file that is not a valid model:
    corrupt or truncated, written by a newer numkan, a header of the wrong
    types, or arrays that do not match the header (missing, unexpected, wrong
    shape or dtype, non-finite, masks other than 0 and 1, knots that
    ``_validate.check_knots`` refuses, as it refuses them wherever knots are
    made). The model is built only after all of that is checked; a bad device
    is the caller's ValueError, raised before the file is read.
    """
    path = os.fspath(path)
    if not path.endswith(".npz") and not os.path.exists(path) and os.path.exists(path + ".npz"):
        path += ".npz"  # the name save() was given; it appended the suffix
    get_backend(device)  # a bad device is the caller's error, not the file's: say so first
    header, arrays = _read(path)
    h, sections = _check_header(path, header)
    dtype = v.check_dtype(h["dtype"])
    width = h["width"]
    arity = h["mult_arity"] or [[] for _ in width]
    shapes = _expected_shapes(width, h["grid"], h["k"], arity)
    section_keys = {s: _section_keys(arrays, s) for s in sections}
    # the header's sizes must match arrays the file really holds before a model of that size is built
    for key, shape in shapes.items():
        if key not in arrays:
            raise ValueError(f"{path}: array {key!r} is missing")
        a = arrays[key]
        if a.shape != shape:
            raise ValueError(f"{path}: array {key!r} has shape {a.shape}, expected {shape} "
                             f"for width={reprlib.repr(width)}, grid={h['grid']}, k={h['k']}")
        if a.dtype != dtype:
            raise ValueError(f"{path}: array {key!r} has dtype {a.dtype}, expected {dtype}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{path}: array {key!r} holds NaN or inf")
        if key.endswith(".mask") and not np.all((a == 0) | (a == 1)):
            bad = a[(a != 0) & (a != 1)][0]
            raise ValueError(f"{path}: array {key!r} holds {bad}, expected only 0 and 1")
        if key.endswith(".grid"):  # knots: the same rule as knots made any other way
            v.check_knots(f"{path}: array {key!r}", a, h["k"], dtype)
    extra = sorted(set(arrays) - set(shapes)
                   - {f"{s}.{key}" for s, keys in section_keys.items() for key in keys})
    if extra:
        raise ValueError(f"{path}: unexpected arrays {extra[:5]} (does the header match the arrays?)")
    try:
        spec = [w if not a else [w - len(a), len(a)] for w, a in zip(width, arity)]
        model = cls(spec, grid=h["grid"], k=h["k"], seed=h["seed"], grid_range=h["grid_range"],
                    base_fun=h["base_fun"], grid_eps=h["grid_eps"], dtype=dtype, device=device,
                    sp_trainable=h["sp_trainable"], sb_trainable=h["sb_trainable"],
                    mult_arity=arity)
    except ValueError as exc:
        raise ValueError(f"{path}: the header describes no valid model: {exc}") from None
    state = [{n: arrays[f"layers.{l}.{key}"] for key, n in LAYER_ARRAYS.items()}
             for l in range(len(model.layers))]
    input_id = None
    if "symbolic" in sections:
        try:
            input_id = _load_symbolic(model, sections["symbolic"],
                                      {key: arrays[f"symbolic.{key}"] for key in section_keys["symbolic"]},
                                      state)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError) as exc:
            # a section's metadata is the file's JSON: wrong types in it are the file's fault
            raise ValueError(f"{path}: bad 'symbolic' section: {type(exc).__name__}: {exc}") from None
    layers = [L.derive(**st) for L, st in zip(model.layers, state)]
    return model._with_layers(layers, input_id=input_id)


def _section_keys(arrays, name):
    prefix = name + "."
    return [key[len(prefix):] for key in arrays if key.startswith(prefix)]
