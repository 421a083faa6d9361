"""Compile every CUDA kernel variant for real GPUs, without a GPU.

numba's CUDA simulator runs kernels as Python and accepts code the CUDA
compiler rejects, so this module compiles each kernel the launchers in
``numkan/kernels/cuda.py`` can pick to PTX with NVVM (``cuda.compile_ptx``) and
assembles the PTX with ``ptxas -v``, which reports registers, spills and shared
memory per kernel. NVVM and ptxas come from the ``cuda`` extra
(``numba-cuda[cu12]``); no driver or GPU is needed, with one stand-in: numba
compiles a device function called from a kernel for the compute capability of
the *current device* (``get_current_device().compute_capability`` in
``numba.cuda.dispatcher``), which needs a driver. ``_no_driver_needed`` replaces
that one lookup by the target being compiled for. A device function is compiled
once and reused (its LLVM IR is linked into each kernel, which NVVM then
compiles for the kernel's target), so the stand-in changes no kernel's PTX.

Used by ``tests/test_cuda_compile.py`` (in a subprocess, so the pytest process
never imports ``numba.cuda``) and as a script that prints the table kept in
``benchmarks/RESULTS.md``:

    python tests/cuda_ptx.py --table
    # or on two cores: (python tests/cuda_ptx.py --shard 0/2 & python tests/cuda_ptx.py --shard 1/2) \
    #                  | python tests/cuda_ptx.py --render
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np

TARGETS = ((8, 0), (9, 0))
REGISTERS_PER_SM = 65536  # sm_80 and sm_90 alike
MAX_BLOCKS_PER_SM = {(8, 0): 32, (9, 0): 32}
MAX_THREADS_PER_SM = {(8, 0): 2048, (9, 0): 2048}
SHARED_PER_SM = {(8, 0): 164 * 1024, (9, 0): 228 * 1024}

# the layer shapes (B, I, O, G) whose launch configurations are compiled: the
# benchmark cases, tiny layers, very wide and very narrow layers, and a fine grid
SHAPES = [
    (1024, 64, 64, 5), (65536, 256, 256, 10), (65536, 256, 256, 100), (10000, 784, 64, 5),
    (1, 1, 1, 1), (50, 3, 2, 5), (7, 2, 3, 3), (100, 3, 5, 5), (500, 4, 16, 5), (256, 8, 4096, 5),
    (4096, 100, 1, 5), (1000, 16, 48, 1000),
]
ORDERS = (1, 2, 3, 4, 5)
DTYPES = ("float32", "float64")


def ptxas_path():
    """The ptxas that ``numba-cuda[cu12]`` installs (nvidia-cuda-nvcc-cu12), else one on PATH."""
    try:
        import nvidia.cuda_nvcc as nv
        for root in nv.__path__:
            p = Path(root) / "bin" / "ptxas"
            if p.exists():
                return str(p)
    except ImportError:
        pass
    from shutil import which
    return which("ptxas")


def _no_driver_needed(cc):
    """Let device functions compile without a driver: see the module docstring."""
    import numba.cuda.dispatcher as dispatcher
    dispatcher.get_current_device = lambda: SimpleNamespace(compute_capability=cc)


def _arr(dt, nd):
    return f"{dt}[{', '.join([':'] * (nd - 1) + ['::1'])}]"


def variants():
    """Every (name, py_func, signature, launch_bounds, dynamic shared bytes) the launchers can pick."""
    from numkan.kernels import cuda as C

    out = {}

    def add(name, dispatcher, sig, bounds=None, dyn=0):
        # MT (the basis rows a backward block holds) is a run-time argument that sets only the
        # dynamic shared memory: one compile per kernel, checked with the largest MT it gets
        key = (name, sig, bounds)
        dyn = max(dyn, out[key][4]) if key in out else dyn
        out[key] = (name, dispatcher.py_func, sig, bounds, dyn)

    for dt in DTYPES:
        itemsize = np.dtype(dt).itemsize
        a1, a2, a3, a4 = (_arr(dt, n) for n in (1, 2, 3, 4))
        f1, f2, f3 = (_arr("float64", n) for n in (1, 2, 3))
        for k in ORDERS:
            for B, I, O, G in SHAPES:
                K = G + k
                TX, TY, RB, RO, TI = C._forward_config(B, O, k, itemsize)
                fwd = C.launch_bounds("forward", k, dt, TX)
                add(f"forward k={k} {dt} TX={TX} RB={RB} RO={RO} TI={TI}",
                    C._forward_kernel(k, np.dtype(dt).str, TX, TY, RB, RO, TI),
                    f"void({a2}, {a2}, {a2}, {a3}, {a3}, {a2}, {a2}, {a2}, int64)", fwd)
                TX, TY, RB, RO, MT, _ = C._backward_config(B, I, O, K, k, itemsize)
                bwd = C.launch_bounds("backward", k, dt, TX)
                mbwd = C.launch_bounds("moments_backward", k, dt, TX)
                dyn = MT * TX * RO * itemsize
                add(f"backward k={k} {dt} TX={TX} RB={RB} RO={RO}",
                    C._backward_kernel(k, np.dtype(dt).str, TX, TY, RB, RO, False),
                    f"void({a2}, {a4}, {a3}, {a3}, {a2}, {a2}, {a2}, {a1}, {a1}, {a2}, {a2}, {a3}, "
                    f"{a2}, {a2}, {a2}, int64, int64)", bwd, dyn)
                add(f"moments_backward k={k} {dt} TX={TX} RB={RB} RO={RO}",
                    C._backward_kernel(k, np.dtype(dt).str, TX, TY, RB, RO, True),
                    f"void({a2}, {a4}, {a3}, {a3}, {f2}, {f2}, {f2}, {f1}, {f1}, {a2}, {a2}, {a3}, "
                    f"{a2}, {a2}, {a2}, int64, int64)", mbwd, dyn)
                TX, TY, RB, RO, _ = C._moments_forward_config(B, I, O, k, itemsize)
                fwd = C.launch_bounds("forward", k, dt, TX)
                add(f"moments_forward k={k} {dt} TX={TX} RB={RB} RO={RO}",
                    C._moments_forward_kernel(k, np.dtype(dt).str, TX, TY, RB, RO),
                    f"void({f3}, {f3}, {f3}, {a3}, {a2}, {a2}, {a3}, {a2}, {a2}, {a2}, int64)",
                    fwd)
        add(f"backward_finish {dt}", C._backward_finish,
            f"void({a3}, {a2}, {a2}, {a4}, {a3}, {a3}, {a2}, {a2})")
        add(f"moments_forward_finish {dt}", C._moments_forward_finish,
            f"void({f2}, {f2}, {f1}, {f1}, {f3}, {f3}, {f3})")
        add(f"knot_reciprocals {dt}", C._inv_kernel, f"void({a3}, {a2}, int64)")
        add(f"mse {dt}", C._mse_kernel, f"void({a1}, {a1}, {a1}, {dt}, {f1})")
        add(f"adam {dt}", C._adam_kernel,
            f"void({a1}, {a1}, {a1}, {a1}, {dt}, {dt}, {dt}, {dt}, {dt}, {dt}, {dt})")
        add(f"all_finite {dt}", C._nonfinite_kernel, f"void({a1}, int32[::1])")
        add(f"fill {dt}", C._fill1d, f"void({a1}, {dt})")
        add(f"group_product_forward {dt}", C._group_product_forward_kernel,
            f"void({a2}, {a2}, int64[::1])")
        add(f"group_product_backward {dt}", C._group_product_backward_kernel,
            f"void({a2}, {a2}, {a2}, int64[::1])")
        for src in DTYPES + ("int64",):  # asarray casts any source dtype on the device
            add(f"cast1d {src}->{dt}", C._cast1d, f"void({a1}, {_arr(src, 1)})")
            add(f"cast2d {src}->{dt}", C._cast2d, f"void({a2}, {_arr(src, 2)})")
    add("fill int32", C._fill1d, "void(int32[::1], int32)")
    return list(out.values())


_INFO = re.compile(r"Used (\d+) registers(?:.*?(\d+) bytes smem)?")
_SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")


def ptxas_report(ptx, cc, ptxas):
    """Assemble ``ptx`` for sm_<cc> with ``ptxas -v``; registers, spills, stack, static shared bytes."""
    arch = f"sm_{cc[0]}{cc[1]}"
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(ptx)
    try:
        proc = subprocess.run([ptxas, f"-arch={arch}", "-v", f.name, "-o", os.devnull],
                              capture_output=True, text=True, timeout=300)
    finally:
        os.unlink(f.name)
    text = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(f"ptxas failed for {arch}:\n{text[-3000:]}")
    info, spill = _INFO.search(text), _SPILL.search(text)
    if not info or not spill:
        raise RuntimeError(f"unexpected ptxas output for {arch}:\n{text[-3000:]}")
    return dict(registers=int(info.group(1)), smem=int(info.group(2) or 0), stack=int(spill.group(1)),
                spill_stores=int(spill.group(2)), spill_loads=int(spill.group(3)))


def blocks_per_sm(cc, threads, registers, smem):
    """Resident blocks per SM allowed by threads, registers (allocated per warp in units
    of 256) and shared memory (1 KiB reserved per block)."""
    warps = -(-threads // 32)
    regs_per_warp = -(-registers * 32 // 256) * 256
    by_regs = REGISTERS_PER_SM // (regs_per_warp * warps) if registers else MAX_BLOCKS_PER_SM[cc]
    by_threads = MAX_THREADS_PER_SM[cc] // threads
    by_smem = SHARED_PER_SM[cc] // (smem + 1024)
    return min(by_regs, by_threads, by_smem, MAX_BLOCKS_PER_SM[cc])


_ATOMIC = re.compile(r"^\s*(@%p\d+\s+)?(atom|red)\.", re.M)


def _native_for_both(name):
    """Variants compiled to PTX for each target by NVVM (the rest: compute_80 PTX, assembled
    for both targets, as a driver assembles it for a newer GPU): the default order k = 3 and
    the training kernels. Compiling all of them twice would double the test's time."""
    return " k=" not in name or " k=3 " in name


