"""The grid behind a trajectory panel: which controls a strategy gets, and its trajectory at every point.

A panel has *controls* (a slider over a few numbers, or a dropdown over a few modes) and *fixed* values.
Every combination of control values is a grid point; at each point the strategy is built with
``labkit.strategies.build`` and stepped ``steps`` times on the same signal sequence. Two refinements keep
the grid small:

* ``when``: a control that only matters for one mode (α only for ``delta="ema"``, K only for
  ``delta="variance"``) is pinned to its first option elsewhere, so those points are computed once;
* ``depends``: the options of ``a`` can depend on ``change`` (a factor ×a for exponential change, a step
  +a samples for linear change), so one slider serves both meanings.

Everything here is pure Python and independent of ipywidgets and the browser.
"""
from __future__ import annotations

import inspect
import itertools
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from labkit.checks import check_int
from labkit.strategies import STRATEGIES, Strategy, build, parameters

MAX_POINTS = 5000  # distinct grid points a panel may precompute (each is `steps` calls of step())

# A control's default options, label and ``when`` come from the strategy's ``Param`` declarations
# (``labkit.strategies.base.Param``), so a new strategy brings its own.
DEPENDS = {"a": "change"}                      # a dict of options for `a` is keyed by the value of `change`
SINGLE_VALUED = ("milestones", "num_classes")  # must be one value per panel (the signals depend on them)
ORDER_LAST = ("b_init", "min_batch", "max_batch", "multiple_of")
CHOICE_ORDER = ("delta", "mode", "change")


@dataclass(frozen=True)
class Control:
    """One slider or dropdown: its options, the initial option's index, and how it relates to others."""

    name: str
    values: tuple | dict             # the options; a dict {value of `depends`: options} when they depend
    init: int                        # index of the initial option
    depends: str | None = None       # the control whose value selects the option list
    when: tuple[str, str] | None = None  # (control, value): this control matters only then
    label: str = ""                  # shown beside the control (default: the name)

    @property
    def kind(self) -> str:
        first = next(iter(self.values.values()))[0] if isinstance(self.values, dict) else self.values[0]
        return "choice" if isinstance(first, str) else "slider"

    @property
    def size(self) -> int:
        return len(next(iter(self.values.values())) if isinstance(self.values, dict) else self.values)

    def options(self, chosen: Mapping[str, Any]) -> tuple:
        """The option list, given the values already chosen for the other controls."""
        return self.values[chosen[self.depends]] if isinstance(self.values, dict) else self.values


def strategy_defaults(name: str) -> dict[str, Any]:
    """The default of every keyword parameter ``build(name, ...)`` accepts."""
    defaults = {}
    for klass in reversed(STRATEGIES[name].__mro__):
        if klass is object or "__init__" not in vars(klass):
            continue
        for p in inspect.signature(klass.__init__).parameters.values():
            if p.default is not p.empty:
                defaults[p.name] = p.default
    return {p: defaults.get(p) for p in parameters(name)}


