"""The base class of every panel: one object with two faces, returned together by ``_repr_mimebundle_``.

* ``text/html``: ``to_html()``, the kernel-free view (``labkit.widgets.static``: HTML, the grid as JSON,
  inline JavaScript), shown by the built book where there is no kernel;
* ``application/vnd.jupyter.widget-view+json``: ``widget()``, the live ipywidgets view, added only inside a
  Jupyter kernel (Jupyter prefers it there).

A subclass writes ``data()``, ``to_html()`` and ``_build_widget()``; the rest lives here once.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any


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


def _kernel_running() -> bool:
    """True inside a Jupyter kernel (where a widget view can be live), False in plain Python or pytest."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None
