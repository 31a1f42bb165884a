"""``curriculum_panel``: sliders for c0 and T and a shape dropdown → the pool of each epoch, the easiest
max(1, ⌈c(t)·N⌉) of N examples, as ``labkit.curriculum.Curriculum`` picks it.

    >>> from labkit.widgets import curriculum_panel
    >>> curriculum_panel(n=50_000, epochs=15)   # in Jupyter: live ipywidgets; in the book: HTML + JS

Every grid point's pool sizes come from ``Curriculum.pool`` (with ``competence`` as the pacing function);
the static view embeds them as JSON and vanilla JavaScript only looks them up and draws inline SVG (nothing
is fetched). Chapter: Curriculum and progressive batching.
"""
from __future__ import annotations

import itertools
from typing import Any, Mapping, Sequence

import torch

from labkit.checks import check_choice, check_float, check_int
from labkit.curriculum import SHAPES, Curriculum
from labkit.widgets.base import GridPanel, live_view
from labkit.widgets.noise import _options

C0S = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0)
TS = (1, 2, 4, 8, 12, 16)
LABELS = {"c0": "c0 (share at epoch 0)", "T": "T (full set from epoch)", "shape": "shape"}


class CurriculumPanel(GridPanel):
    """A grid of (c0, T, shape) and the pool size of every epoch; build it with ``curriculum_panel``.
    ``panel.pools(c0=0.5)`` is the live path (a fresh ``Curriculum``); ``panel.series(c0=0.5)`` reads the
    precomputed sizes the static view draws."""

    kind = "curriculum"

    def __init__(self, n: int = 50_000, epochs: int = 15, *, c0: Sequence[float] = C0S,
                 T: Sequence[int] = TS, shape: Sequence[str] = SHAPES,
                 initial: Mapping[str, Any] | None = None, title: str | None = None):
        self.n = check_int("n", n, low=1)
        self.epochs = check_int("epochs", epochs, low=1, high=500)
        self.options = {
            "c0": _options("c0", [check_float("c0", v, low=0.0, high=1.0, low_open=True) for v in c0]),
            "T": _options("T", [check_int("T", v, low=1) for v in T]),
            "shape": _options("shape", [check_choice("shape", v, SHAPES) for v in shape])}
        start = {"c0": self.options["c0"][min(2, len(self.options["c0"]) - 1)],
                 "T": self.options["T"][len(self.options["T"]) // 2], "shape": self.options["shape"][-1]}
        self.initial = start = self._start(start, initial)
        self._data = None
        self.title = title or f"The curriculum's pool per epoch: N = {self.n} examples, {self.epochs} epochs"

    # -- the live path: Curriculum.pool ----------------------------------------------------------------------
    def pools(self, **chosen: Any) -> list[int]:
        """The pool size of epochs 0 … epochs − 1 at a point: ``len(Curriculum(...).pool(t))``."""
        p = self._chosen(chosen)
        cur = Curriculum(torch.arange(self.n, dtype=torch.float32), c0=p["c0"], epochs=p["T"], shape=p["shape"])
        return [len(cur.pool(t)) for t in range(self.epochs)]

    def readout(self, **chosen: Any) -> str:
        """The one line under the plot (the JavaScript writes the same from the precomputed sizes)."""
        return readout(self._chosen(chosen), self.pools(**chosen), self.n)

    # -- the precomputed grid --------------------------------------------------------------------------------
    def series(self, **chosen: Any) -> list[int]:
        """The precomputed pool sizes at a point, read from ``data()`` by the JavaScript's arithmetic."""
        d, p = self.data(), self._chosen(chosen)
        return d["pools"][self._index(p)]

    def data(self) -> dict[str, Any]:
        """Everything the static view needs: the pool sizes at every grid point (the last control fastest)."""
        if self._data is None:
            self._data = {
                "v": 1, "kind": "curriculum", "title": self.title, "n": self.n, "epochs": self.epochs,
                "controls": [{"name": k, "label": LABELS[k], "kind": "choice" if k == "shape" else "slider",
                              "values": list(v), "shown": [f"{x:g}" if k != "shape" else x for x in v],
                              "size": len(v), "init": v.index(self.initial[k])}
                             for k, v in self.options.items()],
                "strides": self.strides,
                "pools": [self.pools(**dict(zip(self.options, values)))
                          for values in itertools.product(*self.options.values())],
            }
        return self._data

    # -- views -----------------------------------------------------------------------------------------------
    def _view(self) -> tuple[str, str]:
        return CURRICULUM_JS, CURRICULUM_CSS

    def _build_widget(self):
        return _curriculum_widget(self)

    def __repr__(self) -> str:
        sizes = self._controls()
        return f"CurriculumPanel(n={self.n}, epochs={self.epochs}; controls: {sizes})"


def curriculum_panel(n: int = 50_000, epochs: int = 15, *, c0: Sequence[float] = C0S, T: Sequence[int] = TS,
                     shape: Sequence[str] = SHAPES, initial: Mapping[str, Any] | None = None,
                     title: str | None = None) -> CurriculumPanel:
    """Sliders for c0 and T and a shape dropdown → the pool share of each of ``epochs`` epochs, the easiest
    max(1, ⌈c(t)·N⌉) of ``n`` examples, and the examples served in all against plain training.

    Args:
        n: the training set's size N (default 50 000, CIFAR-10); epochs: the epochs drawn.
        c0, T, shape: the options of the controls (c0 in (0, 1], T ≥ 1, shapes from ``SHAPES``).
        initial: the values to start from (default: c0 = 0.25, the middle T, the square root).

    Example::

        curriculum_panel(n=60_000, epochs=10, T=[2, 5, 8])
    """
    return CurriculumPanel(n, epochs, c0=c0, T=T, shape=shape, initial=initial, title=title)


def readout(chosen: Mapping[str, Any], pools: Sequence[int], n: int) -> str:
    """One line: the first and last pools, the epoch from which all data is used, the examples served."""
    full = next((t for t, size in enumerate(pools) if size == n), None)
    when = f"all {n} from epoch {full}" if full is not None else f"not all {n} within {len(pools)} epochs"
    served = sum(pools)
    return (f"c0 {chosen['c0']:g}, T {chosen['T']}, {chosen['shape']}: pool {pools[0]} at epoch 0, "
            f"{when} · {served} examples served in {len(pools)} epochs, {served / (n * len(pools)):.3f} "
            f"of plain training")


def _curriculum_widget(panel: CurriculumPanel):
    """An ``ipywidgets.VBox``: title, the controls, the plot (in an ``Output``) and the readout."""
    import ipywidgets as W

    style = {"description_width": "initial"}
    inputs = {name: (W.Dropdown if name == "shape" else W.SelectionSlider)(
        options=list(values), value=panel.initial[name], description=LABELS[name], style=style,
        **({} if name == "shape" else {"continuous_update": False}))
        for name, values in panel.options.items()}
    return live_view(panel, inputs, lambda c: (plot_pools(panel.pools(**c), panel.n), panel.readout(**c)))


def plot_pools(pools: Sequence[int], n: int, figsize=(7.0, 3.0)):
    """The pool share of each epoch as bars. Returns the matplotlib figure."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=figsize, layout="constrained")
    ax.bar(range(len(pools)), [p / n for p in pools], color="C0")
    ax.set(xlabel="epoch t", ylabel="pool share ⌈c(t)·N⌉ / N", ylim=(0, 1.05))
    ax.grid(alpha=0.25, axis="y")
    return fig


CURRICULUM_CSS = """
.labkit-panel .lk-bar{fill:#2563eb;fill-opacity:.8}
"""

CURRICULUM_JS = r"""
// the curriculum panel: controls → the precomputed pool sizes of each epoch (looked up) → SVG bars
window.labkitKit.panels.curriculum = function (root, data, ui) {
  "use strict";
  var controls = data.controls, idx = ui.idx;

  function update() {
    var key = 0;
    controls.forEach(function (c, i) {
      ui.outputs[i].textContent = c.shown[idx[i]];
      key += idx[i] * data.strides[i];
    });
    var pools = data.pools[key], n = data.n, served = 0, full = -1;
    pools.forEach(function (p, t) { served += p; if (full < 0 && p === n) full = t; });
    ui.plot.innerHTML = draw(pools);
    var v = function (i) { return controls[i].shown[idx[i]]; };
    ui.readout.textContent = "c0 " + v(0) + ", T " + v(1) + ", " + v(2) + ": pool " + pools[0] +
      " at epoch 0, " + (full >= 0 ? "all " + n + " from epoch " + full : "not all " + n + " within " +
      pools.length + " epochs") + " \u00b7 " + served + " examples served in " + pools.length +
      " epochs, " + (served / (n * pools.length)).toFixed(3) + " of plain training";
    root.setAttribute("data-state", "ok");
  }

  function draw(pools) {
    var W = 640, left = 46, right = 12, top = 12, ph = 170, H = top + ph + 36, n = pools.length;
    var bw = (W - left - right) / n, y = function (v) { return top + ph * (1 - v); };
    var s = ['<svg viewBox="0 0 ' + W + " " + H + '" role="img" aria-label="pool share per epoch">'];
    [0, 0.25, 0.5, 0.75, 1].forEach(function (v) {
      s.push('<line class="lk-grid" x1="' + left + '" x2="' + (W - right) + '" y1="' + y(v) + '" y2="' + y(v) +
             '"/><text x="' + (left - 5) + '" y="' + y(v) + '" dy="3.5" text-anchor="end">' + v + "</text>");
    });
    pools.forEach(function (p, t) {
      var share = p / data.n, x = left + t * bw;
      s.push('<rect class="lk-bar" x="' + (x + 2).toFixed(1) + '" y="' + y(share).toFixed(1) + '" width="' +
             (bw - 4).toFixed(1) + '" height="' + (ph * share).toFixed(1) + '"/>');
      s.push('<text x="' + (x + bw / 2).toFixed(1) + '" y="' + (top + ph + 14) + '" text-anchor="middle">' + t +
             "</text>");
    });
    s.push('<path class="lk-axis" d="M' + left + " " + top + "V" + (top + ph) + "H" + (W - right) + '"/>');
    s.push('<text x="' + (W - right) + '" y="' + (top + ph + 30) + '" text-anchor="end">epoch t ' +
           "(bars: pool share \u2308c(t)\u00b7N\u2309 / N)</text>");
    s.push("</svg>");
    return s.join("");
  }
  return update;
};
"""
