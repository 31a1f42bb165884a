"""`Stateful`: one generic ``state_dict()`` / ``load_state_dict()`` for small pure-Python objects.

The state is the object's attributes, copied into plain containers (dict, list, int, float, str), so it
survives ``json.dump`` and ``torch.save``/``torch.load(weights_only=True)``. Nested ``Stateful`` attributes
are saved through their own ``state_dict``; deques become lists and come back as deques.
"""
from __future__ import annotations

import copy
from collections import deque
from dataclasses import asdict, is_dataclass
from typing import Any, ClassVar


class Stateful:
    """Mixin: everything in ``vars(self)`` is state, written once here rather than in each subclass.

    ``records`` names list attributes whose items are dataclasses (e.g. ``{"history": Decision}``): they are
    saved as dicts and rebuilt as that dataclass on load.
    """

    records: ClassVar[dict[str, type]] = {}

    def state_dict(self) -> dict[str, Any]:
        return {name: _to_plain(value) for name, value in vars(self).items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        unknown = sorted(set(state) - set(vars(self)))
        if unknown:
            raise KeyError(
                f"{type(self).__name__}.load_state_dict got unknown keys {unknown}; "
                f"expected keys from {sorted(vars(self))} (was the state saved from another class?)"
            )
        for name, saved in state.items():
            current = getattr(self, name)
            if isinstance(current, Stateful):
                current.load_state_dict(saved)
            elif isinstance(current, deque):
                setattr(self, name, deque(saved, maxlen=current.maxlen))
            elif name in self.records:
                setattr(self, name, [self.records[name](**record) for record in saved])
            else:
                setattr(self, name, copy.deepcopy(saved))


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
