"""``trajectory_panel``: sliders for a strategy's parameters → its batch-size trajectory, live or static.

The panel is one object with two faces, returned together by ``_repr_mimebundle_``:

* ``application/vnd.jupyter.widget-view+json``: ipywidgets controls and a matplotlib plot, recomputed live
  by the kernel (Jupyter shows this one when a kernel is running);
* ``text/html``: the same controls in plain HTML and JavaScript over a precomputed grid, for the built
  book where there is no kernel (the book's config tells myst-nb to prefer it).

Both views read the same controls and the same signals, and the static grid is produced by the same
``labkit.strategies`` code the live view calls, so they agree point for point (tests check it).
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from labkit.checks import check_float, check_int
from labkit.strategies import LR_RULES, Strategy, build, parameters, scaled_lr
from labkit.widgets.base import Panel
from labkit.widgets.grid import (MAX_POINTS, Control, check_signals, make_controls, precompute,
                                 strategy_defaults, strides, trajectory, values_at)
from labkit.widgets.static import render_html
from labkit.widgets.synthetic import default_signals

SIGNAL_LABELS = {
    "loss": "loss fed to step(loss=…)",
    "entropy": "mean entropy H (nats) fed to step(entropy=…)",
    "gns": "noise scale B_simple fed to step(gns=…)",
}


class TrajectoryPanel(Panel):
    """A strategy, a grid of parameter values, and the trajectory at every grid point.

    Build it with ``trajectory_panel``; display it in Jupyter (live) or in the book (static HTML).
    ``panel.trajectory(alpha=0.5)`` reads one precomputed trajectory; ``panel.run(alpha=0.5)`` builds and
    steps a fresh strategy (its ``history`` has the reasons).
    """

    def __init__(self, name: str, steps: int = 40, signals: Mapping[str, Sequence[float]] | None = None, *,
                 initial: Mapping[str, Any] | None = None, title: str | None = None,
                 lr_rule: str | Sequence[str] | None = None, base_lr: float = 0.1,
                 max_points: int = MAX_POINTS, **ranges: Any):
        parameters(name)  # a clear ValueError for an unknown strategy
        self.name = name
        self.steps = check_int("steps", steps, low=1, high=1000)
        self.max_points = check_int("max_points", max_points, low=1)
        self.lr_rules = _lr_rules(lr_rule)
        self.base_lr = check_float("base_lr", base_lr, low=0.0, low_open=True)
        self.controls, self.fixed = make_controls(name, ranges, initial)
        num_classes = self.fixed.get("num_classes", strategy_defaults(name).get("num_classes") or 10)
        self.synthetic = signals is None
        self.signals = (default_signals(name, self.steps, num_classes=num_classes) if signals is None
                        else check_signals(name, signals, self.steps))
        self.lookup, self.runs, self.errors = precompute(name, self.controls, self.fixed, self.steps,
                                                         self.signals, self.max_points)
        if not self.runs:
            raise ValueError(f"no grid point of trajectory_panel({name!r}) gives a valid strategy; "
                             f"for example: {self.errors[0]}")
        start = self._ident(self.initial)
        if start < 0:
            raise ValueError(f"the panel's initial point {self.initial} is invalid: {self.errors[-1 - start]}; "
                             f"choose other options or pass initial={{...}}")
        self.title = title or self._default_title()

    # -- reading the grid ---------------------------------------------------------------------------------
    @property
    def initial(self) -> dict[str, Any]:
        """The control values the panel starts from."""
        return values_at(self.controls, [c.init for c in self.controls])

    def params(self, **chosen: Any) -> dict[str, Any]:
        """All keyword arguments for ``build`` at a point: fixed values, then the controls (``chosen``
        overrides the initial values)."""
        names = [c.name for c in self.controls]
        unknown = [k for k in chosen if k not in names]
        if unknown:
            raise TypeError(f"{unknown[0]!r} is not a control of this panel; its controls are: "
                            f"{', '.join(names) or '(none)'}")
        return {**self.fixed, **self.initial, **chosen}

    def run(self, **chosen: Any) -> Strategy:
        """A fresh strategy built at the point and stepped over the panel's signals (the live path)."""
        strategy = build(self.name, **self.params(**chosen))
        trajectory(strategy, self.steps, self.signals)
        return strategy

    def trajectory(self, **chosen: Any) -> list[int]:
        """The precomputed B_0 … B_steps at the point (``ValueError`` with the reason if it is invalid)."""
        ident = self._ident({**self.initial, **chosen})
        if ident < 0:
            raise ValueError(self.errors[-1 - ident])
        return list(self.runs[ident])

    def lr_series(self, sizes: Sequence[int], rule: str) -> list[float]:
        """The learning rate at each B_k of a trajectory, tuned (``base_lr``) for its first batch B_0."""
        return [scaled_lr(self.base_lr, sizes[0], b, rule) for b in sizes]

    def _ident(self, chosen: Mapping[str, Any]) -> int:
        index, picked = [], {}
        for c in self.controls:
            options = c.options(picked)
            value = chosen.get(c.name)
            if value not in options:
                raise ValueError(f"{c.name}={value!r} is not on the panel's grid: options are {list(options)}")
            picked[c.name] = value
            active = not c.when or picked[c.when[0]] == c.when[1]
            index.append(options.index(value) if active else 0)
        key = sum(i * s for i, s in zip(index, strides(self.controls)))
        return self.lookup[key]

    # -- views ----------------------------------------------------------------------------------------------
    def data(self) -> dict[str, Any]:
        """Everything the static view needs, as JSON-ready plain data."""
        base = {k: v for k, v in {**strategy_defaults(self.name), **self.fixed}.items()
                if isinstance(v, (int, float, str)) or v is None}
        lows, highs = [], []
        for bound, bucket in (("min_batch", lows), ("max_batch", highs)):
            control = next((c for c in self.controls if c.name == bound), None)
            bucket.extend(control.values if control else [base[bound]])
        sizes = [b for run in self.runs for b in run]
        ymin = 2 ** math.floor(math.log2(max(min(sizes + lows), 1)))
        ymax = 2 ** math.ceil(math.log2(max(sizes + highs)))
        signal = self.signal_name
        return {
            "v": 1,
            "name": self.name,
            "title": self.title,
            "steps": self.steps,
            "controls": [_control_data(c) for c in self.controls],
            "strides": strides(self.controls),
            "fixed": {k: v for k, v in self.fixed.items() if not isinstance(v, Mapping)},
            "base": base,
            "ymin": ymin,
            "ymax": max(ymax, ymin * 2),
            "signal": None if signal is None else {
                "name": signal, "label": SIGNAL_LABELS.get(signal, signal) + (" (synthetic)" if self.synthetic else ""),
                "values": [round(v, 4) for v in self.signals[signal]]},
            "lr": None if not self.lr_rules else {
                "rules": list(self.lr_rules), "base_lr": self.base_lr,
                "values": {rule: [[float(f"{lr:.4g}") for lr in self.lr_series(run, rule)] for run in self.runs]
                           for rule in self.lr_rules}},
            "lookup": {str(k): v for k, v in self.lookup.items()},
            "runs": self.runs,
            "errors": self.errors,
        }

    @property
    def signal_name(self) -> str | None:
        """The signal drawn under the trajectory: the first one the strategy reads, if given."""
        from labkit.strategies import STRATEGIES

        return next((s for s in STRATEGIES[self.name].uses if s in self.signals and not callable(self.signals[s])),
                    None)

    def to_html(self) -> str:
        """The kernel-free interactive version: HTML + inline JavaScript + embedded JSON, no external URL."""
        return render_html(self.data())

    def _build_widget(self):
        from labkit.widgets.live import build_widget

        return build_widget(self)

    def __repr__(self) -> str:
        sizes = " × ".join(f"{c.name}[{c.size}]" for c in self.controls) or "no controls"
        return (f"TrajectoryPanel({self.name!r}, steps={self.steps}, controls: {sizes}; "
                f"{len(self.lookup)} grid points, {len(self.runs)} distinct trajectories)")

    def _default_title(self) -> str:
        signal = self.signal_name
        fed = f", fed a {'synthetic ' if self.synthetic else ''}{signal} curve" if signal else ""
        return f"{self.name}: batch size over {self.steps} decisions{fed}"