def make_controls(name: str, ranges: Mapping[str, Any], initial: Mapping[str, Any] | None = None
                  ) -> tuple[list[Control], dict[str, Any]]:
    """Split ``ranges`` (plus the defaults) into controls and fixed values, checking every argument.

    A value in ``ranges`` is a list of options (a control; one option means fixed), a dict for ``a`` keyed
    by ``change``, ``None`` for the default options, or a single value (fixed).
    """
    allowed = parameters(name)  # ValueError for an unknown strategy name
    unknown = [p for p in ranges if p not in allowed]
    if unknown:
        raise TypeError(f"trajectory_panel({name!r}) got an unexpected parameter {unknown[0]!r}; "
                        f"strategy {name!r} takes: {', '.join(allowed)}")
    initial = dict(initial or {})
    bad = [p for p in initial if p not in allowed]
    if bad:
        raise TypeError(f"initial={{{bad[0]!r}: ...}} names no parameter of {name!r}; it takes: {', '.join(allowed)}")
    defaults = strategy_defaults(name)

    options: dict[str, Any] = {}
    fixed: dict[str, Any] = {}
    for p in allowed:
        given = ranges.get(p)
        if given is None:
            given = STRATEGIES[name].param(p).options
            if given is None:
                continue  # the strategy's own default applies
        if isinstance(given, Mapping) and p in DEPENDS:
            options[p] = {key: _option_list(p, vals) for key, vals in given.items()}
        elif isinstance(given, (list, tuple, range)):
            values = _option_list(p, given)
            if len(values) > 1 and p in SINGLE_VALUED:
                raise ValueError(f"{p}={list(values)!r}: {p} must be a single value in a panel, "
                                 f"e.g. {p}={values[0]!r}")
            if len(values) == 1:
                fixed[p] = values[0]
            else:
                options[p] = values
        else:
            fixed[p] = given

    # `a` given per `change`: keep the list for the change in use, or check the keys cover every option.
    for p, dep in DEPENDS.items():
        if not isinstance(options.get(p), dict):
            continue
        table = options[p]
        if dep in options:
            missing = [v for v in options[dep] if v not in table]
            if missing:
                raise ValueError(f"{p}={table!r} gives no options for {dep}={missing[0]!r}: "
                                 f"add a list for each of {list(options[dep])}")
            sizes = {len(v) for v in (table[k] for k in options[dep])}
            if len(sizes) > 1:
                raise ValueError(f"{p}={table!r}: every list must have the same length (one slider serves "
                                 f"all values of {dep})")
            options[p] = {k: table[k] for k in options[dep]}
        else:
            key = fixed.get(dep, defaults.get(dep))
            if key not in table:
                raise ValueError(f"{p}={table!r} gives no options for {dep}={key!r}")
            chosen = table[key]
            if len(chosen) == 1:
                fixed[p] = chosen[0]
                del options[p]
            else:
                options[p] = chosen

    choices = sorted((p for p in allowed if p in options and _is_choice(options[p])),
                     key=lambda p: CHOICE_ORDER.index(p) if p in CHOICE_ORDER else len(CHOICE_ORDER))
    order = (choices
             + [p for p in allowed if p in options and not _is_choice(options[p]) and p not in ORDER_LAST]
             + [p for p in ORDER_LAST if p in options])
    controls: list[Control] = []
    chosen: dict[str, Any] = {}
    for p in order:
        values = options[p]
        depends = DEPENDS.get(p) if isinstance(values, dict) else None
        current = values[chosen[depends]] if depends else values
        if p in initial:
            want = initial.pop(p)
            if want not in current:
                raise ValueError(f"initial {p}={want!r} is not one of its options {list(current)}")
        else:
            want = defaults.get(p)
        init = current.index(want) if want in current else len(current) // 2
        declared = STRATEGIES[name].param(p)
        when = declared.when
        if when and when[0] not in options:
            # the mode is fixed: the control either always matters or never does
            if fixed.get(when[0], defaults.get(when[0])) != when[1]:
                fixed[p] = current[init]
                continue
            when = None
        elif when and when[1] not in options[when[0]]:
            fixed[p] = current[init]  # the mode it matters for is not offered
            continue
        controls.append(Control(p, values, init, depends, when, declared.label or p))
        chosen[p] = current[init]
    if initial:
        p = next(iter(initial))
        raise ValueError(f"initial={{{p!r}: ...}}: {p} is not a control of this panel (give it a list of "
                         f"options, e.g. {p}=[...], to make it one)")
    return controls, fixed


def _option_list(p: str, values: Sequence) -> tuple:
    values = tuple(values)
    if not values:
        raise ValueError(f"{p}=[]: give at least one value")
    kinds = {isinstance(v, str) for v in values}
    if len(kinds) > 1:
        raise TypeError(f"{p}={list(values)!r} mixes strings and numbers: use one kind")
    if kinds == {False}:
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise TypeError(f"{p}={list(values)!r}: every option must be a finite number, got {v!r}")
    if len(set(values)) != len(values):
        raise ValueError(f"{p}={list(values)!r} repeats an option: give each value once")
    return values


def _is_choice(values) -> bool:
    first = next(iter(values.values()))[0] if isinstance(values, dict) else values[0]
    return isinstance(first, str)


# -- grid points ----------------------------------------------------------------------------------------
def strides(controls: Sequence[Control]) -> list[int]:
    """Mixed-radix strides: flat index = Σ index_c · stride_c (the last control varies fastest)."""
    out, stride = [], 1
    for c in reversed(controls):
        out.append(stride)
        stride *= c.size
    return out[::-1]


def full_size(controls: Sequence[Control]) -> int:
    return math.prod(c.size for c in controls)


def canonical(controls: Sequence[Control], index: Sequence[int]) -> tuple[int, ...]:
    """The index with every control that does not matter here (its ``when`` is false) set to 0."""
    chosen = values_at(controls, index)
    return tuple(0 if c.when and chosen[c.when[0]] != c.when[1] else i for c, i in zip(controls, index))


def values_at(controls: Sequence[Control], index: Sequence[int]) -> dict[str, Any]:
    """The parameter values at a grid index (resolving dependent option lists in order)."""
    chosen: dict[str, Any] = {}
    for c, i in zip(controls, index):
        chosen[c.name] = c.options(chosen)[i]
    return chosen


