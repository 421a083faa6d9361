"""How fast can one loss_and_grad of a narrow KAN be in Numba on this machine? A floor.

A script, not a test, and not numkan code: a skeleton of the work every evaluation
of [2, 5, 1], [4, 4, 2, 1] and [100, 1, 1] must do, with everything a library
needs beyond that work left out, timed beside numkan's ``loss_and_grad`` and
``fit``'s objective (``train.Objective``) on the same model and data.

What the skeleton keeps (per sample and input): the span, the k+1 = 4 cubic bases,
silu and its derivative (``_vexp``'s vectorised exp), per output 4 coefficient
gathers; the loss; the backward: the input gradient from the same gathers kept
from the forward, and 4 scattered additions per output into the coefficient
gradient. Laid out as numkan's narrow kernels are (a tile of 64 samples, lanes
innermost, so LLVM vectorises every loop but the scattered additions), the whole
network in one compiled call, with four copies of the gradient (lane mod 4) so
that consecutive samples on neighbouring spans do not wait on each other's
additions. Two versions: ``skeleton`` for any width (loops over the layers), and
``skeleton_251``, [2, 5, 1] written out by hand (constant trip counts, stack
scratch), the fastest of the variants tried.

What it leaves out: knots that are not uniform (grid updates make them so: numkan
finds the span in a table and checks it against the knots), k other than 3,
float32, masks, scale_base and scale_sp and their gradients, non-finite inputs and
parameters (numkan checks and drops them as the reference does), symbolic edges and
product nodes, and all Python (checking the user's arrays, the gradients' dict).

So its time is a floor for a loss_and_grad in this style, the style of numkan's
kernels: what is left when every check and every generalisation is taken away.
It checks its own loss and coefficient gradients against numkan's on a model made
to match (scale_base = scale_sp = mask = 1, default uniform knots), and reports
ns per (sample, input) as bench_fit.py does: time / (samples x inputs of all layers).

    python benchmarks/bench_floor.py [--rounds 7] [--grids 5,50]
"""
import argparse
import datetime
import os
import platform
import statistics
import time

import numba
import numpy as np
from numba import njit

import numkan as nk
from numkan import train
from numkan.kernels._numba import local_array, serial_part
from numkan.kernels._vexp import vexp

T = 64        # samples per tile (lanes)
COPIES = 4    # copies of the coefficient gradient, by lane mod 4
_T4 = 4 * T


@njit(inline="always", fastmath={"contract"}, error_model="numpy")
def _span_bases(xv, lo, inv_h, nspan):
    """x's span j on the uniform knots, u = w in [0, 1), 1.0 if x is inside the knots
    (else 0.0), and the 4 cubic local bases (times that flag)."""
    g = (xv - lo) * inv_h
    inside = np.float64((g >= 0.0) & (g < nspan))
    j = np.int64(min(max(g, 0.0), nspan - 1.0))
    w = max(g, 0.0) - j
    v = 1.0 - w
    w2 = w * w
    w3 = w2 * w
    return (j, w, inside, inside * (v * v * v / 6.0), inside * ((3.0 * w3 - 6.0 * w2 + 4.0) / 6.0),
            inside * ((-3.0 * w3 + 3.0 * w2 + 3.0 * w + 1.0) / 6.0), inside * (w3 / 6.0))


@njit(inline="always", fastmath={"contract"}, error_model="numpy")
def _slope(w, inside, inv_h, c0, c1, c2, c3):
    """ds/dx of the spline with local coefficients c0..c3 at span variable w."""
    v = 1.0 - w
    return inside * inv_h * (-0.5 * v * v * c0 + (1.5 * w * w - 2.0 * w) * c1 + (-1.5 * w * w + w + 0.5) * c2
                             + 0.5 * w * w * c3)


