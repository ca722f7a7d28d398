"""The base of every config and of every method's and loss's own options: fields that carry their flag.

Kept free of the methods and losses (and of torch), so that they can declare their options with it and
`locas.config` can gather those options into one `AdaptConfig`.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import typing
from dataclasses import dataclass, field, fields

from locas.contract import content_id
from locas.errors import LocasError


def option(default, help: str, *, aliases: tuple[str, ...] = (), choices=None, selects: bool = False,
           sweep: bool = False, added: bool = False, const=None):
    """A config field with its flag: help text, other flag names, allowed values. `selects` marks an option
    that only chooses which units run (more books later extend the same run), not what a unit computes;
    `sweep` one that a sweep may vary. `added` marks a field added after ids were in use: unset (None), it is
    left out of `to_dict`, so of every config and run id, and the ids of earlier runs stay valid. `const` is
    the value of the flag given without one."""
    return field(default=default, metadata={"help": help, "aliases": aliases, "choices": choices, "selects": selects,
                                            "sweep": sweep, "added": added, "const": const})


def choice(name, value, allowed):
    if value not in allowed:
        raise LocasError(f"unknown {name} {value!r}: choose one of {', '.join(map(str, allowed))}")


@functools.cache
def _number_kinds(cls) -> dict[str, type]:
    """Field → int or float, for the fields whose annotation is a number (or a number or None)."""
    kinds = {}
    for name, annotation in typing.get_type_hints(cls).items():
        args = typing.get_args(annotation) or (annotation,)
        kind = next((a for a in args if a in (int, float)), None)
        if kind is not None:
            kinds[name] = kind
    return kinds


@dataclass(frozen=True)
class Settings:
    """Base of every config: construction from a dict refuses unknown keys; `config_id` is a stable hash."""

    @classmethod
    def from_dict(cls, values: dict):
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise LocasError(f"unknown option(s) {', '.join(unknown)} for {cls.__name__}; known: {', '.join(sorted(known))}")
        return cls(**values)

    def to_dict(self) -> dict:
        added = {f.name for f in fields(self) if f.metadata.get("added")}
        return {k: v for k, v in dataclasses.asdict(self).items() if not (k in added and v is None)}

    @property
    def config_id(self) -> str:
        return content_id({"type": type(self).__name__, **self.to_dict()})

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def _check_types(self):
        """Whole numbers and finite numbers where the annotations say so (a YAML "64" is refused)."""
        for name, kind in _number_kinds(type(self)).items():
            value = getattr(self, name)
            if value is None:
                continue
            if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
                raise LocasError(f"{name}={value!r} must be a whole number")
            if kind is float and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value)):
                raise LocasError(f"{name}={value!r} must be a finite number")
