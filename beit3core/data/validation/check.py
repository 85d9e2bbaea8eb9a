"""One validation rule (`Check`) and how row values appear in its reasons and in the GX columns."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

SURROGATE = re.compile("[\ud800-\udfff]")  # bytes that were not UTF-8, kept by surrogateescape


@dataclass
class Check:
    """One rule: which rows break it (and why), and the GX expectation that states it."""

    name: str
    expectation: str  # GX expectation class in great_expectations.expectations
    kwargs: dict
    bad: np.ndarray
    reasons: dict[int, str] = field(default_factory=dict)


def clean_text(v: str) -> str:
    """A string GX can hash and render: lone surrogates shown as U+FFFD."""
    return SURROGATE.sub("\ufffd", v) if not v.isascii() and SURROGATE.search(v) else v


def gx_value(v):
    """A scalar GX can hold: lists and dicts as JSON, strings cleaned of lone surrogates."""
    if v is None or isinstance(v, bool | int | float):
        return v
    if isinstance(v, str):
        return clean_text(v)
    return clean_text(json.dumps(v, sort_keys=True, ensure_ascii=False))


def short(v, limit: int = 60) -> str:
    """A value as a reason quotes it, cut to `limit` characters."""
    s = repr(gx_value(v)) if isinstance(v, str) else json.dumps(v, ensure_ascii=False, default=str)
    return s if len(s) <= limit else s[: limit - 3] + "..."


def flag(ok: np.ndarray, applies: np.ndarray) -> pd.arrays.BooleanArray:
    """A nullable boolean column: `ok` where the rule applies, NA elsewhere (GX skips NA)."""
    return pd.arrays.BooleanArray(np.asarray(ok, bool), ~np.asarray(applies, bool))


def gx_column(values: list) -> list:
    """The column GX sees: the values themselves, except lists/dicts (as JSON) and lone surrogates (U+FFFD)."""
    fix = [i for i, v in enumerate(values)
           if not (v is None or (type(v) is str and v.isascii()) or type(v) in (int, float, bool))]
    if not fix:
        return values
    out = list(values)
    for i in fix:
        out[i] = gx_value(values[i])
    return out
