"""The command line, derived from the config dataclasses: one flag per field, with the field's default, help
text, aliases and choices (declared once, in the dataclass), and the way back from a config to its flags.

    parser = argparse.ArgumentParser()
    add_flags(parser, AdaptConfig, "method, memory and optimizer")
    cfg = from_flags(parser.parse_args(argv), AdaptConfig)
    to_flags(cfg)  # ["--method", "locas", ...]: the command line that gives `cfg` again
"""
from __future__ import annotations

import argparse
import typing
from dataclasses import MISSING, fields

from locas.config import Settings


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each flag's default, unless its help already says what leaving it unset means."""

    def _get_help_string(self, action):
        text = action.help or ""
        return text if action.default is None or "default" in text else super()._get_help_string(action)


def _kind(annotation) -> tuple[type, bool]:
    """(the value type, whether None is allowed) of a field annotation such as `int | None`."""
    if typing.get_origin(annotation) is tuple:
        return tuple, False
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return (args[0] if args else annotation), type(None) in typing.get_args(annotation)


def add_flags(parser: argparse.ArgumentParser, cls: type[Settings], title: str, skip: tuple[str, ...] = (),
              helps: dict | None = None) -> None:
    """One flag per field of `cls` (but `skip`): `--name` and its aliases, typed, with default and choices;
    `helps` replaces the help text of some (a script for which the field's own text is wrong)."""
    group = parser.add_argument_group(title)
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        if f.name in skip:
            continue
        meta, (kind, _) = dict(f.metadata), _kind(hints[f.name])
        if helps and helps.get(f.name):
            meta["help"] = helps[f.name]
        names = [f"--{f.name}", *(f"--{alias}" for alias in meta.get("aliases", ()))]
        default = None if f.default is MISSING else f.default
        if kind is bool:
            group.add_argument(*names, dest=f.name, action="store_true", help=meta.get("help"))
        elif kind is tuple:  # a flag given once per value
            group.add_argument(*names, dest=f.name, action="append", default=[], metavar=meta.get("metavar"),
                               help=meta.get("help"))
        else:
            optional = {"nargs": "?", "const": meta["const"]} if meta.get("const") is not None else {}
            group.add_argument(*names, dest=f.name, type=kind, default=default, choices=meta.get("choices"),
                               help=meta.get("help"), **optional)


def from_flags(args: argparse.Namespace, cls: type[Settings], **overrides):
    """The config of `cls` from parsed flags (its own fields only); `overrides` fill fields left unset."""
    values = {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    values.update({k: v for k, v in overrides.items() if values.get(k) is None})
    return cls(**values)


def to_flags(settings: Settings, skip: tuple[str, ...] = ()) -> list[str]:
    """The flags that give `settings` again: every field that differs from its default (booleans as bare
    flags), in field order."""
    out = []
    for f in fields(settings):
        value = getattr(settings, f.name)
        if f.name in skip or value == f.default:
            continue
        if isinstance(value, bool):
            out.append(f"--{f.name}")
        else:
            out += [f"--{f.name}", str(value)]
    return out
