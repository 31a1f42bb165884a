"""``serving_panel``: sliders for the arrival rate λ, the window w and the cap B_max → the mean batch and the
latency of ``TimeWindowBatcher``'s close rule, replayed on ``labkit.serving.poisson_arrivals`` schedules.

    >>> from labkit.widgets import serving_panel
    >>> serving_panel(service_ms=0.5)      # in Jupyter: live ipywidgets; in the built book: HTML + JS

``labkit.serving.replay`` is the chapter's model of the batcher: a batch opens at its first request and closes at
min(t_first + w, the arrival filling it to B_max), or when the worker is free if it is still busy, and every
batch takes ``service_ms``. The panel replays it at every grid point and draws, over the windows, the mean
batch beside E[B] ≈ min(B_max, 1 + λw) and the p50/p99 latency beside the bound w + s; the static view only
looks the numbers up (nothing is fetched). Chapter: Time-window batching for inference.
"""
from __future__ import annotations

import itertools
import math
from typing import Any, Mapping, Sequence

import numpy as np

from labkit.checks import check_float, check_int
from labkit.serving import poisson_arrivals
from labkit.serving.replay import formula_batch, replay
from labkit.widgets.base import GridPanel, live_view
from labkit.widgets.noise import _fmt, _options

RATES = (1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 64_000)   # requests per second
WINDOWS = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0)                     # ms
MAX_BATCHES = (8, 16, 32, 64, 128)
LABELS = {"rate": "arrival rate λ (/s)", "window": "window w (ms)", "max_batch": "max batch B_max"}
POINT_KEYS = ("mean_batch", "formula", "p50", "p99", "max", "mean")


