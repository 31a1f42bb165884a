"""`Stateful`: one generic ``state_dict()`` / ``load_state_dict()`` for small pure-Python objects.

The state is the object's attributes, copied into plain containers (dict, list, int, float, str), so it
survives ``json.dump`` and ``torch.save``/``torch.load(weights_only=True)``. Nested ``Stateful`` attributes
are saved through their own ``state_dict``; deques become lists and come back as deques. The key ``class``
names the class that saved the state.

Loading is strict, and all or nothing: the state must be a dict with exactly the keys ``state_dict()``
writes, saved by the same class; each value must have the type of the attribute it replaces (an int for an
int, a finite number for a float; bool is not a number; an attribute that is None until set takes None or a
finite number); then the subclass's ``_check()`` re-checks its invariants (bounds, hyper-parameters). The
values are loaded into a copy and checked there: a refused state leaves the object as it was.
"""
from __future__ import annotations

import copy
import math
from collections import deque
from dataclasses import asdict, fields, is_dataclass
from typing import Any, ClassVar

CLASS_KEY = "class"


class StateKeyError(KeyError):
    """A state with missing or unknown keys. A ``KeyError`` whose message reads as a sentence."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class Stateful:
    """Mixin: everything in ``vars(self)`` is state, written once here rather than in each subclass.

    ``records`` names list attributes whose items are dataclasses (e.g. ``{"history": Decision}``): they are
    saved as dicts and rebuilt as that dataclass on load. Subclasses re-check their invariants in
    ``_check()`` (called on the loaded copy; raise ``ValueError``/``TypeError`` naming the bad value).
    """

    records: ClassVar[dict[str, type]] = {}

    def state_dict(self) -> dict[str, Any]:
        return {CLASS_KEY: type(self).__name__, **{name: _to_plain(value) for name, value in vars(self).items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load ``state`` (from ``state_dict()``), or raise and leave ``self`` unchanged."""
        owner = f"{type(self).__name__}.load_state_dict"
        if not isinstance(state, dict):
            raise TypeError(f"{owner} needs the dict that state_dict() returns, not {_short(state)}")
        saved_class = state.get(CLASS_KEY)
        if CLASS_KEY in state and saved_class != type(self).__name__:
            raise ValueError(f"{owner} got the state of another class, {saved_class!r}: load a "
                             f"{type(self).__name__}'s own state_dict()")
        expected = {CLASS_KEY, *vars(self)}
        missing, unknown = sorted(expected - set(state)), sorted(set(state) - expected, key=str)
        if missing or unknown:
            parts = ([f"missing keys {missing}"] if missing else []) + ([f"unknown keys {unknown}"] if unknown else [])
            raise StateKeyError(f"{owner} got {' and '.join(parts)}; expected exactly the keys of "
                                f"{type(self).__name__}.state_dict(): {sorted(expected)} "
                                f"(was the state saved from another class or version?)")
        trial = copy.deepcopy(self)
        try:
            trial._prepare(state)
            for name, saved in state.items():
                if name != CLASS_KEY:
                    setattr(trial, name, trial._loaded(name, getattr(trial, name), saved))
            trial._check()
        except (TypeError, ValueError) as error:
            message = str(error)
            prefix = "" if message.startswith(owner) else f"{owner} refused the state: "
            raise type(error)(prefix + message) from None
        vars(self).update(vars(trial))

    # -- hooks for subclasses -------------------------------------------------------------------------
    def _prepare(self, state: dict[str, Any]) -> None:
        """Before the values load: e.g. rebuild a nested object whose class the saved state decides."""

    def _check(self) -> None:
        """After the values load (on a copy): re-check invariants; raise ValueError/TypeError if broken."""

    # -- one value ------------------------------------------------------------------------------------
    def _loaded(self, name: str, current: Any, saved: Any) -> Any:
        if isinstance(current, Stateful):
            current.load_state_dict(saved)
            return current
        if name in self.records:
            return [_record(name, self.records[name], item) for item in _list(name, saved)]
        if current is None or saved is None:
            if saved is not None:
                _number(name, saved)
            return copy.deepcopy(saved)
        if isinstance(current, bool):
            if not isinstance(saved, bool):
                raise TypeError(f"{name}={_short(saved)} must be True or False, as state_dict() saves it")
            return saved
        if isinstance(current, int):
            if isinstance(saved, bool) or not isinstance(saved, int):
                raise TypeError(f"{name}={_short(saved)} must be an integer{' (a bool is not one)' if isinstance(saved, bool) else ''}, "
                                f"as state_dict() saves it")
            return saved
        if isinstance(current, float):
            return float(_number(name, saved))
        if isinstance(current, str):
            if not isinstance(saved, str):
                raise TypeError(f"{name}={_short(saved)} must be a string, as state_dict() saves it")
            return saved
        if isinstance(current, deque):
            items = _plain(name, _list(name, saved))
            if current.maxlen is not None and len(items) > current.maxlen:
                raise ValueError(f"{name} holds {len(items)} values: expected at most {current.maxlen}")
            return deque(items, maxlen=current.maxlen)
        if isinstance(current, (list, tuple)):
            return _plain(name, _list(name, saved))
        if isinstance(current, dict):
            if not isinstance(saved, dict):
                raise TypeError(f"{name}={_short(saved)} must be a dict, as state_dict() saves it")
            return _plain(name, saved)
        if not isinstance(saved, type(current)):
            raise TypeError(f"{name}={_short(saved)} must be a {type(current).__name__}, as state_dict() saves it")
        return copy.deepcopy(saved)


