"""``goodput_panel``: sliders for the noise scale B_noise, the step time's α and β, and the memory ceiling →
goodput(B) = B/t(B) · E(B) over B, with the optimum B* = √(α·B_noise/β) and the best batch in range.

    >>> from labkit.widgets import goodput_panel
    >>> panel = goodput_panel(base_batch=32)   # B₀ of E(B) = (B_noise + B₀)/(B_noise + B)
    >>> panel                                  # in Jupyter: live ipywidgets; in the built book: static HTML + JS

Like ``noise_panel`` it has two faces in one ``_repr_mimebundle_``: ipywidgets controls that call
``labkit.goodput`` in the kernel, and a ``text/html`` fragment with every grid point precomputed in Python
(the curves, B*, ``best_batch`` and the readout's numbers) as JSON, which vanilla JavaScript only looks up
and draws as inline SVG (nothing is fetched). Chapter: Goodput.
"""
from __future__ import annotations

import itertools
import math
from typing import Any, Mapping, Sequence

from labkit.checks import check_float, check_int
from labkit.goodput import best_batch, efficiency, goodput, optimum
from labkit.strategies import adascale_gain
from labkit.widgets.base import GridPanel, live_view
from labkit.widgets.noise import _fmt, _options

B_NOISE = (64, 128, 256, 512, 1024, 2048, 4096, 8192)
ALPHAS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05)          # seconds per step, whatever the batch
BETAS = (1e-6, 3e-6, 1e-5, 3e-5, 1e-4)                    # seconds per sample
CEILINGS = (128, 256, 512, 1024, 2048, 4096, 8192)        # the largest batch that fits in memory
LABELS = {"b_noise": "B_noise", "alpha": "α (per step)", "beta": "β (per sample)",
          "ceiling": "memory ceiling (max B)"}
WHY = ("", "the memory ceiling", "the min batch")          # what clamped the best batch, if anything
PER_OCTAVE = 4                                             # curve points per doubling of B


