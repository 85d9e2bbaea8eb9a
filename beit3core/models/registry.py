"""Model registry: names -> builder functions (`register_model`, `list_models`, `get_builder`).

Building a model, with or without pretrained weights, is `beit3core.factory.create_model`: the registry knows
nothing of checkpoints, so neither imports the other."""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Callable
from typing import Any

from beit3core.errors import UserError

log = logging.getLogger(__name__)

_REGISTRY: dict[str, Callable[..., Any]] = {}


def register_model(fn_or_name: Callable[..., Any] | str, builder: Callable[..., Any] | None = None):
    """Register a builder under a name: `@register_model` (the function's name) or `register_model(name, fn)`."""
    if isinstance(fn_or_name, str):
        if builder is None:
            return lambda fn: register_model(fn_or_name, fn)
        name, fn = fn_or_name, builder
    else:
        name, fn = fn_or_name.__name__, fn_or_name
    if name in _REGISTRY and _REGISTRY[name] is not fn:
        log.warning("model %s registered twice; the later builder wins", name)
    _REGISTRY[name] = fn
    return fn


def list_models(pattern: str = "*") -> list[str]:
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def is_model(name: str) -> bool:
    return name in _REGISTRY


def get_builder(name: str) -> Callable[..., Any]:
    """The builder registered under `name`; an unknown name is a UserError listing the close ones."""
    if name not in _REGISTRY:
        close = [n for n in _REGISTRY if n.split("_")[:2] == name.split("_")[:2]] or list_models()
        raise UserError(f"model {name!r}: unknown; registered: {', '.join(close)}")
    return _REGISTRY[name]
