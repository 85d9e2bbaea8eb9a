"""Lazy package exports: a name is imported from its module on first use, so importing a package (or the
`beit3` command's --help) does not pay for torch, timm or great_expectations."""

import importlib


def lazy_getattr(package: str, table: dict[str, str]):
    """A module-level `__getattr__` resolving `table[name]` (a module path) on first access."""

    def __getattr__(name):
        if name in table:
            return getattr(importlib.import_module(table[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
