"""``noise_panel``: grow the batch or decay the LR. Sliders for the milestones, γ, the starting lr and
batch → SGD's noise scale g(t) of both runs (they coincide) and their cumulative updates.

    >>> from labkit.widgets import noise_panel
    >>> panel = noise_panel()        # 12 epochs of MNIST (n = 60 000), SGD with momentum 0.9
    >>> panel                        # in Jupyter: live ipywidgets; in the built book: static HTML + JS

Like ``trajectory_panel`` it has two faces in one ``_repr_mimebundle_``: ipywidgets controls that call
``labkit.lr_schedules.step_pair`` in the kernel, and a ``text/html`` fragment with every grid point's
``step_pair`` precomputed as JSON, drawn by vanilla JavaScript as inline SVG (nothing is fetched).
Chapter: Progressive batching and LR coupling (grow the batch or decay the LR).
"""
from __future__ import annotations

import html
import itertools
import math
from typing import Any, Mapping, Sequence

from labkit.checks import check_float, check_int
from labkit.lr_schedules import PAIR_RUNS, step_pair
from labkit.widgets.base import GridPanel

MILESTONES = ((6, 9), (4, 8), (3, 6, 9), (8,))   # finished epochs after which lr·γ (or batch/γ) applies
GAMMAS = (0.5, 0.2, 0.1)
LRS = (0.01, 0.05, 0.1)
BATCHES = (32, 64, 128, 256)
SERIES = ("lr", "batch", "g", "g_exact", "cum_steps")   # step_pair columns the static view carries
LABELS = {"milestones": "milestones (epochs)", "gamma": "γ", "lr": "starting lr", "batch": "starting B"}