class ServingPanel(GridPanel):
    """A grid of (λ, w, B_max) and the replay at every point; build it with ``serving_panel``.
    ``panel.point(rate=4000)`` is the live path (a fresh replay); ``panel.series(rate=4000)`` reads the
    precomputed numbers the static view draws."""

    kind = "serving"

    def __init__(self, service_ms: float = 0.5, requests: int = 4000, *, rate: Sequence[float] = RATES,
                 window: Sequence[float] = WINDOWS, max_batch: Sequence[int] = MAX_BATCHES, seed: int = 0,
                 initial: Mapping[str, Any] | None = None, title: str | None = None):
        self.service_ms = check_float("service_ms", service_ms, low=0.0)
        self.requests = check_int("requests", requests, low=10)
        self.seed = check_int("seed", seed, low=0)
        self.options = {
            "rate": _options("rate", [check_float("rate", v, low=0.0, low_open=True) for v in rate]),
            "window": _options("window", [check_float("window", v, low=0.0, low_open=True) for v in window]),
            "max_batch": _options("max_batch", [check_int("max_batch", v, low=1) for v in max_batch])}
        start = {k: v[len(v) // 2] for k, v in self.options.items()}
        self.initial = start = self._start(start, initial)
        self._data = None
        self.title = title or (f"Time-window batching, replayed: {self.requests} Poisson arrivals, service "
                               f"time s = {self.service_ms:g} ms per batch")

    # -- the live path: one replay ---------------------------------------------------------------------------
    def point(self, **chosen: Any) -> dict[str, float]:
        """The replay at a point: mean batch, E[B] ≈ min(B_max, 1 + λw), p50, p99, max and mean latency (ms)."""
        p = self._chosen(chosen)
        arrivals = poisson_arrivals(p["rate"], count=self.requests, seed=self.seed)
        sizes, latency = replay(arrivals, p["window"], p["max_batch"], self.service_ms)
        p50, p99 = np.percentile(latency, [50, 99])
        values = (sizes.mean(), formula_batch(p["rate"], p["window"], p["max_batch"]), p50, p99,
                  latency.max(), latency.mean())
        return {k: float(f"{float(v):.4g}") for k, v in zip(POINT_KEYS, values)}

    def readout(self, **chosen: Any) -> str:
        """The one line under the plot (the JavaScript writes the same from the precomputed numbers)."""
        return readout(self._chosen(chosen), self.point(**chosen), self.service_ms)

    # -- the precomputed grid --------------------------------------------------------------------------------
    def series(self, **chosen: Any) -> dict[str, float]:
        """The precomputed point, read from ``data()`` by the JavaScript's index arithmetic."""
        d, p = self.data(), self._chosen(chosen)
        return dict(zip(POINT_KEYS, d["points"][self._index(p)]))

    def data(self) -> dict[str, Any]:
        """Everything the static view needs: ``POINT_KEYS`` at every grid point (the last control fastest)."""
        if self._data is None:
            points = [[self.point(**dict(zip(self.options, values)))[k] for k in POINT_KEYS]
                      for values in itertools.product(*self.options.values())]
            lat = [v for row in points for v in row[2:4]]
            self._data = {
                "v": 1, "kind": "serving", "title": self.title, "service_ms": self.service_ms,
                "controls": [{"name": k, "label": LABELS[k], "kind": "slider", "values": list(v),
                              "shown": [f"{x:g}" for x in v], "size": len(v),
                              "init": v.index(self.initial[k])} for k, v in self.options.items()],
                "strides": self.strides, "points": points,
                "bmax": max(self.options["max_batch"]),
                "lmin": 2 ** math.floor(math.log2(max(min(lat), 1e-3))),
                "lmax": 2 ** math.ceil(math.log2(max(lat))),
            }
        return self._data

    # -- views -----------------------------------------------------------------------------------------------
    def _view(self) -> tuple[str, str]:
        return SERVING_JS, SERVING_CSS

    def _build_widget(self):
        return _serving_widget(self)

    def __repr__(self) -> str:
        sizes = self._controls()
        return (f"ServingPanel(service_ms={self.service_ms:g}, requests={self.requests}, seed={self.seed}; "
                f"controls: {sizes})")


def serving_panel(service_ms: float = 0.5, requests: int = 4000, *, rate: Sequence[float] = RATES,
                  window: Sequence[float] = WINDOWS, max_batch: Sequence[int] = MAX_BATCHES, seed: int = 0,
                  initial: Mapping[str, Any] | None = None, title: str | None = None) -> ServingPanel:
    """Sliders for the arrival rate λ (requests/s), the window w (ms) and the cap B_max → the replayed mean
    batch (beside min(B_max, 1 + λw)) and the p50/p99 latency (beside w + s) over the windows.

    Args:
        service_ms: s, the service time of every batch (fixed for the panel; default 0.5 ms).
        requests: arrivals per replay (``poisson_arrivals(rate, count=requests, seed=seed)``).
        rate, window, max_batch: the options of the sliders.
        initial: the values to start from (default: the middle option of each slider).

    Example::

        serving_panel(service_ms=1.0, rate=[4000, 16000], window=[0.5, 1, 2])
    """
    return ServingPanel(service_ms, requests, rate=rate, window=window, max_batch=max_batch, seed=seed,
                        initial=initial, title=title)


def readout(chosen: Mapping[str, float], point: Mapping[str, float], service_ms: float) -> str:
    """One line: the mean batch beside the formula, the latencies beside the bound w + s."""
    over = chosen["rate"] * service_ms / 1e3 > chosen["max_batch"]
    return (f"λ {chosen['rate']:g}/s, w {chosen['window']:g} ms, B_max {chosen['max_batch']}: mean batch "
            f"{_fmt(point['mean_batch'])} (1 + λw capped: {_fmt(point['formula'])}) · latency p50 "
            f"{_fmt(point['p50'])}, p99 {_fmt(point['p99'])}, max {_fmt(point['max'])} ms (w + s = "
            f"{_fmt(chosen['window'] + service_ms)})" + (" · overloaded: λ > B_max/s" if over else ""))


def _serving_widget(panel: ServingPanel):
    """An ``ipywidgets.VBox``: title, the three sliders, the plot (in an ``Output``) and the readout."""
    import ipywidgets as W

    style = {"description_width": "initial"}
    inputs = {name: W.SelectionSlider(options=[(f"{v:g}", v) for v in values], value=panel.initial[name],
                                      description=LABELS[name], continuous_update=False, style=style)
              for name, values in panel.options.items()}

    def draw(chosen):
        over = [panel.point(**{**chosen, "window": w}) for w in panel.options["window"]]
        return (plot_serving(panel.options["window"], over, chosen["window"], panel.service_ms),
                panel.readout(**chosen))

    return live_view(panel, inputs, draw)


def plot_serving(windows, points, window, service_ms, figsize=(8.0, 3.2)):
    """Points over the windows: mean batch and formula (left), p50/p99 latency and w + s (right)."""
    import matplotlib.pyplot as plt

    fig, (bax, lax) = plt.subplots(1, 2, figsize=figsize, layout="constrained")
    bax.plot(windows, [p["mean_batch"] for p in points], "o-", label="replay")
    bax.plot(windows, [p["formula"] for p in points], "--", color="0.4", label="min(B_max, 1 + λw)")
    for key, style in (("p50", "o-"), ("p99", "s-")):
        lax.plot(windows, [p[key] for p in points], style, label=key)
    lax.plot(windows, [w + service_ms for w in windows], "k--", lw=1, label="w + s")
    bax.set(ylabel="mean batch")
    lax.set(ylabel="latency (ms)", yscale="log")
    for ax in (bax, lax):
        ax.axvline(window, color="C3", lw=1, alpha=0.6)
        ax.set(xscale="log", xlabel="window w (ms)")
        ax.grid(alpha=0.25)
        ax.legend(frameon=False, fontsize="small")
    return fig


SERVING_CSS = """
.labkit-panel .lk-batch{stroke:#2563eb;stroke-width:2.2;fill:none}
.labkit-panel .lk-formula{stroke:currentColor;stroke-opacity:.55;stroke-dasharray:5 4;fill:none}
.labkit-panel .lk-p50{stroke:#15803d;stroke-width:1.8;fill:none}
.labkit-panel .lk-p99{stroke:#c2410c;stroke-width:2.2;fill:none}
.labkit-panel .lk-now{stroke:#b91c1c;stroke-opacity:.5}
"""

SERVING_JS = r"""
// the serving panel: controls → the precomputed replay over the windows (looked up) → SVG
window.labkitKit.panels.serving = function (root, data, ui) {
  "use strict";
  var esc = window.labkitKit.esc, controls = data.controls, idx = ui.idx;
  var fmt = function (v) { return String(Number(v.toPrecision(3))); };   // 3 digits, as Python's _fmt
  var at = function (j) {                       // the point at window index j, the other controls as set
    return data.points[idx[0] * data.strides[0] + j * data.strides[1] + idx[2] * data.strides[2]];
  };

  function update() {
    controls.forEach(function (c, i) { ui.outputs[i].textContent = c.shown[idx[i]]; });
    var rate = controls[0].values[idx[0]], w = controls[1].values[idx[1]], bmax = controls[2].values[idx[2]];
    var rows = controls[1].values.map(function (_, j) { return at(j); }), p = rows[idx[1]];
    ui.plot.innerHTML = draw(rows, bmax);
    ui.readout.textContent = "\u03bb " + rate + "/s, w " + w + " ms, B_max " + bmax + ": mean batch " +
      fmt(p[0]) + " (1 + \u03bbw capped: " + fmt(p[1]) + ") \u00b7 latency p50 " + fmt(p[2]) + ", p99 " +
      fmt(p[3]) + ", max " + fmt(p[4]) + " ms (w + s = " + fmt(w + data.service_ms) + ")" +
      (rate * data.service_ms / 1e3 > bmax ? " \u00b7 overloaded: \u03bb > B_max/s" : "");
    root.setAttribute("data-state", "ok");
  }

  function draw(rows, bmax) {
    var W = 660, top = 24, ph = 190, pw = 270, l1 = 48, l2 = 376, H = top + ph + 40;
    var ws = controls[1].values, lo = Math.log2(ws[0]), hi = Math.log2(ws[ws.length - 1]);
    var x = function (l, w) { return l + pw * (hi > lo ? (Math.log2(w) - lo) / (hi - lo) : 0.5); };
    var yb = function (b) { return top + ph * (1 - b / data.bmax); };
    var ll = Math.log2(data.lmin), lh = Math.log2(data.lmax);
    var yl = function (v) { return top + ph * (lh - Math.log2(Math.max(v, data.lmin))) / (lh - ll); };
    var s = ['<svg viewBox="0 0 ' + W + " " + H + '" role="img" aria-label="mean batch and latency">'];
    var path = function (cls, l, ys) {
      var d = "";
      ws.forEach(function (w, j) { d += (j ? "L" : "M") + x(l, w).toFixed(1) + " " + ys(j).toFixed(1); });
      s.push('<path class="' + cls + '" d="' + d + '"/>');
    };
    [l1, l2].forEach(function (l) {
      s.push('<path class="lk-axis" d="M' + l + " " + top + "V" + (top + ph) + "H" + (l + pw) + '"/>');
      var xn = x(l, ws[ui.idx[1]]).toFixed(1);
      s.push('<line class="lk-now" x1="' + xn + '" x2="' + xn + '" y1="' + top + '" y2="' + (top + ph) + '"/>');
      ws.forEach(function (w) {
        s.push('<text x="' + x(l, w).toFixed(1) + '" y="' + (top + ph + 14) + '" text-anchor="middle">' + w +
               "</text>");
      });
      s.push('<text x="' + (l + pw) + '" y="' + (top + ph + 30) + '" text-anchor="end">window w (ms)</text>');
    });
    for (var b = 0; b <= data.bmax; b += data.bmax / 4) {
      s.push('<line class="lk-grid" x1="' + l1 + '" x2="' + (l1 + pw) + '" y1="' + yb(b).toFixed(1) + '" y2="' +
             yb(b).toFixed(1) + '"/><text x="' + (l1 - 5) + '" y="' + yb(b).toFixed(1) +
             '" dy="3.5" text-anchor="end">' + b + "</text>");
    }
    for (var e = Math.ceil(ll); e <= Math.floor(lh); e++) {
      var v = Math.pow(2, e), yy = yl(v).toFixed(1);
      s.push('<line class="lk-grid" x1="' + l2 + '" x2="' + (l2 + pw) + '" y1="' + yy + '" y2="' + yy +
             '"/><text x="' + (l2 - 5) + '" y="' + yy + '" dy="3.5" text-anchor="end">' + fmt(v) + "</text>");
    }
    path("lk-formula", l1, function (j) { return yb(rows[j][1]); });
    path("lk-batch", l1, function (j) { return yb(rows[j][0]); });
    path("lk-formula", l2, function (j) { return yl(ws[j] + data.service_ms); });
    path("lk-p50", l2, function (j) { return yl(rows[j][2]); });
    path("lk-p99", l2, function (j) { return yl(rows[j][3]); });
    var legend = [["lk-batch", l1, "mean batch"], ["lk-formula", l1 + 110, "min(B_max, 1 + \u03bbw)"],
                  ["lk-p50", l2, "p50 ms"], ["lk-p99", l2 + 80, "p99 ms"], ["lk-formula", l2 + 160, "w + s"]];
    legend.forEach(function (g) {
      s.push('<line class="' + g[0] + '" x1="' + g[1] + '" x2="' + (g[1] + 22) + '" y1="10" y2="10"/>' +
             '<text x="' + (g[1] + 26) + '" y="14">' + esc(g[2]) + "</text>");
    });
    s.push("</svg>");
    return s.join("");
  }
  return update;
};
"""