def trajectory_panel(name: str, steps: int = 40, signals: Mapping[str, Sequence[float]] | None = None, *,
                     initial: Mapping[str, Any] | None = None, title: str | None = None,
                     lr_rule: str | Sequence[str] | None = None, base_lr: float = 0.1,
                     max_points: int = MAX_POINTS, **ranges: Any) -> TrajectoryPanel:
    """Sliders and dropdowns for a strategy's parameters, drawing its batch-size trajectory.

    Args:
        name: a strategy name for ``labkit.strategies.build`` ("linear", "loss", "cyclical", ...).
        steps: number of ``step()`` decisions to simulate (the x axis).
        signals: ``{signal: sequence}`` fed to the strategy, reading k to decision k, e.g.
            ``{"loss": recorded_losses}``; ``None`` uses a synthetic curve for the signals the strategy
            needs (``labkit.widgets.synthetic_loss`` and friends).
        initial: the control values to start from (default: the strategy's defaults where on the grid).
        title: the panel's heading.
        lr_rule: also draw the learning rate coupled to the batch, ``lr_k = scaled_lr(base_lr, B_0, B_k,
            rule)``: one rule ("linear", "sqrt", "none") or a list of them (a dropdown).
        base_lr: the learning rate tuned for the first batch size B_0.
        max_points: refuse grids with more distinct points than this (they are embedded in the page).
        **ranges: per parameter of the strategy, a list of options (a slider for numbers, a dropdown for
            strings), a single value (fixed), or ``None`` (the default options). ``a`` may be a dict
            keyed by ``change``: ``a={"exponential": [1.5, 2], "linear": [16, 32]}``.
            Parameters not given get default options where one is defined (a, α, K, B_init, bounds, modes).

    Example::

        trajectory_panel("loss", steps=40, delta=["diff", "ema", "variance"], alpha=[0.1, 0.3, 0.9])
    """
    return TrajectoryPanel(name, steps, signals, initial=initial, title=title, lr_rule=lr_rule, base_lr=base_lr,
                           max_points=max_points, **ranges)


def _lr_rules(lr_rule) -> tuple[str, ...]:
    if lr_rule is None:
        return ()
    rules = (lr_rule,) if isinstance(lr_rule, str) else tuple(lr_rule)
    bad = [r for r in rules if r not in LR_RULES]
    if bad or not rules:
        raise ValueError(f"lr_rule={lr_rule!r}: expected one of {', '.join(map(repr, LR_RULES))} or a list of them")
    return rules


def _control_data(c: Control) -> dict[str, Any]:
    values = {k: list(v) for k, v in c.values.items()} if isinstance(c.values, dict) else list(c.values)
    return {"name": c.name, "label": c.label, "kind": c.kind, "values": values, "size": c.size,
            "init": c.init, "depends": c.depends, "when": list(c.when) if c.when else None}