def _to_plain(value: Any) -> Any:
    if isinstance(value, Stateful):
        return value.state_dict()
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    if isinstance(value, (list, tuple, deque)):
        return [_to_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    return copy.deepcopy(value)


def _short(value: Any) -> str:
    text = repr(value)
    text = text if len(text) <= 60 else text[:57] + "..."
    return text if isinstance(value, (int, float, str, type(None))) else f"{type(value).__name__} {text}"


def _number(name: str, value: Any) -> float | int:
    """A finite int or float (bool refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}={_short(value)} must be a number, as state_dict() saves it")
    if not math.isfinite(value):
        raise ValueError(f"{name}={value} is not finite: expected a finite number")
    return value


def _list(name: str, value: Any) -> list:
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"{name}={_short(value)} must be a list, as state_dict() saves it")
    return list(value)


def _plain(name: str, value: Any) -> Any:
    """A deep copy of plain data (None, bool, str, finite numbers, lists, dicts); anything else is refused."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, float)):
        return _number(name, value)
    if isinstance(value, (list, tuple)):
        return [_plain(name, v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(f"{name}[{k!r}]", v) for k, v in value.items()}
    raise TypeError(f"{name} holds {_short(value)}: expected plain data (numbers, strings, lists, dicts)")


_SIMPLE = {"int": int, "float": (int, float), "str": str, "bool": bool}


def _record(name: str, kind: type, item: Any):
    """Rebuild one dataclass record, checking its keys and its simple (int, float, str, bool) fields."""
    if not isinstance(item, dict):
        raise TypeError(f"{name} entry {_short(item)} must be a dict of {kind.__name__}'s fields")
    names = [f.name for f in fields(kind)]
    if sorted(item) != sorted(names):
        raise ValueError(f"{name} entry {_short(item)} has keys {sorted(item)}: expected {kind.__name__}'s "
                         f"fields {names}")
    for f in fields(kind):
        wanted = _SIMPLE.get(f.type if isinstance(f.type, str) else getattr(f.type, "__name__", ""))
        value = item[f.name]
        if wanted is not None and (not isinstance(value, wanted) or (wanted is not bool and isinstance(value, bool))):
            raise TypeError(f"{name} entry {f.name}={_short(value)} must be of type {f.type}")
    return kind(**item)