class NoisePanel(GridPanel):
    """A grid of (milestones, γ, lr, batch) and ``step_pair`` at every point; build it with
    ``noise_panel``. ``panel.pair(gamma=0.2)`` is the live path (a fresh ``step_pair`` table);
    ``panel.series(gamma=0.2)`` reads the precomputed point the static view draws."""

    kind = "noise"
    tag = "noise-scale"

    def __init__(self, epochs: int = 12, n: int = 60_000, momentum: float = 0.9, *,
                 milestones: Sequence[Sequence[int]] = MILESTONES, gamma: Sequence[float] = GAMMAS,
                 lr: Sequence[float] = LRS, batch: Sequence[int] = BATCHES,
                 initial: Mapping[str, Any] | None = None, title: str | None = None):
        self.epochs = check_int("epochs", epochs, low=2, high=200)
        self.n = check_int("n", n, low=1)
        self.momentum = check_float("momentum", momentum, low=0.0, high=1.0, high_open=True)
        self.options = {"milestones": _options("milestones", [tuple(m) for m in milestones]),
                        "gamma": _options("gamma", gamma), "lr": _options("lr", lr),
                        "batch": _options("batch", batch)}
        start = {"milestones": self.options["milestones"][0], "gamma": self.options["gamma"][-1],
                 "lr": self.options["lr"][len(self.options["lr"]) // 2],
                 "batch": self.options["batch"][len(self.options["batch"]) // 2]}
        self.initial = start = self._start(start, initial)
        self.points = [self._compute(dict(zip(self.options, values)))
                       for values in itertools.product(*self.options.values())]
        if isinstance(self.points[self._index(start)], str):
            raise ValueError(f"the panel's initial point {start} is invalid: {self.points[self._index(start)]}")
        self.title = title or (f"Decay the LR or grow the batch: noise scale and updates over {self.epochs} "
                               f"epochs (n = {self.n}, momentum {self.momentum:g})")

    # -- the grid ---------------------------------------------------------------------------------------------
    def _value(self, name: str, value: Any) -> Any:
        return tuple(value) if name == "milestones" else value         # milestones come as lists too

    def pair(self, **chosen: Any):
        """``step_pair`` at a point (``chosen`` overrides the initial values): the live path."""
        p = self._chosen(chosen)
        return step_pair(self.epochs, p["milestones"], p["gamma"], p["lr"], p["batch"], self.n, self.momentum)

    def series(self, **chosen: Any) -> dict[str, list[list[float]]]:
        """The precomputed point: ``{column: [decay LR values, grow batch values]}`` per epoch
        (``ValueError`` with ``step_pair``'s message where the grown batch exceeds n)."""
        point = self.points[self._index(self._chosen(chosen))]
        if isinstance(point, str):
            raise ValueError(point)
        return point

    def _compute(self, p: Mapping[str, Any]) -> dict[str, list[list[float]]] | str:
        try:
            table = step_pair(self.epochs, p["milestones"], p["gamma"], p["lr"], p["batch"], self.n, self.momentum)
        except ValueError as err:
            return str(err)
        runs = [table[table.run == run] for run in PAIR_RUNS]
        return {col: [[_short(v) for v in frame[col]] for frame in runs] for col in SERIES}

    # -- views ------------------------------------------------------------------------------------------------
    def data(self) -> dict[str, Any]:
        """Everything the static view needs, as JSON-ready plain data."""
        valid = [p for p in self.points if not isinstance(p, str)]
        gs = [v for p in valid for col in ("g", "g_exact") for run in p[col] for v in run if v > 0]
        return {
            "v": 1, "kind": "noise-scale", "title": self.title, "epochs": self.epochs, "n": self.n,
            "momentum": self.momentum, "runs": list(PAIR_RUNS),
            "controls": [{"name": k, "label": LABELS[k], "kind": "choice" if k == "milestones" else "slider",
                          "values": [", ".join(map(str, v)) for v in vals] if k == "milestones" else list(vals),
                          "size": len(vals), "init": vals.index(self.initial[k])} for k, vals in self.options.items()],
            "strides": self.strides,
            "gmin": 10 ** math.floor(math.log10(min(gs))), "gmax": 10 ** math.ceil(math.log10(max(gs))),
            "points": [{"error": p} if isinstance(p, str) else p for p in self.points],
        }

    def _view(self) -> tuple[str, str]:
        return NOISE_JS, NOISE_CSS

    def _build_widget(self):
        return _noise_widget(self)

    def __repr__(self) -> str:
        sizes = self._controls()
        bad = sum(isinstance(p, str) for p in self.points)
        return (f"NoisePanel(epochs={self.epochs}, n={self.n}, momentum={self.momentum:g}; controls: {sizes}; "
                f"{len(self.points)} grid points, {bad} invalid)")


def noise_panel(epochs: int = 12, n: int = 60_000, momentum: float = 0.9, *,
                milestones: Sequence[Sequence[int]] = MILESTONES, gamma: Sequence[float] = GAMMAS,
                lr: Sequence[float] = LRS, batch: Sequence[int] = BATCHES,
                initial: Mapping[str, Any] | None = None, title: str | None = None) -> NoisePanel:
    """Sliders for the milestones, γ, the starting lr and batch → g(t) and the cumulative updates of the
    "decay LR" and "grow batch" runs of ``labkit.lr_schedules.step_pair``.

    Args:
        epochs, n, momentum: fixed for the panel (defaults: 12 epochs of MNIST's 60 000 examples, SGD with
            momentum 0.9, as ``labkit train`` uses).
        milestones: the options of the milestones dropdown, each a tuple of finished epochs.
        gamma, lr, batch: the options of the sliders.
        initial: the values to start from (default: the first milestones, the smallest γ, the middle lr
            and batch).

    Example::

        noise_panel(epochs=12, n=60_000, momentum=0.9, gamma=[0.5, 0.1])
    """
    return NoisePanel(epochs, n, momentum, milestones=milestones, gamma=gamma, lr=lr, batch=batch,
                      initial=initial, title=title)


def plot_pair(table, title: str | None = None, figsize=(9.0, 3.4)):
    """``step_pair``'s table drawn: g per epoch (log scale; the grown batch's exact g dotted) and the
    cumulative updates of both runs. Returns the matplotlib figure."""
    import matplotlib.pyplot as plt

    fig, (gax, sax) = plt.subplots(1, 2, figsize=figsize, layout="constrained")
    for i, (run, frame) in enumerate(table.groupby("run", sort=False)):
        epochs = list(frame.epoch)
        edges = [epochs[0] - 1, *epochs]
        gax.stairs(list(frame.g), edges, color=f"C{i}", lw=2, ls="-" if i == 0 else "--", label=f"{run}: g")
        if i:
            gax.stairs(list(frame.g_exact), edges, color=f"C{i}", lw=1, ls=":", label=f"{run}: exact g")
        sax.plot([edges[0], *epochs], [0, *frame.cum_steps], color=f"C{i}", lw=2, marker=".", label=run)
    gax.set(yscale="log", xlabel="epoch", ylabel="noise scale g")
    sax.set(xlabel="epoch", ylabel="updates so far")
    for ax in (gax, sax):
        ax.grid(alpha=0.25)
        ax.legend(frameon=False, fontsize="small")
    if title:
        fig.suptitle(title, fontsize="medium")
    return fig


def pair_readout(table) -> str:
    """One line about a ``step_pair`` table: updates of both runs, the final batch, the last epoch's g."""
    last = table.groupby("run", sort=False).last()
    decay, grow = (last.loc[run] for run in PAIR_RUNS)
    return (f"updates: {PAIR_RUNS[0]} {int(decay.cum_steps)}, {PAIR_RUNS[1]} {int(grow.cum_steps)} "
            f"({decay.cum_steps / grow.cum_steps:.2f}× fewer) · final batch {int(grow.batch)} · last epoch g "
            f"{_fmt(decay.g)} (both); exact {_fmt(decay.g_exact)} vs {_fmt(grow.g_exact)}")


def _fmt(v: float) -> str:
    return f"{float(f'{v:.3g}'):g}"          # 3 significant digits, as the JavaScript's toPrecision(3)


def _short(v) -> float | int:
    return int(v) if float(v).is_integer() and not isinstance(v, float) else float(f"{float(v):.10g}")


def _options(name: str, values: Sequence) -> tuple:
    values = tuple(values)
    if not values:
        raise ValueError(f"{name}=[]: give at least one option")
    if len(set(values)) != len(values):
        raise ValueError(f"{name}={list(values)!r} repeats an option: give each value once")
    return values


def _noise_widget(panel: NoisePanel):
    """An ``ipywidgets.VBox``: title, controls, the plot (in an ``Output``) and a one-line readout."""
    import ipywidgets as W
    import matplotlib.pyplot as plt
    from IPython.display import display

    style = {"description_width": "initial"}
    inputs = {}
    for name, values in panel.options.items():
        if name == "milestones":
            w = W.Dropdown(options=[(", ".join(map(str, v)), v) for v in values], value=panel.initial[name],
                           description=LABELS[name], style=style)
        else:
            w = W.SelectionSlider(options=[(f"{v:g}", v) for v in values], value=panel.initial[name],
                                  description=LABELS[name], continuous_update=False, style=style)
        inputs[name] = w
    out, readout = W.Output(), W.HTML()

    def redraw(change=None):
        try:
            table = panel.pair(**{k: w.value for k, w in inputs.items()})
        except ValueError as err:
            readout.value = f"<span style='color:#b91c1c'>{html.escape(str(err))}</span>"
            out.clear_output()
            return
        with out:
            out.clear_output(wait=True)
            fig = plot_pair(table)
            display(fig)
            plt.close(fig)
        readout.value = html.escape(pair_readout(table))

    for w in inputs.values():
        w.observe(redraw, names="value")
    redraw()
    controls = W.HBox(list(inputs.values()), layout=W.Layout(flex_flow="row wrap"))
    return W.VBox([W.HTML(f"<b>{html.escape(panel.title)}</b>"), controls, out, readout])


NOISE_CSS = """
.labkit-panel .lk-decay{stroke:#2563eb;stroke-width:2.4;fill:none}
.labkit-panel .lk-grow{stroke:#c2410c;stroke-width:2;stroke-dasharray:7 4;fill:none}
.labkit-panel .lk-exact{stroke:#c2410c;stroke-width:1.2;stroke-dasharray:1.5 3;fill:none}
"""

NOISE_JS = r"""
// the noise-scale panel: controls → points[key] → g(t) and the updates of both runs → SVG
window.labkitKit.panels.noise = function (root, data, ui) {
  "use strict";
  var kit = window.labkitKit, esc = kit.esc, controls = data.controls, idx = ui.idx;
  var plot = ui.plot, readout = ui.readout;
  var fmt = kit.formatter(function (v) { return Number(v.toPrecision(3)); });

  function update() {
    var key = 0;
    controls.forEach(function (c, i) {
      ui.outputs[i].textContent = fmt(c.values[idx[i]]);
      key += idx[i] * data.strides[i];
    });
    var point = data.points[key];
    if (!point || point.error) {
      plot.innerHTML = draw(null);
      readout.innerHTML = '<span class="lk-error">' + esc(point ? point.error : "no point here") + "</span>";
      root.setAttribute("data-state", "error");
      return;
    }
    plot.innerHTML = draw(point);
    var E = data.epochs - 1, d = point.cum_steps[0][E], g = point.cum_steps[1][E];
    readout.textContent = "updates: " + data.runs[0] + " " + d + ", " + data.runs[1] + " " + g + " (" +
      (d / g).toFixed(2) + "\u00d7 fewer) \u00b7 final batch " + point.batch[1][E] +
      " \u00b7 last epoch g " + fmt(point.g[0][E]) + " (both); exact " + fmt(point.g_exact[0][E]) +
      " vs " + fmt(point.g_exact[1][E]);
    root.setAttribute("data-state", "ok");
  }

  function draw(point) {
    var W = 660, left = 56, right = 14, top = 22, ph = 210, gap = 48, sh = 130, n = data.epochs;
    var H = top + ph + gap + sh + 34;
    var x = function (e) { return left + (W - left - right) * e / n; };
    var lo = Math.log10(data.gmin), hi = Math.log10(data.gmax);
    var yg = function (v) {
      return top + ph * (hi - Math.log10(Math.max(v, data.gmin))) / (hi - lo);
    };
    var s = ['<svg viewBox="0 0 ' + W + " " + H + '" role="img" aria-label="noise scale and updates">'];
    for (var p = Math.ceil(lo); p <= Math.floor(hi); p++) {
      var yy = yg(Math.pow(10, p)).toFixed(1);
      s.push('<line class="lk-grid" x1="' + left + '" x2="' + (W - right) + '" y1="' + yy + '" y2="' + yy + '"/>');
      s.push('<text x="' + (left - 6) + '" y="' + yy + '" dy="3.5" text-anchor="end">' +
             fmt(Math.pow(10, p)) + "</text>");
    }
    var t0 = top + ph + gap, axes = [[top, ph], [t0, sh]];
    axes.forEach(function (a) {
      s.push('<path class="lk-axis" d="M' + left + " " + a[0] + "V" + (a[0] + a[1]) + "H" + (W - right) + '"/>');
      for (var e = 0; e <= n; e += Math.max(1, Math.round(n / 12))) {
        s.push('<text x="' + x(e).toFixed(1) + '" y="' + (a[0] + a[1] + 14) + '" text-anchor="middle">' + e +
               "</text>");
      }
    });
    s.push('<text x="' + (W - right) + '" y="' + (t0 + sh + 28) + '" text-anchor="end">epoch</text>');
    s.push('<text x="14" y="' + (top + ph / 2) + '" text-anchor="middle" transform="rotate(-90 14 ' +
           (top + ph / 2) + ')">noise scale g</text>');
    s.push('<text x="14" y="' + (t0 + sh / 2) + '" text-anchor="middle" transform="rotate(-90 14 ' +
           (t0 + sh / 2) + ')">updates so far</text>');
    var legend = [["lk-decay", data.runs[0]], ["lk-grow", data.runs[1]], ["lk-exact", data.runs[1] + ", exact g"]];
    legend.forEach(function (l, i) {
      var lx = left + 10 + i * 170;
      s.push('<line class="' + l[0] + '" x1="' + lx + '" x2="' + (lx + 26) + '" y1="10" y2="10"/>');
      s.push('<text x="' + (lx + 32) + '" y="14">' + esc(l[1]) + "</text>");
    });
    if (point) {
      var stairs = function (vals, cls) {
        var d = "M" + x(0).toFixed(1) + " " + yg(vals[0]).toFixed(1);
        vals.forEach(function (v, e) { d += "V" + yg(v).toFixed(1) + "H" + x(e + 1).toFixed(1); });
        s.push('<path class="' + cls + '" d="' + d + '"/>');
      };
      stairs(point.g[0], "lk-decay");
      stairs(point.g[1], "lk-grow");
      stairs(point.g_exact[1], "lk-exact");
      var smax = Math.max(point.cum_steps[0][n - 1], point.cum_steps[1][n - 1]);
      var ys = function (v) { return t0 + sh * (1 - v / smax); };
      [0, 1].forEach(function (r) {
        var d = "M" + x(0).toFixed(1) + " " + ys(0).toFixed(1);
        point.cum_steps[r].forEach(function (v, e) { d += "L" + x(e + 1).toFixed(1) + " " + ys(v).toFixed(1); });
        s.push('<path class="' + (r ? "lk-grow" : "lk-decay") + '" d="' + d + '"/>');
      });
      s.push('<text x="' + (left - 6) + '" y="' + (t0 + 4) + '" text-anchor="end">' + smax + "</text>");
      s.push('<text x="' + (left - 6) + '" y="' + (t0 + sh) + '" text-anchor="end">0</text>');
    }
    s.push("</svg>");
    return s.join("");
  }
  return update;
};
"""
