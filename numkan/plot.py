"""``model.plot``: the network as a figure, one small curve per edge.

Nodes sit in rows, inputs at the bottom. Between two rows every live edge
(i -> o) has a small panel with its learned function phi[i,o] drawn over the
range its input takes on the data; a line joins node i to the panel and the
panel to node o. Opacity is tanh(beta * edge score) (``attribute``), so
unimportant edges fade; symbolic edges are coloured and labelled with their
function; pruned edges are not drawn. matplotlib is imported only here, and
only when a plot is asked for.
"""
import numpy as np

from .activations import edge_outputs, host_params, model_data
from .prune import scores

SPLINE_COLOR = "black"
SYMBOLIC_COLOR = "#c0392b"  # brick red


def _pyplot():
    try:
        import matplotlib
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError("model.plot needs matplotlib, which could not be imported "
                          f"({exc}); install it with  pip install matplotlib  "
                          "(or pip install 'numkan[plot]')") from None
    return matplotlib, plt


def _positive(name, value):
    import numbers
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value) \
            or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _labels(name, values, n):
    if values is None:
        return None
    if isinstance(values, str) or not hasattr(values, "__len__") or len(values) != n:
        raise ValueError(f"{name} must be a list of {n} labels, got {values!r}")
    return [str(t) for t in values]


