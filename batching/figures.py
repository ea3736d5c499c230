"""Figures declared once: a dataclass field says what it means, how its JSON rounds,
and whether its key may be absent; the JSON form and the docs are derived from that.

A figure is stored (`figure`: passed in, counted by a collector) or derived
(`derived`: computed from the others when the object is built, so it is an
attribute like any other). The JSON keys are the fields in declaration order, so
a new figure goes last to keep readers' key order; a field declared with
`key=False` is held but has no key of its own (the input of a derived figure).

>>> from dataclasses import dataclass
>>> @dataclass(frozen=True)
... class Trip:
...     km: float = figure(0.0, "distance", digits=1)
...     hours: float = figure(0.0, "time taken", key=False)
...     speed: float | None = derived(lambda t: t.km / t.hours if t.hours else None,
...                                   "km per hour", digits=1)
...     def __post_init__(self) -> None:
...         derive_figures(self)
>>> figures_dict(Trip(km=10.04, hours=3.0))
{'km': 10.0, 'speed': 3.3}
>>> figure_docs(Trip)
{'km': 'distance', 'speed': 'km per hour'}
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from typing import Any

__all__ = [
    "derive_figures",
    "derived",
    "figure",
    "figure_docs",
    "figure_fields",
    "figures_dict",
    "list_figures_in_docstring",
    "starting_figures",
]

_DOC = "doc"
_DIGITS = "digits"
_KEY = "key"
_OPTIONAL = "optional"
_DERIVE = "derive"


def figure(
    default: Any = dataclasses.MISSING,
    doc: str = "",
    *,
    digits: int | None = None,
    key: bool = True,
    optional: bool = False,
    default_factory: Callable[[], Any] | None = None,
    **metadata: Any,
) -> Any:
    """A stored figure: a dataclass field with its meaning and its JSON form.

    `digits`: the JSON value is rounded to so many decimals. `key=False`: held, but
    no key of its own. `optional`: the key is absent (not null) when the value is
    None or empty. Further keywords are kept in the field's metadata for the
    caller's own use.
    """
    info = {_DOC: doc, _DIGITS: digits, _KEY: key, _OPTIONAL: optional, **metadata}
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=info)
    return dataclasses.field(default=default, metadata=info)


def derived(
    compute: Callable[[Any], Any], doc: str, *, digits: int | None = None, optional: bool = False
) -> Any:
    """A figure computed from the others when the object is built (`derive_figures`).

    `compute` may read the figures declared before this one, derived ones included.
    """
    info = {_DOC: doc, _DIGITS: digits, _KEY: True, _OPTIONAL: optional, _DERIVE: compute}
    return dataclasses.field(init=False, default=None, metadata=info)


def figure_fields(cls_or_obj: Any) -> Iterator[dataclasses.Field[Any]]:
    """The declared figures, in declaration order (the JSON key order)."""
    return (f for f in dataclasses.fields(cls_or_obj) if _DOC in f.metadata)


def derive_figures(obj: Any) -> None:
    """Compute `obj`'s derived figures; call it from `__post_init__` (frozen is fine)."""
    for f in figure_fields(obj):
        compute = f.metadata.get(_DERIVE)
        if compute is not None:
            object.__setattr__(obj, f.name, compute(obj))


def figures_dict(obj: Any) -> dict[str, Any]:
    """The JSON form: a key per figure in declaration order, rounded as declared."""
    data: dict[str, Any] = {}
    for f in figure_fields(obj):
        if not f.metadata[_KEY]:
            continue
        value = getattr(obj, f.name)
        if f.metadata[_OPTIONAL] and (value is None or value == ()):
            continue
        data[f.name] = _json_value(value, f.metadata[_DIGITS])
    return data


def figure_docs(cls: type) -> dict[str, str]:
    """What each key of the JSON form means, in key order."""
    return {f.name: f.metadata[_DOC] for f in figure_fields(cls) if f.metadata[_KEY]}


def list_figures_in_docstring(cls: type) -> None:
    """Append the list of JSON keys and what each means to `cls.__doc__` (for `help`)."""
    keys = "".join(f"    - {name}: {doc}.\n" for name, doc in figure_docs(cls).items())
    cls.__doc__ = f"{cls.__doc__ or ''}\n    Keys of `to_dict()`, in order:\n\n{keys}"


def starting_figures(cls: type) -> dict[str, Any]:
    """Every stored figure of `cls` at its default: where a collector starts counting."""
    start: dict[str, Any] = {}
    for f in figure_fields(cls):
        if not f.init:
            continue
        if f.default_factory is not dataclasses.MISSING:
            start[f.name] = f.default_factory()
        else:
            start[f.name] = f.default
    return start


def _json_value(value: Any, digits: int | None) -> Any:
    if value is None:
        return None
    if digits is not None:
        return round(value, digits)
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, tuple):  # of figures objects, such as a run's replicas
        return [figures_dict(item) for item in value]
    return value
