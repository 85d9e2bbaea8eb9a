"""Frozen run configs and the command-line parsers generated from their fields.

A trainer's config is a frozen dataclass; each field is one flag:

    lr: float = setting(1e-3, "peak learning rate", exact=True)   ->   --lr LR (float, default 0.001)

The flag is the field name with dashes, the type comes from the annotation (`X | None`: default None;
`tuple[float, float]`: two values; `tuple[str, ...]`: one or more; `bool`: --name / --no-name), the default
and the help text from the field. A field without a default is a required flag. `exact=True` marks a setting
whose change between a run and its resumption breaks exact resume (`resume_changes`). Fields holding a nested
config dataclass are not flags: the trainer fills them (fine-tuning resolves `TaskSettings` per task).
Validation lives in each config's `__post_init__`, raising UserError that names the flag.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, NamedTuple

from beit3core.errors import ArgumentParser, check_range

MISSING = dataclasses.MISSING


def setting(default: Any = MISSING, help: str = "", *, exact: bool = False, choices=None,
            metavar: str | None = None, bounds: str | None = None) -> Any:
    """A config field with its command-line metadata; `bounds` ("[0, 1)", "(0, inf)") is the interval a number
    given on the command line must lie in (`beit3core.errors.check_range`)."""
    metadata = {"help": help, "exact": exact, "choices": choices, "metavar": metavar, "bounds": bounds}
    return dataclasses.field(default=default, metadata=metadata)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _without_none(annotation):
    """X for `X | None`, else the annotation itself."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _bounded(parse, name: str, bounds: str):
    """argparse type: `parse`, then refuse a value outside `bounds`, naming the flag. Out-of-range numbers are
    refused, never clamped or replaced."""
    def parse_bounded(text: str):
        value = parse(text)
        check_range(name, value, bounds)
        return value

    parse_bounded.__name__ = parse.__name__  # argparse names it in "invalid int value"
    return parse_bounded


def _argument_kwargs(annotation) -> dict:
    """argparse keywords for one annotation: type, nargs or action."""
    if annotation is bool:
        return {"action": argparse.BooleanOptionalAction}
    if typing.get_origin(annotation) is tuple:
        args = typing.get_args(annotation)
        if len(args) == 2 and args[1] is Ellipsis:
            return {"type": args[0], "nargs": "+"}
        return {"type": args[0], "nargs": len(args)}
    return {"type": annotation}


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default, unless it is required, empty or already told by the help text."""

    def _get_help_string(self, action):
        if action.required or action.default in (None, ()) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def make_parser(cls, prog: str, description: str) -> ArgumentParser:
    """An ArgumentParser (mistakes are one-line UserErrors) with one flag per field of `cls`."""
    parser = ArgumentParser(prog=prog, description=description, formatter_class=_HelpFormatter)
    add_arguments(parser, cls)
    return parser


def add_arguments(parser, cls, *, released_defaults: bool = False) -> None:
    """One flag per field of the config dataclass `cls` on `parser` (a parser or an argument group).

    `released_defaults=True` makes every flag optional with default None, meaning "keep the value the
    caller resolves" (fine-tuning's per-task released recipe)."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        annotation = _without_none(hints[field.name])
        if dataclasses.is_dataclass(annotation):
            continue
        kwargs = _argument_kwargs(annotation)
        meta = field.metadata
        kwargs.update(dest=field.name, help=meta.get("help") or None)
        if meta.get("choices"):
            kwargs["choices"] = meta["choices"]
        if meta.get("metavar"):
            kwargs["metavar"] = meta["metavar"]
        if meta.get("bounds") and "type" in kwargs:
            kwargs["type"] = _bounded(parser._registry_get("type", kwargs["type"], kwargs["type"]),
                                      flag(field.name), meta["bounds"])
        if released_defaults:
            kwargs["default"] = None
        elif field.default is MISSING:
            kwargs["required"] = True
        else:
            kwargs["default"] = field.default
        parser.add_argument(flag(field.name), **kwargs)


def field_names(cls) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def config_from(cls, values: dict, **nested):
    """`cls(**values)` with argparse's lists turned into the tuples the annotations say; `nested` fills the
    fields that are config dataclasses themselves."""
    hints = typing.get_type_hints(cls)
    kwargs = dict(nested)
    for name in field_names(cls):
        if name in values and name not in nested:
            value = values[name]
            is_tuple = typing.get_origin(_without_none(hints[name])) is tuple
            kwargs[name] = tuple(value) if is_tuple and value is not None else value
    return cls(**kwargs)


# -- changed settings on resume ------------------------------------------------------------------------------
def _flat_settings(cfg, saved: dict, exact: bool | None = None):
    """(name, saved value, current value, exact) for every leaf field; a nested config's fields inherit the
    exactness of the field that holds it."""
    for field in dataclasses.fields(cfg):
        is_exact = field.metadata.get("exact", False) if exact is None else exact
        value = getattr(cfg, field.name)
        if dataclasses.is_dataclass(value):
            yield from _flat_settings(value, saved.get(field.name) or {}, is_exact)
        elif field.name in saved:
            yield field.name, saved[field.name], value, is_exact


def _as_tuples(value):
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


class Change(NamedTuple):
    name: str
    saved: Any
    current: Any


def resume_changes(saved: dict, cfg) -> tuple[list[Change], list[Change]]:
    """Settings that differ between a checkpoint's saved config and `cfg`: (those that break exact resume,
    the others)."""
    exact, other = [], []
    for name, old, new, is_exact in _flat_settings(cfg, saved):
        if _as_tuples(old) != _as_tuples(new):
            (exact if is_exact else other).append(Change(name, old, new))
    return exact, other


def describe(changes: list[Change], side: str) -> str:
    """`--lr 0.001 --seed 0`: the flags of `changes` with their "saved" or "current" values."""
    def show(value):
        return (" ".join(map(str, value)) or "()") if isinstance(value, (list, tuple)) else str(value)

    return " ".join(f"{flag(c.name)} {show(getattr(c, side))}" for c in changes)