@serial_part(fastmath={"contract"}, error_model="numpy", cache=True)
def skeleton(x, target, coefs, grads, offs, lo, inv_h, nspan, A, D, J, IN, BB, W, SG, SL, SD):
    """Loss (sum of squares) of the network and, into grads[l] (COPIES, I, n-1+k, O),
    the coefficient gradients of d(sum of squares / (B O))/dcoef, on padded
    coefficients coefs[l] (I, n-1+k, O): padded index j + s for local basis s of span j.
    Scratch rows: one per node of every layer (offs[l] = the first of layer l)."""
    B = x.shape[0]
    L = len(coefs)
    nout = offs[L + 1] - offs[L]
    for l in range(L):
        grads[l][...] = 0.0
    loss = 0.0
    B4 = local_array(_T4, np.float64)
    for t0 in range(0, B, T):
        nb = min(T, B - t0)
        for i in range(x.shape[1]):
            for u in range(T):
                A[i, u] = x[t0 + min(u, nb - 1), i]
        # forward, layer by layer, keeping each input's span, bases, b'(x) and s'(x)
        for l in range(L):
            c = coefs[l]
            I, _, O = c.shape
            a0, a1 = offs[l], offs[l + 1]
            for o in range(O):
                for u in range(T):
                    A[a1 + o, u] = 0.0
            for i in range(I):
                r = a0 + i
                if O == 1 and l > 0:  # one output: the whole edge in one pass over the lanes
                    for u in range(T):
                        xv = A[r, u]
                        j, w, inside, b0, b1, b2, b3 = _span_bases(xv, lo, inv_h, nspan)
                        J[r, u] = j
                        BB[r, 0, u] = b0
                        BB[r, 1, u] = b1
                        BB[r, 2, u] = b2
                        BB[r, 3, u] = b3
                        sg = 1.0 / (1.0 + vexp(-xv))
                        SG[r, u] = sg * (1.0 + xv * (1.0 - sg))
                        c0, c1, c2, c3 = c[i, j, 0], c[i, j + 1, 0], c[i, j + 2, 0], c[i, j + 3, 0]
                        A[a1, u] += xv * sg + c0 * b0 + c1 * b1 + c2 * b2 + c3 * b3
                        SD[r, 0, u] = _slope(w, inside, inv_h, c0, c1, c2, c3)
                    continue
                for u in range(T):
                    xv = A[r, u]
                    j, w, inside, b0, b1, b2, b3 = _span_bases(xv, lo, inv_h, nspan)
                    J[r, u] = j
                    IN[r, u] = inside
                    W[r, u] = w
                    BB[r, 0, u] = b0
                    BB[r, 1, u] = b1
                    BB[r, 2, u] = b2
                    BB[r, 3, u] = b3
                    sg = 1.0 / (1.0 + vexp(-xv))
                    SL[r, u] = xv * sg
                    SG[r, u] = sg * (1.0 + xv * (1.0 - sg))
                for o in range(O):
                    if l == 0:  # no input gradient: the forward alone
                        for u in range(T):
                            j = J[r, u]
                            A[a1 + o, u] += (SL[r, u] + c[i, j, o] * BB[r, 0, u] + c[i, j + 1, o] * BB[r, 1, u]
                                             + c[i, j + 2, o] * BB[r, 2, u] + c[i, j + 3, o] * BB[r, 3, u])
                        continue
                    for u in range(T):
                        j = J[r, u]
                        c0, c1, c2, c3 = c[i, j, o], c[i, j + 1, o], c[i, j + 2, o], c[i, j + 3, o]
                        A[a1 + o, u] += (SL[r, u] + c0 * BB[r, 0, u] + c1 * BB[r, 1, u] + c2 * BB[r, 2, u]
                                         + c3 * BB[r, 3, u])
                        SD[r, o, u] = _slope(W[r, u], IN[r, u], inv_h, c0, c1, c2, c3)  # s'(x), same gathers
        # the loss and dy
        a = offs[L]
        for o in range(nout):
            for u in range(T):
                d = A[a + o, u] - target[t0 + min(u, nb - 1), o]
                D[a + o, u] = 2.0 * d / (B * nout) if u < nb else 0.0
                loss += d * d if u < nb else 0.0
        # backward, last layer first
        for l in range(L - 1, -1, -1):
            c, gr = coefs[l], grads[l]
            I, _, O = c.shape
            a0, a1 = offs[l], offs[l + 1]
            for i in range(I):
                r = a0 + i
                if l > 0:
                    for u in range(T):
                        D[r, u] = 0.0
                    for o in range(O):
                        for u in range(T):
                            D[r, u] += D[a1 + o, u] * (SG[r, u] + SD[r, o, u])
                for u in range(T):
                    for s in range(4):
                        B4[s * T + u] = BB[r, s, u]
                for u in range(nb):
                    j = J[r, u]
                    q = u & (COPIES - 1)
                    for o in range(O):
                        d = D[a1 + o, u]
                        gr[q, i, j, o] += d * B4[u]
                        gr[q, i, j + 1, o] += d * B4[T + u]
                        gr[q, i, j + 2, o] += d * B4[2 * T + u]
                        gr[q, i, j + 3, o] += d * B4[3 * T + u]
    return loss


_T2, _T5, _T8, _T20 = 2 * T, 5 * T, 8 * T, 20 * T