def compile_all(selected=None, shard=(0, 1)):
    """Compile every variant for every target; a list of result dicts (``error`` set on failure).

    ``shard = (s, n)`` compiles every n-th variant from the s-th, so that n processes share the work.
    """
    from numba import cuda

    ptxas = ptxas_path()
    if ptxas is None:
        raise RuntimeError("ptxas not found: install the cuda extra, pip install 'numkan[cuda]'")
    results = []
    for idx, (name, fn, sig, bounds, dyn) in enumerate(variants()):
        if (selected and not any(s in name for s in selected)) or idx % shard[1] != shard[0]:
            continue
        kw = dict(launch_bounds=bounds) if bounds else {}
        ptx = {}
        for cc in TARGETS:
            row = dict(name=name, target=f"sm_{cc[0]}{cc[1]}", sig=sig, dynamic_smem=dyn,
                       threads=bounds[0] if bounds else 256)
            try:
                src = cc if _native_for_both(name) else TARGETS[0]
                if src not in ptx:
                    _no_driver_needed(src)
                    ptx[src] = cuda.compile_ptx(fn, sig, cc=src, **kw)[0]
                row["ptx"] = f"compute_{src[0]}{src[1]}"
                row.update(ptxas_report(ptx[src], cc, ptxas))
                row["atomics"] = len(_ATOMIC.findall(ptx[src]))
                row["blocks_per_sm"] = blocks_per_sm(cc, row["threads"], row["registers"],
                                                     row["smem"] + dyn)
            except Exception as exc:  # reported, and failed, by the test
                row["error"] = f"{type(exc).__name__}: {exc}"[:4000]
            results.append(row)
    return results


