"""``sequences_panel``: sliders for the batch size B, the token budget T and the pool → the padding fraction
and the batches per epoch of the four batchers of ``labkit.buckets``, on real sequence lengths.

    >>> from labkit import text
    >>> from labkit.widgets import sequences_panel
    >>> d = text.load("sms-spam")
    >>> sequences_panel(d.x_train, d.y_train)   # in Jupyter: live ipywidgets; in the book: HTML + JS

Every grid point is one epoch served by the library's own batchers (``RandomBatcher`` with global and
dynamic padding, ``BucketBatcher``, ``TokenBatcher``), read from their ``stats``: nothing is re-implemented
here. The static view embeds those numbers as JSON and vanilla JavaScript only looks them up and draws
inline SVG bars (nothing is fetched); the live view serves a fresh epoch at each move.
Chapter: Sequence length: padding, buckets and token budgets.
"""
from __future__ import annotations

import itertools
import math
from typing import Any, Mapping, Sequence

import torch

from labkit.buckets import BucketBatcher, RandomBatcher, TokenBatcher
from labkit.checks import check_int
from labkit.text import check_sequences
from labkit.widgets.base import GridPanel, live_view
from labkit.widgets.noise import _options

BATCHES = (8, 16, 32, 64, 128, 256)                 # sequences per batch (random and bucket batchers)
BUDGETS = (256, 512, 1024, 1280, 2048, 4096)        # token slots B·L per batch (token batcher)
POOLS = (1, 10, 50, 200)                           # batches per sorted pool (bucket and token batchers)
LABELS = {"batch": "batch B", "max_tokens": "token budget T", "pool": "pool (batches)"}
KINDS = ("global", "dynamic", "bucket", "tokens")
USES = {"global": ("batch",), "dynamic": ("batch",), "bucket": ("batch", "pool"),
        "tokens": ("max_tokens", "pool")}             # the controls each batcher depends on
STAT_KEYS = ("padding", "steps", "min_batch", "max_batch")