@serial_part(fastmath={"contract"}, error_model="numpy", cache=True)
def skeleton_251(x, target, c1, c2, g1, g2, lo, inv_h, nspan):
    """``skeleton`` written out by hand for [2, 5, 1] alone: every loop's trip count a
    constant, the scratch on the stack, the last layer's edge in one pass. g1 and g2
    (COPIES, I, n-1+k, O) as skeleton's grads; only the last layer's additions use the
    copies (the first layer's five outputs already interleave theirs), so g1[1:] stay 0."""
    B = x.shape[0]
    g1[...] = 0.0
    g2[...] = 0.0
    J1, BB1 = local_array(_T2, np.int64), local_array(_T8, np.float64)
    J2, BB2 = local_array(_T5, np.int64), local_array(_T20, np.float64)
    SD, SG = local_array(_T5, np.float64), local_array(_T5, np.float64)
    H, DH = local_array(_T5, np.float64), local_array(_T5, np.float64)
    Y, DY, SL = local_array(T, np.float64), local_array(T, np.float64), local_array(T, np.float64)
    loss = 0.0
    for t0 in range(0, B, T):
        nb = min(T, B - t0)
        for u in range(_T5):
            H[u] = 0.0
        for i in range(2):
            for u in range(T):
                xv = x[t0 + min(u, nb - 1), i]
                j, w, inside, b0, b1, b2, b3 = _span_bases(xv, lo, inv_h, nspan)
                J1[i * T + u] = j
                BB1[(4 * i) * T + u] = b0
                BB1[(4 * i + 1) * T + u] = b1
                BB1[(4 * i + 2) * T + u] = b2
                BB1[(4 * i + 3) * T + u] = b3
                SL[u] = xv / (1.0 + vexp(-xv))
            for o in range(5):
                for u in range(T):
                    j = J1[i * T + u]
                    H[o * T + u] += (SL[u] + c1[i, j, o] * BB1[(4 * i) * T + u] + c1[i, j + 1, o] * BB1[(4 * i + 1) * T + u]
                                     + c1[i, j + 2, o] * BB1[(4 * i + 2) * T + u]
                                     + c1[i, j + 3, o] * BB1[(4 * i + 3) * T + u])
        for u in range(T):
            Y[u] = 0.0
        for i in range(5):
            for u in range(T):
                xv = H[i * T + u]
                j, w, inside, b0, b1, b2, b3 = _span_bases(xv, lo, inv_h, nspan)
                J2[i * T + u] = j
                BB2[(4 * i) * T + u] = b0
                BB2[(4 * i + 1) * T + u] = b1
                BB2[(4 * i + 2) * T + u] = b2
                BB2[(4 * i + 3) * T + u] = b3
                sg = 1.0 / (1.0 + vexp(-xv))
                SG[i * T + u] = sg * (1.0 + xv * (1.0 - sg))
                a0, a1, a2, a3 = c2[i, j, 0], c2[i, j + 1, 0], c2[i, j + 2, 0], c2[i, j + 3, 0]
                Y[u] += xv * sg + a0 * b0 + a1 * b1 + a2 * b2 + a3 * b3
                SD[i * T + u] = _slope(w, inside, inv_h, a0, a1, a2, a3)
        for u in range(T):
            d = Y[u] - target[t0 + min(u, nb - 1), 0]
            loss += d * d if u < nb else 0.0
            DY[u] = 2.0 * d / B if u < nb else 0.0
        for i in range(5):
            for u in range(T):
                DH[i * T + u] = DY[u] * (SG[i * T + u] + SD[i * T + u])
            for u in range(nb):
                j = J2[i * T + u]
                d = DY[u]
                q = u & (COPIES - 1)
                g2[q, i, j, 0] += d * BB2[(4 * i) * T + u]
                g2[q, i, j + 1, 0] += d * BB2[(4 * i + 1) * T + u]
                g2[q, i, j + 2, 0] += d * BB2[(4 * i + 2) * T + u]
                g2[q, i, j + 3, 0] += d * BB2[(4 * i + 3) * T + u]
        for i in range(2):
            for u in range(nb):
                j = J1[i * T + u]
                b0, b1 = BB1[(4 * i) * T + u], BB1[(4 * i + 1) * T + u]
                b2, b3 = BB1[(4 * i + 2) * T + u], BB1[(4 * i + 3) * T + u]
                for o in range(5):
                    d = DH[o * T + u]
                    g1[0, i, j, o] += d * b0
                    g1[0, i, j + 1, o] += d * b1
                    g1[0, i, j + 2, o] += d * b2
                    g1[0, i, j + 3, o] += d * b3
    return loss