def table(results):
    lines = ["| kernel | target | registers | blocks/SM (occupancy) | shared bytes (static + dynamic) | spills |",
             "|---|---|---|---|---|---|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['name']} | {r['target']} | ERROR | | | {r['error'][:80]} |")
            continue
        occ = r["blocks_per_sm"] * r["threads"] / 2048
        lines.append(f"| {r['name']} | {r['target']} | {r['registers']} | {r['blocks_per_sm']} "
                     f"({occ:.0%}) | {r['smem']} + {r['dynamic_smem']} | "
                     f"{r['spill_stores']}/{r['spill_loads']} |")
    return "\n".join(lines)


def summary(results):
    """One row per layer kernel, order, dtype and target: the range over its tile variants."""
    groups = {}
    for r in results:
        if "error" in r:
            continue
        w = r["name"].split()
        key = (w[0], w[1], w[2], r["target"]) if w[1].startswith("k=") else (w[0], "", w[1], r["target"])
        groups.setdefault(key, []).append(r)
    lines = ["| kernel | k | dtype | target | variants | registers | blocks/SM (occupancy) | "
             "max shared bytes | spills |", "|---|---|---|---|---|---|---|---|---|"]
    for (kind, k, dt, target), rows in sorted(groups.items()):
        regs = [r["registers"] for r in rows]
        blocks = sorted(r["blocks_per_sm"] for r in rows)
        threads = rows[0]["threads"]
        occ = [b * threads / 2048 for b in (blocks[0], blocks[-1])]
        smem = max(r["smem"] + r["dynamic_smem"] for r in rows)
        spills = sum(r["spill_stores"] + r["spill_loads"] for r in rows)
        lines.append(f"| {kind} | {k[2:]} | {dt} | {target} | {len(rows)} | {min(regs)}-{max(regs)} | "
                     f"{blocks[0]}-{blocks[-1]} x {threads} ({occ[0]:.0%}-{occ[1]:.0%}) | {smem} | "
                     f"{spills} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--table", action="store_true", help="print a markdown table")
    ap.add_argument("--only", nargs="*", help="compile only kernels whose name contains one of these")
    ap.add_argument("--shard", default="0/1", help="S/N: compile every N-th variant from the S-th")
    ap.add_argument("--summary", action="store_true", help="with --table/--render: one row per kernel")
    ap.add_argument("--render", action="store_true",
                    help="print the table of RESULT lines read from standard input (shards' output)")
    args = ap.parse_args(argv)
    if args.render:
        rows = [json.loads(line[7:]) for line in sys.stdin if line.startswith("RESULT ")]
        print(summary(rows) if args.summary else table(rows))
        return 0
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"):
        raise SystemExit("unset NUMBA_ENABLE_CUDASIM: the simulator does not compile")
    s, n = (int(v) for v in args.shard.split("/"))
    results = compile_all(args.only, (s, n))
    if args.table:
        print(summary(results) if args.summary else table(results))
    else:
        for r in results:
            print("RESULT " + json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.exit(main())
