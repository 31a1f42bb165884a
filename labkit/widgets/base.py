"""The base class of every panel: one object with two faces, returned together by ``_repr_mimebundle_``.

* ``text/html``: ``to_html()``, the kernel-free view (``labkit.widgets.static``: HTML, the grid as JSON,
  inline JavaScript), shown by the built book where there is no kernel;
* ``application/vnd.jupyter.widget-view+json``: ``widget()``, the live ipywidgets view, added only inside a
  Jupyter kernel (Jupyter prefers it there).

A subclass writes ``data()``, ``to_html()`` and ``_build_widget()``; the rest lives here once. A panel over
a grid of control values (``GridPanel``) also gets its start, its checks and its index arithmetic here.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, Callable, ClassVar, Mapping

from labkit.widgets.static import render_fragment


class Panel(ABC):
    """Display plumbing shared by ``TrajectoryPanel`` and ``NoisePanel``."""

    _widget = None   # the live view, built on first use

    @abstractmethod
    def to_html(self) -> str:
        """The kernel-free interactive version: HTML + inline JavaScript + embedded JSON, no external URL."""

    @abstractmethod
    def _build_widget(self):
        """The live ipywidgets view (an ``ipywidgets.VBox``)."""

    def widget(self):
        """The live ipywidgets view (built once, on first use)."""
        if self._widget is None:
            self._widget = self._build_widget()
        return self._widget

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict[str, Any]:
        bundle = {"text/plain": repr(self), "text/html": self.to_html()}
        if _kernel_running():
            view = self.widget()._repr_mimebundle_()
            if view:
                bundle.update({k: v for k, v in view.items() if k != "text/plain"})
        return bundle


class GridPanel(Panel):
    """A panel whose controls take values from ``options`` ({control: its values}, in order): every
    combination is a grid point, flat index Σ index_c · stride_c with the last control varying fastest (the
    JavaScript uses the same). A subclass sets ``options`` and then ``initial = self._start(defaults,
    initial)``."""

    options: dict[str, tuple]
    initial: dict[str, Any]
    kind: ClassVar[str]          # the static view's script name
    tag: ClassVar[str | None] = None    # its data-panel attribute (default: kind)

    @abstractmethod
    def data(self) -> dict[str, Any]:
        """Everything the static view needs, as JSON-ready data."""

    @abstractmethod
    def _view(self) -> tuple[str, str]:
        """The static view's JavaScript and CSS."""

    def to_html(self) -> str:
        """The kernel-free interactive version: HTML + inline JavaScript + embedded JSON, no external URL."""
        script, style = self._view()
        return render_fragment(self.data(), script, self.kind, attrs={"data-panel": self.tag or self.kind},
                               css=style)

    def _value(self, name: str, value: Any) -> Any:
        """A control's value as the grid holds it (a subclass may convert, e.g. a list to a tuple)."""
        return value

    def _start(self, defaults: Mapping[str, Any], initial: Mapping[str, Any] | None) -> dict[str, Any]:
        """``defaults`` with ``initial`` on top, every given value checked against the grid."""
        start = dict(defaults)
        for name, value in dict(initial or {}).items():
            value = self._value(name, value)
            if name not in self.options or value not in self.options[name]:
                raise ValueError(f"initial {name}={value!r} is not on the grid: options are "
                                 f"{self.options.get(name, list(self.options))}")
            start[name] = value
        return start

    def _chosen(self, chosen: Mapping[str, Any]) -> dict[str, Any]:
        """The initial values with ``chosen`` on top; an unknown control is a TypeError, a value off the
        grid a ValueError, each naming what is allowed."""
        unknown = [k for k in chosen if k not in self.options]
        if unknown:
            raise TypeError(f"{unknown[0]!r} is not a control of this panel; its controls are: "
                            f"{', '.join(self.options)}")
        out = {**self.initial, **{k: self._value(k, v) for k, v in chosen.items()}}
        for name, value in out.items():
            if value not in self.options[name]:
                raise ValueError(f"{name}={value!r} is not on the panel's grid: options are {self.options[name]}")
        return out

    @property
    def strides(self) -> list[int]:
        """Mixed-radix strides of the controls, the last varying fastest."""
        sizes = [len(v) for v in self.options.values()]
        return [math.prod(sizes[i + 1:]) for i in range(len(sizes))]

    def _index(self, chosen: Mapping[str, Any]) -> int:
        """The flat grid index of a full set of control values."""
        return sum(self.options[k].index(chosen[k]) * s for k, s in zip(self.options, self.strides))

    def _controls(self) -> str:
        """'name[n] × ...', the grid's shape for ``__repr__``."""
        return " × ".join(f"{k}[{len(v)}]" for k, v in self.options.items())


def live_view(panel: Panel, inputs: Mapping[str, Any], draw: Callable[[dict[str, Any]], tuple[Any, str]]):
    """The live ipywidgets view of a grid panel: its title, the control widgets ``inputs`` ({control:
    widget}), and ``draw(chosen) -> (matplotlib figure, readout line)`` shown in an ``Output`` and a line
    below it, redrawn whenever a control moves."""
    import html

    import ipywidgets as W
    import matplotlib.pyplot as plt
    from IPython.display import display

    out, line = W.Output(), W.HTML()

    def redraw(change=None):
        fig, text = draw({k: w.value for k, w in inputs.items()})
        with out:
            out.clear_output(wait=True)
            display(fig)
            plt.close(fig)
        line.value = html.escape(text)

    for w in inputs.values():
        w.observe(redraw, names="value")
    redraw()
    controls = W.HBox(list(inputs.values()), layout=W.Layout(flex_flow="row wrap"))
    return W.VBox([W.HTML(f"<b>{html.escape(panel.title)}</b>"), controls, out, line])


def _kernel_running() -> bool:
    """True inside a Jupyter kernel (where a widget view can be live), False in plain Python or pytest."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None
