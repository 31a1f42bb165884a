"""The live face of a trajectory panel: ipywidgets controls that re-run the strategy in the kernel.

Same controls and options as the static view (the panel's grid), but each change builds a fresh strategy
with ``labkit.strategies.build`` and steps it, so the reasons in ``history`` are at hand too.
"""
from __future__ import annotations

import html
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from labkit.widgets.panel import TrajectoryPanel


def _label(value) -> str:
    return value if isinstance(value, str) else f"{value:g}"


def build_widget(panel: "TrajectoryPanel"):
    """An ``ipywidgets.VBox``: title, controls, the plot (in an ``Output``) and a one-line readout."""
    import ipywidgets as W
    import matplotlib.pyplot as plt
    from IPython.display import display

    from labkit.widgets.plot import plot_trajectories

    style = {"description_width": "initial"}
    inputs = {}
    chosen = dict(panel.initial)
    for c in panel.controls:
        options = c.options(chosen)
        if c.kind == "choice":
            w = W.Dropdown(options=list(options), value=chosen[c.name], description=c.label, style=style)
        else:
            w = W.SelectionSlider(options=[(_label(v), v) for v in options], value=chosen[c.name],
                                  description=c.label, continuous_update=False, style=style)
        inputs[c.name] = w
    lr_select = (W.Dropdown(options=list(panel.lr_rules), description="LR rule", style=style)
                 if panel.lr_rules else None)
    out = W.Output()
    readout = W.HTML()
    busy = {"on": False}

    def redraw(change=None):
        if busy["on"]:
            return
        busy["on"] = True
        try:
            # dependent option lists (a per change) follow their control, keeping the slider position
            values = {}
            for c in panel.controls:
                w = inputs[c.name]
                if c.depends:
                    options = c.options(values)
                    old = [value for _, value in w.options]
                    position = old.index(w.value) if w.value in old else c.init
                    w.options = [(_label(v), v) for v in options]
                    w.value = options[min(position, len(options) - 1)]
                values[c.name] = w.value
                w.disabled = bool(c.when) and values[c.when[0]] != c.when[1]
        finally:
            busy["on"] = False
        try:
            strategy = panel.run(**values)
        except (ValueError, TypeError) as err:
            readout.value = f"<span style='color:#b91c1c'>{html.escape(str(err))}</span>"
            out.clear_output()
            return
        first = strategy.history[0].old if strategy.history else strategy.batch_size
        sizes = [first] + [d.new for d in strategy.history]
        signal = panel.signal_name
        with out:
            out.clear_output(wait=True)
            lr = panel.lr_series(sizes, lr_select.value) if lr_select else None
            fig = plot_trajectories(sizes, signal=panel.signals.get(signal) if signal else None,
                                    signal_label=signal or "", lr=lr,
                                    bounds=(strategy.min_batch, strategy.max_batch))
            display(fig)
            plt.close(fig)
        changes = sum(1 for d in strategy.history if d.new != d.old)
        last = strategy.history[-1].reason if strategy.history else ""
        readout.value = (f"B: {sizes[0]} → {sizes[-1]} · mean {sum(sizes) / len(sizes):.1f} · changes {changes}"
                         f" · last reason: <i>{html.escape(last)}</i>")

    widgets = list(inputs.values()) + ([lr_select] if lr_select else [])
    for w in widgets:
        w.observe(redraw, names="value")
    redraw()
    controls = W.HBox(widgets, layout=W.Layout(flex_flow="row wrap"))
    return W.VBox([W.HTML(f"<b>{html.escape(panel.title)}</b>"), controls, out, readout])