class GoodputPanel(GridPanel):
    """A grid of (B_noise, α, β, ceiling) and the goodput model at every point; build it with
    ``goodput_panel``. ``panel.curves(alpha=0.01)`` and ``panel.point(alpha=0.01)`` are the live path
    (fresh ``labkit.goodput`` calls); ``panel.series(alpha=0.01)`` reads the precomputed point the static
    view draws (the same keys, from the embedded data)."""

    kind = "goodput"

    def __init__(self, base_batch: int = 32, min_batch: int = 1, *, b_noise: Sequence[float] = B_NOISE,
                 alpha: Sequence[float] = ALPHAS, beta: Sequence[float] = BETAS,
                 ceiling: Sequence[int] = CEILINGS, initial: Mapping[str, Any] | None = None,
                 title: str | None = None):
        self.base_batch = check_int("base_batch", base_batch, low=1)
        self.min_batch = check_int("min_batch", min_batch, low=1)
        positive = {"b_noise": b_noise, "alpha": alpha, "beta": beta}
        self.options = {k: _options(k, [check_float(k, v, low=0.0, low_open=True) for v in values])
                        for k, values in positive.items()}
        self.options["ceiling"] = _options("ceiling", [check_int("ceiling", v, low=self.min_batch)
                                                       for v in ceiling])
        start = {k: v[len(v) // 2] for k, v in self.options.items()}
        self.initial = start = self._start(start, initial)
        top = max(self.options["ceiling"]) * 2
        self.batches = sorted({round(2 ** (k / PER_OCTAVE))
                               for k in range(PER_OCTAVE * math.ceil(math.log2(top)) + 1)})
        self._data = None
        self.title = title or (f"Goodput = throughput × statistical efficiency (B₀ = {self.base_batch}, "
                               f"min batch {self.min_batch})")

    # -- the live path: labkit.goodput at one point -------------------------------------------------------
    def curves(self, **chosen: Any) -> dict[str, list[float]]:
        """Throughput B/t(B), efficiency E(B) and goodput over ``batches`` at a point."""
        p = self._chosen(chosen)
        a, b, n = p["alpha"], p["beta"], p["b_noise"]
        return {"batch": list(self.batches),
                "throughput": [x / (a + b * x) for x in self.batches],
                "efficiency": [efficiency(x, self.base_batch, n) for x in self.batches],
                "goodput": [goodput(x, a, b, n, self.base_batch) for x in self.batches]}

    def point(self, **chosen: Any) -> dict[str, float]:
        """B*, the best batch in [min_batch, ceiling] and, there: goodput, E, throughput, AdaScale's gain."""
        p = self._chosen(chosen)
        a, b, n = p["alpha"], p["beta"], p["b_noise"]
        star = optimum(a, b, n)
        best = best_batch(a, b, n, self.min_batch, p["ceiling"], self.base_batch)
        why = 1 if star > p["ceiling"] else 2 if star < self.min_batch else 0
        return {"b_star": star, "best": best, "goodput": goodput(best, a, b, n, self.base_batch),
                "efficiency": efficiency(best, self.base_batch, n), "throughput": best / (a + b * best),
                "gain": adascale_gain(best, self.base_batch, n), "why": why}

    def readout(self, **chosen: Any) -> str:
        """The one line under the plot (the JavaScript writes the same from the precomputed numbers)."""
        return readout(self.point(**chosen), self.base_batch)

    # -- the precomputed grid -----------------------------------------------------------------------------
    def series(self, **chosen: Any) -> dict[str, Any]:
        """The precomputed point the static view draws: ``point``'s keys and, under ``"curves"``, what
        ``curves`` returns, read from ``data()`` by the same index arithmetic as the JavaScript."""
        d = self.data()
        idx = [self.options[k].index(v) for k, v in self._chosen(chosen).items()]
        key = {name: sum(i * s for i, s in zip(idx, strides)) for name, strides in d["keys"].items()}
        curves = {"batch": d["batches"], "throughput": d["throughput"][key["throughput"]],
                  "efficiency": d["efficiency"][key["efficiency"]], "goodput": d["goodput"][key["goodput"]]}
        return {"curves": curves, "b_star": d["star"][key["goodput"]],
                **dict(zip(POINT_KEYS, d["points"][key["points"]]))}

    def data(self) -> dict[str, Any]:
        """Everything the static view needs, as JSON-ready plain data: curves keyed by the controls they
        depend on (E by B_noise, throughput by α and β, goodput by all three) and the readout's numbers
        at every grid point; ``keys`` holds each table's strides over the four controls. Computed once."""
        if self._data is None:
            self._data = self._compute()
        return self._data

    def _compute(self) -> dict[str, Any]:
        names = list(self.options)
        sizes = [len(self.options[k]) for k in names]

        def strides(used):            # mixed radix over the controls in `used`, the last varying fastest
            return [math.prod(s for k, s in zip(names[i + 1:], sizes[i + 1:]) if k in used)
                    if names[i] in used else 0 for i in range(len(names))]

        def grid(used):
            return [dict(zip(used, v)) for v in itertools.product(*(self.options[k] for k in used))]

        full = {k: self.initial[k] for k in names}
        goodput_grid = grid(("b_noise", "alpha", "beta"))
        ys = [v for p in goodput_grid for c in ("throughput", "goodput") for v in self.curves(**p)[c]]
        es = [v for p in grid(("b_noise",)) for v in self.curves(**p)["efficiency"]]
        return {
            "v": 1, "kind": "goodput", "title": self.title, "base_batch": self.base_batch,
            "min_batch": self.min_batch, "batches": self.batches, "why": list(WHY),
            "controls": [{"name": k, "label": LABELS[k], "kind": "slider", "values": list(self.options[k]),
                          "shown": [_shown(k, v) for v in self.options[k]], "size": len(self.options[k]),
                          "init": self.options[k].index(self.initial[k])} for k in names],
            "keys": {"efficiency": strides(("b_noise",)), "throughput": strides(("alpha", "beta")),
                     "goodput": strides(("b_noise", "alpha", "beta")), "points": strides(names)},
            "efficiency": [_short(self.curves(**p)["efficiency"], 4) for p in grid(("b_noise",))],
            "throughput": [_short(self.curves(**{**full, **p})["throughput"], 4)
                           for p in grid(("alpha", "beta"))],
            "goodput": [_short(self.curves(**p)["goodput"], 4) for p in goodput_grid],
            "star": [_short([optimum(p["alpha"], p["beta"], p["b_noise"])])[0] for p in goodput_grid],
            "points": [_short([self.point(**p)[k] for k in POINT_KEYS]) for p in grid(names)],
            "ymin": 10 ** math.floor(math.log10(min(ys))), "ymax": 10 ** math.ceil(math.log10(max(ys))),
            "emax": math.ceil(max(es) * 4) / 4,
        }

    # -- views --------------------------------------------------------------------------------------------
    def _view(self) -> tuple[str, str]:
        return GOODPUT_JS, GOODPUT_CSS

    def _build_widget(self):
        return _goodput_widget(self)

    def __repr__(self) -> str:
        sizes = self._controls()
        return (f"GoodputPanel(base_batch={self.base_batch}, min_batch={self.min_batch}; controls: {sizes}; "
                f"{math.prod(len(v) for v in self.options.values())} grid points)")


POINT_KEYS = ("best", "goodput", "efficiency", "throughput", "gain", "why")


def goodput_panel(base_batch: int = 32, min_batch: int = 1, *, b_noise: Sequence[float] = B_NOISE,
                  alpha: Sequence[float] = ALPHAS, beta: Sequence[float] = BETAS,
                  ceiling: Sequence[int] = CEILINGS, initial: Mapping[str, Any] | None = None,
                  title: str | None = None) -> GoodputPanel:
    """Sliders for B_noise, α (seconds per step), β (seconds per sample) and the memory ceiling (the largest
    batch that fits) → goodput(B), throughput B/t(B) and E(B) over B, with B* = √(α·B_noise/β) and
    ``labkit.goodput.best_batch`` in [min_batch, ceiling].

    Args:
        base_batch: B₀ of the efficiency E(B) = (B_noise + B₀)/(B_noise + B), where E = 1 (default 32).
        min_batch: the smallest batch allowed (default 1).
        b_noise, alpha, beta, ceiling: the options of the sliders (positive; every ceiling ≥ min_batch).
        initial: the values to start from (default: the middle option of each slider).

    Example::

        goodput_panel(base_batch=64, min_batch=8, alpha=[0.005, 0.02], ceiling=[512, 2048])
    """
    return GoodputPanel(base_batch, min_batch, b_noise=b_noise, alpha=alpha, beta=beta, ceiling=ceiling,
                        initial=initial, title=title)


def readout(point: Mapping[str, float], base_batch: int) -> str:
    """One line about a ``GoodputPanel.point``: B*, the best batch and what clamped it, and there the
    goodput, E, throughput and AdaScale's LR gain r (beside the linear rule's B/B₀)."""
    why = f" (at {WHY[int(point['why'])]})" if point["why"] else ""
    return (f"B* {_star(point['b_star'])} · best batch {int(point['best'])}{why}: goodput "
            f"{_fmt(point['goodput'])} samples/s = throughput {_fmt(point['throughput'])} × E "
            f"{_fmt(point['efficiency'])} · AdaScale lr × {_fmt(point['gain'])} "
            f"(linear × {_fmt(point['best'] / base_batch)})")


def _shown(name: str, value: float) -> str:
    """A slider's value as the panel shows it: seconds in s, ms or µs; counts as they are."""
    if name not in ("alpha", "beta"):
        return f"{value:g}"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if value >= scale or unit == "µs":
            return f"{value / scale:g} {unit}"


def _short(values: Sequence[float], digits: int = 6) -> list[float | int]:
    """Numbers for the JSON: integers as they are, others to ``digits`` significant digits (the curves
    are only drawn, so 4 do; the readout's numbers keep 6)."""
    return [int(v) if float(v).is_integer() else float(f"{v:.{digits}g}") for v in values]


def _star(v: float) -> str:
    return f"{v:.0f}" if v >= 10 else _fmt(v)      # as the JavaScript: whole samples from 10 up


def _goodput_widget(panel: GoodputPanel):
    """An ``ipywidgets.VBox``: title, the four sliders, the plot (in an ``Output``) and the readout."""
    import ipywidgets as W

    style = {"description_width": "initial"}
    inputs = {name: W.SelectionSlider(options=[(_shown(name, v), v) for v in values],
                                      value=panel.initial[name], description=LABELS[name],
                                      continuous_update=False, style=style)
              for name, values in panel.options.items()}
    return live_view(panel, inputs, lambda c: (plot_goodput(panel.curves(**c), panel.point(**c), c["ceiling"]),
                                               panel.readout(**c)))


def plot_goodput(curves: Mapping[str, Sequence[float]], point: Mapping[str, float], ceiling: int,
                 figsize=(8.0, 4.6)):
    """``GoodputPanel.curves`` drawn: goodput and throughput (log-log) above, E(B) below; B* dashed, the
    best batch a dot, the batches over the memory ceiling shaded. Returns the matplotlib figure."""
    import matplotlib.pyplot as plt

    fig, (top, low) = plt.subplots(2, 1, figsize=figsize, sharex=True, height_ratios=(2, 1),
                                   layout="constrained")
    b = curves["batch"]
    top.plot(b, curves["goodput"], color="C0", lw=2.2, label="goodput B/t(B)·E(B)")
    top.plot(b, curves["throughput"], color="0.45", lw=1, label="throughput B/t(B)")
    low.plot(b, curves["efficiency"], color="C2", lw=1.5, label="E(B)")
    for ax in (top, low):
        ax.axvspan(ceiling, b[-1], color="C3", alpha=0.08, lw=0)
        if point["b_star"] <= b[-1]:
            ax.axvline(point["b_star"], color="C1", ls="--", lw=1.2)
        ax.grid(alpha=0.25)
    top.plot([point["best"]], [point["goodput"]], "o", color="C3", label=f"best batch {int(point['best'])}")
    top.plot([], [], color="C1", ls="--", label=f"B* {_star(point['b_star'])}")
    top.set(xscale="log", yscale="log", ylabel="samples / s")
    low.set(xscale="log", xlabel="batch size B (shaded: over the memory ceiling)", ylabel="E(B)", ylim=(0, None))
    top.legend(frameon=False, fontsize="small")
    return fig


GOODPUT_CSS = """
.labkit-panel .lk-goodput{stroke:#2563eb;stroke-width:2.4;fill:none}
.labkit-panel .lk-through{stroke:currentColor;stroke-opacity:.55;stroke-width:1.1;fill:none}
.labkit-panel .lk-eff{stroke:#15803d;stroke-width:1.6;fill:none}
.labkit-panel .lk-star{stroke:#c2410c;stroke-width:1.3;stroke-dasharray:5 4}
.labkit-panel .lk-best{fill:#b91c1c;stroke:none}
.labkit-panel .lk-over{fill:#b91c1c;fill-opacity:.08;stroke:none}
"""

GOODPUT_JS = r"""
// the goodput panel: controls → precomputed curves and numbers (looked up, not computed) → SVG
window.labkitKit.panels.goodput = function (root, data, ui) {
  "use strict";
  var kit = window.labkitKit, esc = kit.esc, controls = data.controls, idx = ui.idx;
  var fmt = function (v) { return String(Number(v.toPrecision(3))); };   // 3 digits, as Python's _fmt
  var key = function (name) {
    var k = 0;
    idx.forEach(function (j, i) { k += j * data.keys[name][i]; });
    return k;
  };

  var whole = function (v) { return v >= 10 ? v.toFixed(0) : fmt(v); };   // B*, as the Python readout

  function update() {
    controls.forEach(function (c, i) { ui.outputs[i].textContent = c.shown[idx[i]]; });
    var p = data.points[key("points")], star = data.star[key("goodput")], best = p[0];
    var ceiling = controls[3].values[idx[3]];
    ui.plot.innerHTML = draw(data.goodput[key("goodput")], data.throughput[key("throughput")],
                             data.efficiency[key("efficiency")], star, p, ceiling);
    ui.readout.textContent = "B* " + whole(star) + " \u00b7 best batch " + best +
      (p[5] ? " (at " + data.why[p[5]] + ")" : "") + ": goodput " + fmt(p[1]) +
      " samples/s = throughput " + fmt(p[3]) + " \u00d7 E " + fmt(p[2]) + " \u00b7 AdaScale lr \u00d7 " +
      fmt(p[4]) + " (linear \u00d7 " + fmt(best / data.base_batch) + ")";
    root.setAttribute("data-state", "ok");
  }

  function draw(good, through, eff, star, p, ceiling) {
    var W = 660, left = 60, right = 14, top = 24, ph = 210, gap = 40, eh = 90;
    var H = top + ph + gap + eh + 36, B = data.batches, bmax = B[B.length - 1];
    var x = function (b) { return left + (W - left - right) * Math.log2(b) / Math.log2(bmax); };
    var lo = Math.log10(data.ymin), hi = Math.log10(data.ymax), t0 = top + ph + gap;
    var y = function (v) { return top + ph * (hi - Math.log10(Math.max(v, data.ymin))) / (hi - lo); };
    var ye = function (v) { return t0 + eh * (1 - v / data.emax); };
    var s = ['<svg viewBox="0 0 ' + W + " " + H + '" role="img" aria-label="goodput over the batch size">'];
    var over = x(Math.min(ceiling, bmax));
    [[top, ph], [t0, eh]].forEach(function (a) {
      s.push('<rect class="lk-over" x="' + over.toFixed(1) + '" y="' + a[0] + '" width="' +
             (W - right - over).toFixed(1) + '" height="' + a[1] + '"/>');
      s.push('<path class="lk-axis" d="M' + left + " " + a[0] + "V" + (a[0] + a[1]) + "H" + (W - right) + '"/>');
      if (star <= bmax) {
        s.push('<line class="lk-star" x1="' + x(star).toFixed(1) + '" x2="' + x(star).toFixed(1) + '" y1="' +
               a[0] + '" y2="' + (a[0] + a[1]) + '"/>');
      }
    });
    for (var e = Math.ceil(lo); e <= Math.floor(hi); e++) {
      var yy = y(Math.pow(10, e)).toFixed(1);
      s.push('<line class="lk-grid" x1="' + left + '" x2="' + (W - right) + '" y1="' + yy + '" y2="' + yy + '"/>');
      s.push('<text x="' + (left - 6) + '" y="' + yy + '" dy="3.5" text-anchor="end">' + fmt(Math.pow(10, e)) +
             "</text>");
    }
    for (var b = 1; b <= bmax; b *= 4) {
      s.push('<text x="' + x(b).toFixed(1) + '" y="' + (t0 + eh + 14) + '" text-anchor="' +
             (b * 4 > bmax ? "end" : "middle") + '">' + b + "</text>");
    }
    for (var v = 0; v <= data.emax; v += 0.5) {
      var ey = ye(v).toFixed(1);
      s.push('<line class="lk-grid" x1="' + left + '" x2="' + (W - right) + '" y1="' + ey + '" y2="' + ey + '"/>');
      s.push('<text x="' + (left - 6) + '" y="' + ey + '" dy="3.5" text-anchor="end">' + v + "</text>");
    }
    s.push('<text x="' + (W - right) + '" y="' + (t0 + eh + 30) + '" text-anchor="end">batch size B ' +
           "(shaded: over the memory ceiling)</text>");
    s.push('<text x="14" y="' + (top + ph / 2) + '" text-anchor="middle" transform="rotate(-90 14 ' +
           (top + ph / 2) + ')">samples / s</text>');
    s.push('<text x="14" y="' + (t0 + eh / 2) + '" text-anchor="middle" transform="rotate(-90 14 ' +
           (t0 + eh / 2) + ')">E(B)</text>');
    var line = function (vals, yf, cls) {
      var d = "";
      vals.forEach(function (v, i) { d += (i ? "L" : "M") + x(B[i]).toFixed(1) + " " + yf(v).toFixed(1); });
      s.push('<path class="' + cls + '" d="' + d + '"/>');
    };
    line(through, y, "lk-through");
    line(good, y, "lk-goodput");
    line(eff, ye, "lk-eff");
    s.push('<circle class="lk-best" cx="' + x(p[0]).toFixed(1) + '" cy="' + y(p[1]).toFixed(1) + '" r="4.5"/>');
    var legend = [["lk-goodput", "goodput"], ["lk-through", "B/t(B)"], ["lk-eff", "E(B)"],
                  ["lk-star", "B* " + (star <= bmax ? "" : "(off the axis) ") + whole(star)]];
    legend.push(["lk-best", "best batch " + p[0]]);
    legend.forEach(function (l, i) {
      var lx = left + i * 118;
      s.push(l[0] === "lk-best" ? '<circle class="lk-best" cx="' + (lx + 12) + '" cy="10" r="4"/>' :
             '<line class="' + l[0] + '" x1="' + lx + '" x2="' + (lx + 24) + '" y1="10" y2="10"/>');
      s.push('<text x="' + (lx + 30) + '" y="14">' + esc(l[1]) + "</text>");
    });
    s.push("</svg>");
    return s.join("");
  }
  return update;
};
"""