class SequencesPanel(GridPanel):
    """A grid of (B, T, pool) and one epoch of each batcher at every point; build it with
    ``sequences_panel``. ``panel.point(batch=64)`` is the live path (fresh batchers, one epoch each);
    ``panel.series(batch=64)`` reads the precomputed numbers the static view draws."""

    kind = "sequences"

    def __init__(self, sequences, labels=None, *, batch: Sequence[int] = BATCHES,
                 max_tokens: Sequence[int] = BUDGETS, pool: Sequence[int] = POOLS, seed: int = 0,
                 initial: Mapping[str, Any] | None = None, title: str | None = None):
        self.sequences = check_sequences(sequences)
        self.labels = torch.zeros(len(self.sequences), dtype=torch.long) if labels is None else labels
        self.seed = check_int("seed", seed, low=0)
        longest = max(len(s) for s in self.sequences)
        self.options = {"batch": _options("batch", [check_int("batch", v, low=1) for v in batch]),
                        "max_tokens": _options("max_tokens", [check_int("max_tokens", v, low=longest)
                                                              for v in max_tokens]),
                        "pool": _options("pool", [check_int("pool", v, low=1) for v in pool])}
        start = {k: v[len(v) // 2] for k, v in self.options.items()}
        self.initial = start = self._start(start, initial)
        self.tokens = sum(len(s) for s in self.sequences)
        self._data = None
        self.title = title or (f"Padding and batches per epoch: {len(self.sequences)} sequences, "
                               f"{self.tokens} tokens, longest {longest}")

    # -- the live path: one epoch of each labkit.buckets batcher --------------------------------------------
    def batcher(self, kind: str, **chosen: Any):
        """A fresh ``labkit.buckets`` batcher of ``kind`` (one of ``KINDS``) at a point."""
        p, x, y, seed = self._chosen(chosen), self.sequences, self.labels, self.seed
        if kind in ("global", "dynamic"):
            return RandomBatcher(x, y, p["batch"], pad="global" if kind == "global" else "batch", seed=seed)
        if kind == "bucket":
            return BucketBatcher(x, y, p["batch"], pool=p["pool"], seed=seed)
        if kind == "tokens":
            return TokenBatcher(x, y, p["max_tokens"], pool=p["pool"], seed=seed)
        raise ValueError(f"kind={kind!r}: expected one of {', '.join(KINDS)}")

    def stats(self, kind: str, **chosen: Any) -> list[float | int]:
        """``STAT_KEYS`` of one epoch of ``kind`` at a point, from the batcher's ``EpochStats``."""
        batcher = self.batcher(kind, **chosen)
        for _batch in batcher:         # one epoch served: batcher.stats records it
            pass
        s = batcher.stats
        return [round(s.padding_fraction, 3), s.steps, min(s.sizes), max(s.sizes)]

    def point(self, **chosen: Any) -> dict[str, dict[str, float | int]]:
        """``{batcher: {padding, steps, min_batch, max_batch}}`` at a point, freshly computed."""
        return {kind: dict(zip(STAT_KEYS, self.stats(kind, **chosen))) for kind in KINDS}

    def readout(self, **chosen: Any) -> str:
        """The one line under the plot (the JavaScript writes the same from the precomputed numbers)."""
        return readout(self._chosen(chosen), self.point(**chosen))

    # -- the precomputed grid --------------------------------------------------------------------------------
    def series(self, **chosen: Any) -> dict[str, dict[str, float | int]]:
        """The precomputed point: ``point``'s numbers read from ``data()`` by the JavaScript's arithmetic."""
        d, p = self.data(), self._chosen(chosen)
        idx = [self.options[k].index(p[k]) for k in self.options]
        return {kind: dict(zip(STAT_KEYS, d["stats"][kind][sum(i * s for i, s in zip(idx, d["keys"][kind]))]))
                for kind in KINDS}

    def data(self) -> dict[str, Any]:
        """Everything the static view needs, as JSON-ready data: per batcher, one epoch's numbers at every
        combination of the controls it uses (``keys``: its strides over the three controls)."""
        if self._data is None:
            names = list(self.options)
            sizes = [len(self.options[k]) for k in names]
            stats, keys = {}, {}
            for kind in KINDS:
                used = USES[kind]
                keys[kind] = [math.prod(s for k, s in zip(names[i + 1:], sizes[i + 1:]) if k in used)
                              if names[i] in used else 0 for i in range(len(names))]
                stats[kind] = [self.stats(kind, **dict(zip(used, values)))
                               for values in itertools.product(*(self.options[k] for k in used))]
            self._data = {
                "v": 1, "kind": "sequences", "title": self.title, "batchers": list(KINDS),
                "controls": [{"name": k, "label": LABELS[k], "kind": "slider", "values": list(v),
                              "shown": [str(x) for x in v], "size": len(v),
                              "init": v.index(self.initial[k])} for k, v in self.options.items()],
                "keys": keys, "stats": stats,
                "steps_max": max(row[1] for rows in stats.values() for row in rows),
            }
        return self._data

    # -- views -----------------------------------------------------------------------------------------------
    def _view(self) -> tuple[str, str]:
        return SEQUENCES_JS, SEQUENCES_CSS

    def _build_widget(self):
        return _sequences_widget(self)

    def __repr__(self) -> str:
        sizes = self._controls()
        return (f"SequencesPanel({len(self.sequences)} sequences, {self.tokens} tokens, seed={self.seed}; "
                f"controls: {sizes})")


def sequences_panel(sequences, labels=None, *, batch: Sequence[int] = BATCHES,
                    max_tokens: Sequence[int] = BUDGETS, pool: Sequence[int] = POOLS, seed: int = 0,
                    initial: Mapping[str, Any] | None = None, title: str | None = None) -> SequencesPanel:
    """Sliders for the batch size B, the token budget T and the pool → the padding fraction and the number
    of batches of one epoch of ``RandomBatcher`` (global and dynamic padding), ``BucketBatcher`` and
    ``TokenBatcher`` on ``sequences``.

    Args:
        sequences: 1-D int64 token tensors (e.g. ``text.load("sms-spam").x_train``); labels: their labels
            (default: zeros; only the lengths matter for the numbers).
        batch, max_tokens, pool: the options of the sliders (every budget ≥ the longest sequence).
        seed: the batchers' seed (the same seed serves the same epoch).
        initial: the values to start from (default: the middle option of each slider).

    Example::

        sequences_panel(d.x_train, d.y_train, batch=[32, 64], max_tokens=[512, 1280])
    """
    return SequencesPanel(sequences, labels, batch=batch, max_tokens=max_tokens, pool=pool, seed=seed,
                          initial=initial, title=title)


def readout(chosen: Mapping[str, int], point: Mapping[str, Mapping[str, float]]) -> str:
    """One line: the point, then each batcher's padding fraction and batches per epoch."""
    parts = " · ".join(f"{k} {point[k]['padding']:.3f} in {point[k]['steps']}" for k in KINDS)
    return (f"B {chosen['batch']}, T {chosen['max_tokens']}, pool {chosen['pool']}: padding in batches: "
            f"{parts} (token batches of {point['tokens']['min_batch']} to {point['tokens']['max_batch']})")


def _sequences_widget(panel: SequencesPanel):
    """An ``ipywidgets.VBox``: title, the three sliders, the bars (in an ``Output``) and the readout."""
    import ipywidgets as W

    style = {"description_width": "initial"}
    inputs = {name: W.SelectionSlider(options=list(values), value=panel.initial[name],
                                      description=LABELS[name], continuous_update=False, style=style)
              for name, values in panel.options.items()}

    def draw(chosen):
        point = panel.point(**chosen)
        return plot_sequences(point), readout(chosen, point)

    return live_view(panel, inputs, draw)


def plot_sequences(point: Mapping[str, Mapping[str, float]], figsize=(8.0, 2.8)):
    """``SequencesPanel.point`` drawn: the padding fraction and the batches per epoch of each batcher."""
    import matplotlib.pyplot as plt

    fig, (pad, steps) = plt.subplots(1, 2, figsize=figsize, sharey=True, layout="constrained")
    y = range(len(KINDS))
    pad.barh(y, [point[k]["padding"] for k in KINDS], color="C1")
    steps.barh(y, [point[k]["steps"] for k in KINDS], color="C0")
    pad.set(yticks=list(y), yticklabels=list(KINDS), xlim=(0, 1), xlabel="padding fraction")
    steps.set(xlabel="batches per epoch", xscale="log")
    pad.invert_yaxis()
    return fig


SEQUENCES_CSS = """
.labkit-panel .lk-pad{fill:#c2410c;fill-opacity:.8}
.labkit-panel .lk-steps{fill:#2563eb;fill-opacity:.8}
"""

SEQUENCES_JS = r"""
// the sequences panel: controls → each batcher's precomputed epoch (looked up, not computed) → SVG bars
window.labkitKit.panels.sequences = function (root, data, ui) {
  "use strict";
  var esc = window.labkitKit.esc, controls = data.controls, idx = ui.idx;
  var at = function (kind) {
    var k = 0;
    idx.forEach(function (j, i) { k += j * data.keys[kind][i]; });
    return data.stats[kind][k];
  };

  function update() {
    controls.forEach(function (c, i) { ui.outputs[i].textContent = c.shown[idx[i]]; });
    var rows = data.batchers.map(function (kind) { return [kind, at(kind)]; });
    ui.plot.innerHTML = draw(rows);
    var v = function (i) { return controls[i].values[idx[i]]; }, tok = rows[3][1];
    ui.readout.textContent = "B " + v(0) + ", T " + v(1) + ", pool " + v(2) + ": padding in batches: " +
      rows.map(function (r) { return r[0] + " " + r[1][0].toFixed(3) + " in " + r[1][1]; })
        .join(" \u00b7 ") + " (token batches of " + tok[2] + " to " + tok[3] + ")";
    root.setAttribute("data-state", "ok");
  }

  function draw(rows) {
    var W = 660, left = 70, mid = 360, right = 14, top = 26, row = 30, H = top + rows.length * row + 34;
    var wp = mid - left - 40, ws = W - mid - right - 40;
    var s = ['<svg viewBox="0 0 ' + W + " " + H + '" role="img" aria-label="padding and batches per epoch">'];
    s.push('<text x="' + left + '" y="14">padding fraction (0 to 1)</text>');
    s.push('<text x="' + mid + '" y="14">batches per epoch (log axis, 1 to ' + data.steps_max + ")</text>");
    rows.forEach(function (r, i) {
      var y = top + i * row, p = r[1][0], n = r[1][1];
      s.push('<text x="' + (left - 8) + '" y="' + (y + 15) + '" text-anchor="end">' + esc(r[0]) + "</text>");
      s.push('<rect class="lk-pad" x="' + left + '" y="' + y + '" height="20" width="' + (wp * p).toFixed(1) +
             '"/><text x="' + (left + wp * p + 4).toFixed(1) + '" y="' + (y + 15) + '">' + p.toFixed(3) +
             "</text>");
      var w = ws * Math.log(n) / Math.log(Math.max(data.steps_max, 2));
      s.push('<rect class="lk-steps" x="' + mid + '" y="' + y + '" height="20" width="' + w.toFixed(1) +
             '"/><text x="' + (mid + w + 4).toFixed(1) + '" y="' + (y + 15) + '">' + n + "</text>");
    });
    var base = top + rows.length * row + 4;
    s.push('<path class="lk-axis" d="M' + left + " " + (top - 4) + "V" + base + "H" + (left + wp) + '"/>');
    s.push('<path class="lk-axis" d="M' + mid + " " + (top - 4) + "V" + base + "H" + (mid + ws) + '"/>');
    s.push('<text x="' + left + '" y="' + (base + 22) + '">global: padded to the longest sequence; ' +
           "dynamic: to the batch's longest; bucket, tokens: sorted pools</text>");
    s.push("</svg>");
    return s.join("");
  }
  return update;
};
"""