def plot(self, path=None, beta=3, in_vars=None, out_vars=None, title=None, x=None, dpi=200,
         max_panels=48, folder=None, scale=1.0, tick=False, sample=False, mask=True,
         metric="backward", varscale=1.0):
    """Draw the network; returns the matplotlib Figure and saves it to ``path`` when given.

    beta : opacity of an edge is tanh(beta * score), score from ``attribute``.
    in_vars, out_vars : labels of the inputs and outputs (strings; LaTeX such
        as ``"$x_1$"`` works); default ``x_1 .. x_n`` (original input numbers
        after ``prune_input``) and ``y_1 ..``.
    x : data for the curves and the scores (default: the model's data, ``model.cache_data``).
    max_panels : layers with more live edges than this draw the edges as
        plain lines without panels, so large models stay readable.

    pykan's keywords: ``folder`` saves the figure as ``folder/kan.png`` (the
    folder is made when missing; pykan writes one image per edge there);
    ``scale`` multiplies the figure size; ``tick`` shows the panels' axis
    ticks; ``sample`` marks the data points on each curve; ``varscale``
    multiplies the size of the input and output labels; ``mask=True``
    (pruned edges are not drawn) is the only behaviour, and ``metric`` is
    "backward", the scores of ``attribute``.

    Nothing in the model changes: the scores are computed for the plot
    (``numkan.prune.scores``) and not kept.
    """
    import numbers
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not np.isfinite(beta) or beta < 0:
        raise ValueError(f"beta must be a finite number >= 0, got {beta!r}")
    ids = self.input_id
    default_in = [f"$x_{{{int(t) + 1}}}$" for t in (range(self.width[0]) if ids is None else ids)]
    in_vars = _labels("in_vars", in_vars, self.width[0]) or default_in
    out_vars = _labels("out_vars", out_vars, self.width[-1]) or [f"$y_{{{o + 1}}}$" for o in
                                                                  range(self.width[-1])]
    if title is not None and not isinstance(title, str):
        raise ValueError(f"title must be a string or None, got {title!r}")
    scale = _positive("scale", scale)
    varscale = _positive("varscale", varscale)
    for name, flag in (("tick", tick), ("sample", sample)):
        if not isinstance(flag, (bool, np.bool_)):
            raise ValueError(f"{name} must be True or False, got {flag!r}")
    if mask is not True:
        raise ValueError(f"mask must be True (pruned edges are never drawn), got {mask!r}")
    if metric != "backward":
        raise ValueError(f"metric must be 'backward' (the scores of attribute), got {metric!r}")
    if folder is not None:
        import os
        if path is not None:
            raise ValueError("pass path or folder, not both")
        folder = os.fspath(folder)
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, "kan.png")
    matplotlib, plt = _pyplot()

    xh = model_data(self, x, min_rows=2)
    _, edge_scores, xs, _ = scores(self, xh)
    L = len(self.layers)

    # which edges are live, per layer
    live = []
    for layer in self.layers:
        mask = np.asarray(layer.backend.to_host(layer.mask))
        live.append([(i, o) for i in range(layer.in_dim) for o in range(layer.out_dim)
                     if mask[i, o] != 0 or layer.symbolic_mask[i, o] != 0])
    panels = [len(e) if len(e) <= max_panels else 0 for e in live]
    n_cols = max(max(self.width), max(panels + [1]))

    # geometry in inches: a column per panel (or node), a band per layer
    col_w, panel_w, panel_h = 0.95, 0.62, 0.5
    band_h = 2.3 + 0.06 * n_cols  # wide layers get taller bands: a readable aspect ratio
    margin_x, margin_bot, margin_top = 0.45, 0.55, 0.55 + (0.35 if title else 0.0)
    W = 2 * margin_x + n_cols * col_w
    H = margin_bot + margin_top + L * band_h
    fig = plt.figure(figsize=(W * scale, H * scale), dpi=dpi)
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set_xlim(0, W)
    ax.set_ylim(0, H)
    ax.axis("off")
    to_fig = lambda px, py: (px / W, py / H)

    def row_x(n):  # centres of n items spread over the columns
        span = n_cols * col_w
        return margin_x + (np.arange(n) + 0.5) * span / n

    node_y = [margin_bot + l * band_h for l in range(L + 1)]
    node_x = [row_x(w) for w in self.width]
    node_r = 0.055

    for l, layer in enumerate(self.layers):
        score = edge_scores[l]
        y0, y1 = node_y[l] + node_r, node_y[l + 1] - node_r
        into = layer.node_of  # the node each edge output feeds (a product node takes several)
        edges = live[l]
        xl = xs[l]
        host = host_params(layer)
        if panels[l]:
            px = row_x(len(edges))
            py = 0.5 * (y0 + y1)  # panel centre height
        for n, (i, o) in enumerate(edges):
            sym = layer.symbolic_mask[i, o] != 0
            color = SYMBOLIC_COLOR if sym else SPLINE_COLOR
            alpha = float(np.tanh(beta * score[i, o])) if beta > 0 else 1.0
            alpha = max(alpha, 0.04)
            if not panels[l]:
                ax.plot([node_x[l][i], node_x[l + 1][into[o]]], [y0, y1], color=color, alpha=alpha, lw=0.8)
                continue
            bx, by = px[n], py
            ax.plot([node_x[l][i], bx], [y0, by - panel_h / 2], color=color, alpha=alpha, lw=0.9,
                    solid_capstyle="round")
            ax.plot([bx, node_x[l + 1][into[o]]], [by + panel_h / 2, y1], color=color, alpha=alpha, lw=0.9,
                    solid_capstyle="round")
            # the edge's function over its input range
            order = np.argsort(xl[:, i], kind="stable")
            xi = xl[order, i]
            yi = edge_outputs(layer, xl[order], i, host)[:, o]
            left, bottom = to_fig(bx - panel_w / 2, by - panel_h / 2)
            inset = fig.add_axes([left, bottom, panel_w / W, panel_h / H])
            inset.plot(xi, yi, color=color, alpha=alpha, lw=1.3)
            if sample:
                inset.scatter(xi, yi, s=2, color=color, alpha=alpha, lw=0)
            if tick:
                inset.tick_params(labelsize=5, length=2, pad=1)
            else:
                inset.set_xticks([])
                inset.set_yticks([])
            inset.patch.set_alpha(0.0)
            for s in inset.spines.values():
                s.set_edgecolor(color)
                s.set_alpha(alpha)
                s.set_linewidth(0.8)
            lo, hi = float(np.min(yi)), float(np.max(yi))
            pad = 0.12 * (hi - lo) if hi > lo else max(abs(hi), 1.0) * 0.1
            inset.set_ylim(lo - pad, hi + pad)
            if sym:
                inset.text(0.05, 0.93, layer.symbolic_names[i][o], transform=inset.transAxes,
                           ha="left", va="top", fontsize=7, color=color, alpha=max(alpha, 0.6),
                           bbox=dict(boxstyle="square,pad=0.1", fc="white", ec="none", alpha=0.8))

    for l in range(L + 1):
        prods = range(self.width[l] - len(self.mult_arity[l]), self.width[l])
        for n in prods:  # multiplication nodes: a white disc with a cross
            ax.text(node_x[l][n], node_y[l], "×", ha="center", va="center", fontsize=9, zorder=6)
        ax.scatter(node_x[l], np.full(len(node_x[l]), node_y[l]), s=55, zorder=5,
                   color=["white" if n in prods else "black" for n in range(self.width[l])],
                   edgecolors=["black" if n in prods else "white" for n in range(self.width[l])],
                   linewidths=0.8)
    for xv, lab in zip(node_x[0], in_vars):
        ax.text(xv, node_y[0] - 0.2, lab, ha="center", va="top", fontsize=11 * varscale)
    for xv, lab in zip(node_x[L], out_vars):
        ax.text(xv, node_y[L] + 0.2, lab, ha="center", va="bottom", fontsize=11 * varscale)
    if title:
        ax.text(W / 2, H - 0.2, title, ha="center", va="top", fontsize=12)
    if path is not None:
        fig.savefig(path, dpi=dpi, bbox_inches="tight", facecolor="white")
    return fig