class Floor:
    """The skeleton's arguments for a numkan model (uniform knots, k = 3, one grid)."""

    def __init__(self, model):
        t = model.layers[0].knots[0]
        n = t.shape[0]
        self.k = model.layers[0].k
        if self.k != 3 or any(not np.array_equal(L.knots, np.broadcast_to(t, L.knots.shape)) or L.k != 3
                              for L in model.layers):
            raise ValueError("the skeleton needs k = 3 and the same knots on every edge")
        if not np.allclose(np.diff(t), t[1] - t[0], rtol=1e-12, atol=0.0):
            raise ValueError(f"the skeleton needs uniform knots, got {t}")
        self.lo, self.inv_h, self.nspan = float(t[0]), float((n - 1) / (t[-1] - t[0])), float(n - 1)
        self.coefs = tuple(self._padded(L.coef) for L in model.layers)
        self.grads = tuple(np.zeros((COPIES,) + c.shape) for c in self.coefs)
        width = [model.layers[0].in_dim] + [L.out_dim for L in model.layers]
        self.offs = np.cumsum([0] + width).astype(np.int64)
        rows, maxo = int(self.offs[-1]), max(width)
        self.A, self.D, self.IN, self.W, self.SG, self.SL = (np.zeros((rows, T)) for _ in range(6))
        self.J = np.zeros((rows, T), np.int64)
        self.BB = np.zeros((rows, 4, T))
        self.SD = np.zeros((rows, maxo, T))

    def _padded(self, coef):
        I, K, O = coef.shape
        c = np.zeros((I, K + 2 * self.k, O))
        c[:, self.k:self.k + K] = coef
        return c

    def by_hand(self, x, y):
        """``skeleton_251`` (a [2, 5, 1] model only)."""
        return skeleton_251(x, y, self.coefs[0], self.coefs[1], self.grads[0], self.grads[1], self.lo, self.inv_h,
                            self.nspan)

    def __call__(self, x, y):
        return skeleton(x, y, self.coefs, self.grads, self.offs, self.lo, self.inv_h, self.nspan, self.A,
                        self.D, self.J, self.IN, self.BB, self.W, self.SG, self.SL, self.SD)

    def dcoef(self, l):
        g = self.grads[l].sum(axis=0)
        return g[:, self.k:g.shape[1] - self.k]


def best_of(fn, calls, rounds):
    """(fastest, median) seconds per call over ``rounds`` rounds of ``calls`` calls."""
    fn()
    per = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        per.append((time.perf_counter() - t0) / calls)
    return min(per), statistics.median(per)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--grids", default="5,50")
    args = ap.parse_args()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average {load:.1f}; "
          f"numkan {nk.__version__}, numba {numba.__version__}. float64, k = 3, 1000 samples, fastest of "
          f"{args.rounds} rounds (median in brackets), us and ns per (sample, input). Each skeleton's loss and coefficient gradients agree with numkan's to "
          f"1e-9 relative (checked before it is timed).\n")
    print("| width | G | skeleton us | ns/(s,i) | by hand us | ns/(s,i) "
          "| loss_and_grad us | ns/(s,i) | objective us | ns/(s,i) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    rng = np.random.default_rng(0)
    for width in ([2, 5, 1], [4, 4, 2, 1], [100, 1, 1]):
        for G in map(int, args.grids.split(",")):
            x = rng.uniform(-1, 1, (1000, width[0]))
            y = rng.uniform(-1, 1, (1000, width[-1]))
            model = nk.KAN(width, grid=G, k=3, seed=0)
            for L in model.layers:
                L.scale_base[...] = 1.0
                L.scale_sp[...] = 1.0
                L.coef[...] = rng.normal(0.0, 0.3, L.coef.shape)
            fl = Floor(model)
            loss, grads = model.loss_and_grad(x, y)
            refs = [grads[f"layers.{l}.coef"] for l in range(len(model.layers))]
            si = 1000 * sum(width[:-1])
            calls = max(5, int(2e5 // si))
            cell = lambda t: f"{t[0] * 1e6:.0f} ({t[1] * 1e6:.0f}) | {t[0] / si * 1e9:.1f}"
            sks = []
            for run in (fl, fl.by_hand if width == [2, 5, 1] else None):
                if run is None:
                    sks.append("— | —")
                    continue
                check(fl, run, x, y, loss, refs)
                sks.append(cell(best_of(lambda: run(x, y), calls, args.rounds)))
            obj = train.Objective(model, x, y, 0.0, None)
            t_lag = best_of(lambda: model.loss_and_grad(x, y), calls, args.rounds)
            t_obj = best_of(obj, calls, args.rounds)
            print(f"| {width} | {G} | {' | '.join(sks)} | {cell(t_lag)} | {cell(t_obj)} |", flush=True)


def check(fl, run, x, y, loss, refs):
    """The largest relative error of a skeleton's loss and coefficient gradients against
    numkan's; raises if it is not at rounding level (the timing would be of other maths)."""
    err = abs(run(x, y) / y.size - loss) / abs(loss)
    for l, ref in enumerate(refs):
        err = max(err, float(np.max(np.abs(fl.dcoef(l) - ref)) / np.max(np.abs(ref))))
    if not err < 1e-9:
        raise AssertionError(f"the skeleton computes something else than numkan: relative error {err:.1e}")
    return err

if __name__ == "__main__":
    main()