def distinct_points(controls: Sequence[Control], max_points: int = MAX_POINTS) -> list[tuple[int, ...]]:
    """Every distinct (canonical) grid index, in order; a clear error when there are too many."""
    total = full_size(controls)
    if total > 50 * max_points:
        raise ValueError(_too_many(controls, total, max_points))
    seen = dict.fromkeys(canonical(controls, idx) for idx in itertools.product(*(range(c.size) for c in controls)))
    if len(seen) > max_points:
        raise ValueError(_too_many(controls, len(seen), max_points))
    return list(seen)


def _too_many(controls, count, max_points) -> str:
    sizes = " × ".join(f"{c.name} {c.size}" for c in controls)
    biggest = max(controls, key=lambda c: c.size)
    fewer = list(biggest.options(values_at(controls, [c.init for c in controls])))[:3]
    return (f"the panel's grid has {count} points ({sizes}), more than max_points={max_points}: give fewer "
            f"options, e.g. {biggest.name}={fewer!r}, or fix a parameter to one value")


# -- running a strategy -----------------------------------------------------------------------------------
def check_signals(name: str, signals: Mapping[str, Any], steps: int) -> dict[str, Any]:
    """Signals as ``{name: list of floats}`` cut to ``steps`` readings; every one the strategy needs present.
    A callable signal (a function of the batch size, see ``trajectory``) passes as it is."""
    if not isinstance(signals, Mapping):
        raise TypeError(f"signals={type(signals).__name__} must be a mapping such as {{'loss': [2.3, 2.1, ...]}}")
    needs = STRATEGIES[name].requires
    missing = [s for s in needs if s not in signals]
    if missing:
        raise ValueError(f"strategy {name!r} needs the signal {missing[0]!r}: pass signals={{{missing[0]!r}: "
                         f"[...{steps} values]}} or leave signals=None for a synthetic curve")
    out = {}
    for key, values in signals.items():
        if callable(values):
            out[str(key)] = values
            continue
        values = [float(v) for v in values]
        if len(values) < steps:
            raise ValueError(f"signals[{key!r}] has {len(values)} values but steps={steps}: "
                             f"give at least {steps} or lower steps to {len(values)}")
        if not all(math.isfinite(v) for v in values[:steps]):
            raise ValueError(f"signals[{key!r}] contains a NaN or infinite value")
        out[str(key)] = values[:steps]
    return out


def trajectory(strategy: Strategy, steps: int, signals: Mapping[str, Any] | None = None) -> list[int]:
    """Step ``strategy`` ``steps`` times, feeding reading k of every signal to call k; return B_0 … B_steps.

    B_0 is the batch size before the first decision; each later entry is what ``step()`` returned. A signal
    may also be a function of the current batch size, for signals the batch itself causes (closed loop):
    ``{"memory": MemoryModel(...)}`` feeds ``memory=model(B_k)`` to call k.
    """
    steps = check_int("steps", steps, low=0)
    signals = {} if signals is None else signals
    sizes = [strategy.batch_size]
    for k in range(steps):
        readings = {key: values(strategy.batch_size) if callable(values) else values[k]
                    for key, values in signals.items()}
        sizes.append(strategy.step(**readings))
    return sizes


def precompute(name: str, controls: Sequence[Control], fixed: Mapping[str, Any], steps: int,
               signals: Mapping[str, list[float]], max_points: int = MAX_POINTS
               ) -> tuple[dict[int, int], list[list[int]], list[str]]:
    """Run the strategy at every distinct grid point.

    Returns ``lookup`` {flat index of a canonical point: id}, ``runs`` (distinct trajectories) and
    ``errors`` (distinct messages of points the strategy refuses, e.g. b_init < min_batch); an id ≥ 0
    names ``runs[id]``, an id < 0 names ``errors[-1 - id]``.
    """
    stride = strides(controls)
    lookup: dict[int, int] = {}
    runs: list[list[int]] = []
    errors: list[str] = []
    run_ids: dict[tuple, int] = {}
    error_ids: dict[str, int] = {}
    for idx in distinct_points(controls, max_points):
        params = {**fixed, **values_at(controls, idx)}
        try:
            sizes = tuple(trajectory(build(name, **params), steps, signals))
        except (ValueError, TypeError) as err:
            msg = str(err)
            if msg not in error_ids:
                error_ids[msg] = -1 - len(errors)
                errors.append(msg)
            ident = error_ids[msg]
        else:
            if sizes not in run_ids:
                run_ids[sizes] = len(runs)
                runs.append(list(sizes))
            ident = run_ids[sizes]
        lookup[sum(i * s for i, s in zip(idx, stride))] = ident
    return lookup, runs, errors
