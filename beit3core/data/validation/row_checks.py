"""Row checks that need no image bytes: one small function per rule, each returning its `Check`.

Per-value work is one pass of cheap C-level string tests per column; regular expressions and reason strings
only touch the rows that are suspicious or bad, so 1M rows take seconds. Each rule also adds the column its
GX expectation reads (a nullable boolean where the rule applies to some rows only).

The rules run on one chunk of one split at a time. The two that compare rows (unique ids, keys not shared
between splits) remember what earlier chunks held in the dataset's on-disk `DatasetStore`; splits are read
most authoritative first (`split_order`: test, val, ..., then training splits in file order), so the row kept
of a conflicting pair is the one of the more authoritative split, else the first in file order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from beit3core.data.formats import TextField
from beit3core.data.importers.vqa_answers import normalize_answer
from beit3core.data.validation.check import (
    SURROGATE,
    Check,
    clean_text,
    flag,
    gx_column,
    short,
)
from beit3core.data.validation.store import DatasetStore
from beit3core.data.validation.table import Table

URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
ABSOLUTE = re.compile(r"^(?:/|\\|[A-Za-z]:)")
CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufeff]")  # C0 but tab/LF/CR, DEL, C1, BOM
ESCAPES = re.compile(r"(?:^|[/\\])\.\.(?:[/\\]|$)")
UNSAFE_PATH = r"^(?:/|\\|[A-Za-z]:|[A-Za-z][A-Za-z0-9+.-]*://)|(?:^|[/\\])\.\.(?:[/\\]|$)"  # the same, for GX
EVAL_SPLITS = ("test", "val", "validation", "dev", "minival", "testdev", "test-dev")

TYPES = {
    "id": ((str, int), "a string or an integer"),
    "image_id": ((str, int), "a string or an integer"),
    "label": ((str,), "a string"),
    "answers": ((list,), "a list of strings"),
}


@dataclass
class RowChecks:
    """The rows' field columns, what the checks found, and the columns GX validates (in suite order)."""

    table: Table
    parsed: np.ndarray  # the rows that are JSON objects
    values: dict[str, list]  # field -> its value per row (None where missing)
    checks: list[Check] = field(default_factory=list)
    columns: dict[str, object] = field(default_factory=dict)  # the GX frame's columns
    typed: dict[str, np.ndarray] = field(default_factory=dict)  # field -> present and of its type
    safe: dict[str, np.ndarray] = field(default_factory=dict)  # image field -> a path that may be opened
    store: DatasetStore | None = None  # what earlier chunks held

    @classmethod
    def of(cls, t: Table) -> RowChecks:
        parsed = t.parsed()
        empty_row: dict = {}
        rows = [r if type(r) is dict else empty_row for r in t.rows]
        return cls(t, parsed, {f: [r.get(f) for r in rows] for f in t.spec.fields})

    @staticmethod
    def indices(mask: np.ndarray) -> list[int]:
        """The rows where `mask` is True, as the int keys of a Check's reasons."""
        return [int(i) for i in np.flatnonzero(mask)]


def split_rank(split: str) -> int:
    """How authoritative a split is: 0 for test, then the evaluation splits, training splits last."""
    return EVAL_SPLITS.index(split) if split in EVAL_SPLITS else len(EVAL_SPLITS)


def split_order(splits: list[str]) -> list[str]:
    """The order splits are validated in: most authoritative first, file order among equals."""
    return sorted(splits, key=split_rank)


def row_checks(t: Table, store: DatasetStore) -> RowChecks:
    """Every rule on the row values of `t` (rows of one split), in the order of the GX suite."""
    spec, header = t.spec, t.header
    rc = RowChecks.of(t)
    rc.store = store
    rc.checks.append(_json_objects(rc))
    for f in spec.fields:
        rc.checks += _field_checks(rc, f)
    for tf in spec.text_fields:
        rc.checks += [_valid_utf8(rc, tf.name), _no_control(rc, tf.name), _text_length(rc, tf)]
    rc.checks.append(_unique_ids(rc))
    for f in spec.image_fields:
        rc.checks.append(_image_path(rc, f))
    for f, key in spec.vocab.items():
        if header.get(key) is not None:
            rc.checks.append(_answers_in_vocab(rc, header[key]) if f == "answers" else _in_vocab(rc, f, key))
    if spec.kind == "nlvr2":
        rc.checks.append(_distinct_images(rc))
    if spec.disjoint_key and len(header["splits"]) > 1:
        rc.checks.append(_split_disjoint(rc, spec.disjoint_key))
    return rc


def _json_objects(rc: RowChecks) -> Check:
    rc.columns["row_is_json_object"] = rc.parsed
    return Check("rows are JSON objects", "ExpectColumnValuesToBeInSet",
                 {"column": "row_is_json_object", "value_set": [True]}, ~rc.parsed,
                 {i: rc.table.rows[i].message for i in rc.indices(~rc.parsed)})


def _type_ok(kind: str, name: str, values: list) -> tuple[np.ndarray, str]:
    if kind == "nlvr2" and name == "label":
        return np.fromiter((type(v) is bool for v in values), bool, len(values)), "true or false"
    if name == "answers":
        ok = (type(v) is list and all(type(a) is str for a in v) for v in values)
        return np.fromiter(ok, bool, len(values)), "a list of strings"
    types, text = TYPES.get(name, ((str,), "a string"))
    return np.fromiter((type(v) in types for v in values), bool, len(values)), text


def _field_checks(rc: RowChecks, f: str) -> list[Check]:
    """A required field is present and not null; a present field is of its type."""
    spec, values = rc.table.spec, rc.values[f]
    present = np.fromiter((v is not None for v in values), bool, len(values))
    if f in spec.vocab and f != "answers":
        rc.columns[f] = gx_column(values)
    checks = []
    if f in spec.required:
        bad = rc.parsed & ~present
        # stated on the type column: it is NA exactly where the field is missing or null
        checks.append(Check(f"{f}: present and not null", "ExpectColumnValuesToNotBeNull",
                            {"column": f"{f}__type_ok"}, bad,
                            {i: f"field {f!r}: missing or null" for i in rc.indices(bad)}))
    ok, expected = _type_ok(spec.kind, f, values)
    rc.typed[f] = ok & present
    bad = rc.parsed & present & ~ok
    rc.columns[f"{f}__type_ok"] = flag(ok, present)
    checks.append(Check(f"{f}: is {expected}", "ExpectColumnValuesToBeInSet",
                        {"column": f"{f}__type_ok", "value_set": [True]}, bad,
                        {i: f"field {f!r}: expected {expected}, got {short(values[i])}" for i in rc.indices(bad)}))
    return checks


def _valid_utf8(rc: RowChecks, f: str) -> Check:
    """A text holds no lone surrogate (bytes that were not UTF-8)."""
    values, typed = rc.values[f], rc.typed[f]
    invalid = np.zeros(len(values), bool)
    for i, v in enumerate(values):
        if typed[i] and not v.isascii() and SURROGATE.search(v):
            invalid[i] = True
    rc.columns[f"{f}__valid_utf8"] = flag(~invalid, typed)
    return Check(f"{f}: valid UTF-8", "ExpectColumnValuesToBeInSet",
                 {"column": f"{f}__valid_utf8", "value_set": [True]}, invalid,
                 {i: f"field {f!r}: not valid UTF-8" for i in rc.indices(invalid)})


def _no_control(rc: RowChecks, f: str) -> Check:
    """A text holds no control character (tab, newline and carriage return aside) and no byte-order mark.

    They are invisible in every report and break tokenizers and terminals; the row is quarantined rather than
    silently rewritten, so what trains is exactly what the source said. (Importers drop a BOM that opens a file.)"""
    values, typed = rc.values[f], rc.typed[f]
    bad = np.zeros(len(values), bool)
    reasons = {}
    for i, v in enumerate(values):
        if typed[i] and not v.isprintable():  # C-level prefilter: only rows with such characters meet the regex
            m = CONTROL.search(v)
            if m:
                bad[i] = True
                reasons[i] = f"field {f!r}: control character U+{ord(m.group()):04X} at position {m.start()}"
    rc.columns[f"{f}__no_control"] = flag(~bad, typed)
    return Check(f"{f}: no control characters", "ExpectColumnValuesToBeInSet",
                 {"column": f"{f}__no_control", "value_set": [True]}, bad, reasons)


def _text_length(rc: RowChecks, tf: TextField) -> Check:
    """A text, stripped, is within its length bounds (so never empty)."""
    values = rc.values[tf.name]
    stripped = [v.strip() if type(v) is str else None for v in values]
    lengths = np.fromiter((len(v) if v is not None else -1 for v in stripped), np.int64, len(values))
    rc.columns[f"{tf.name}__stripped"] = gx_column(stripped)
    bad = rc.typed[tf.name] & ((lengths < tf.min_len) | (lengths > tf.max_len))
    reasons = {i: (f"field {tf.name!r}: empty" if lengths[i] == 0 else
                   f"field {tf.name!r}: {int(lengths[i])} characters, outside [{tf.min_len}, {tf.max_len}]")
               for i in rc.indices(bad)}
    return Check(f"{tf.name}: {tf.min_len} to {tf.max_len} characters", "ExpectColumnValueLengthsToBeBetween",
                 {"column": f"{tf.name}__stripped", "min_value": tf.min_len, "max_value": tf.max_len}, bad, reasons)


def _unique_ids(rc: RowChecks) -> Check:
    """Ids are unique across all splits; the first occurrence (in validation order) is kept."""
    has_id, ids = rc.typed["id"], rc.values["id"]
    keys = [str(v) if has_id[k] else None for k, v in enumerate(ids)]
    dup = pd.Series(keys, dtype=object).duplicated(keep="first").to_numpy() & has_id
    firsts = rc.indices(has_id & ~dup)
    earlier = rc.store.first_ids([keys[i] for i in firsts])  # ids of earlier chunks, where they were
    for i in firsts:
        if keys[i] in earlier:
            dup[i] = True
    rc.store.add_ids((keys[i], rc.table.where(i)) for i in firsts if keys[i] not in earlier)
    reasons = {}
    if dup.any():
        first_here: dict[str, int] = {}
        for i in firsts:
            first_here.setdefault(keys[i], i)
        reasons = {i: f"duplicate id {short(ids[i])} (first at "
                      f"{earlier.get(keys[i]) or rc.table.where(first_here[keys[i]])})" for i in rc.indices(dup)}
    rc.columns["id__unique"] = flag(~dup, has_id)
    return Check("id: unique across splits", "ExpectColumnValuesToBeInSet",
                 {"column": "id__unique", "value_set": [True]}, dup, reasons)


def _path_problem(f: str, v: str) -> str | None:
    """Why the image path `v` must not be opened, or None."""
    shown = short(v)
    return (f"field {f!r}: empty path" if not v.strip() else
            f"field {f!r}: path is not valid UTF-8" if not v.isascii() and SURROGATE.search(v) else
            f"field {f!r}: remote URL not fetched (no network at run time): {shown}" if URL.search(v) else
            f"field {f!r}: absolute path {shown}" if ABSOLUTE.search(v) else
            f"field {f!r}: path escapes the dataset root: {shown}" if ESCAPES.search(v) else None)


def _image_path(rc: RowChecks, f: str) -> Check:
    """Image paths are relative, inside the root, local. Only suspicious strings meet the regular expressions."""
    values, typed = rc.values[f], rc.typed[f]
    suspicious = [i for i, v in enumerate(values) if type(v) is str and (
        ".." in v or ":" in v or v[:1] in ("/", "\\") or not v.strip() or not v.isascii())]
    bad = np.zeros(len(values), bool)
    reasons = {}
    for i in suspicious:
        reason = _path_problem(f, values[i])
        if reason:
            bad[i] = True
            reasons[i] = reason
    path_col = list(values)
    for i in suspicious:
        path_col[i] = None if not values[i].strip() else clean_text(values[i])
    if not typed.all():
        path_col = [v if typed[k] else None for k, v in enumerate(path_col)]
    rc.columns[f"{f}__path"] = path_col
    rc.safe[f] = typed & ~bad  # only these are opened
    # (empty and undecodable paths are quarantined too; the regex does not state them)
    return Check(f"{f}: a relative path inside the dataset", "ExpectColumnValuesToNotMatchRegex",
                 {"column": f"{f}__path", "regex": UNSAFE_PATH}, bad, reasons)


def _vocab_norm(answer: str) -> str:
    """The normalisation the VQA task applies before matching answers to the vocabulary (released)."""
    return normalize_answer(answer)


def _answers_in_vocab(rc: RowChecks, vocab: list) -> Check:
    """vqa: a training question has at least one answer in the vocabulary (evaluation splits keep theirs)."""
    t, values, typed = rc.table, rc.values["answers"], rc.typed["answers"]
    norm_vocab = {_vocab_norm(a) for a in vocab if isinstance(a, str)}
    train = np.isin(t.split, [s for s in t.header["splits"] if s not in EVAL_SPLITS])
    hit = np.fromiter((typed[k] and any(_vocab_norm(a) in norm_vocab for a in v) for k, v in enumerate(values)),
                      bool, len(values))
    bad = typed & train & ~hit
    rc.columns["answers__in_vocab"] = flag(hit, typed & train)
    return Check("answers: at least one in the answer vocabulary (training splits)", "ExpectColumnValuesToBeInSet",
                 {"column": "answers__in_vocab", "value_set": [True]}, bad,
                 {i: "field 'answers': no answer in the answer vocabulary" for i in rc.indices(bad)})


def _in_vocab(rc: RowChecks, f: str, key: str) -> Check:
    """A value is listed in dataset.json[key] (labels)."""
    values, typed = rc.values[f], rc.typed[f]
    vocab_set = set(rc.table.header[key])
    inv = np.fromiter((v in vocab_set if typed[k] else True for k, v in enumerate(values)), bool, len(values))
    bad = typed & ~inv
    return Check(f"{f}: in dataset.json[{key!r}]", "ExpectColumnValuesToBeInSet",
                 {"column": f, "value_set": sorted(vocab_set, key=str)}, bad,
                 {i: f"field {f!r}: {short(values[i])} not in {key}" for i in rc.indices(bad)})


def _distinct_images(rc: RowChecks) -> Check:
    """nlvr2: the two images of a row are different."""
    both = rc.typed["image_left"] & rc.typed["image_right"]
    pairs = zip(rc.values["image_left"], rc.values["image_right"], strict=True)
    same = np.fromiter((both[k] and a == b for k, (a, b) in enumerate(pairs)), bool, len(both))
    rc.columns["images__distinct"] = flag(~same, both)
    return Check("image_left and image_right: two different images", "ExpectColumnValuesToBeInSet",
                 {"column": "images__distinct", "value_set": [True]}, same,
                 {i: "fields 'image_left', 'image_right': the same image twice" for i in rc.indices(same)})


def _split_disjoint(rc: RowChecks, f: str) -> Check:
    """A value shared with a more authoritative split (test > val > train) is quarantined."""
    t = rc.table
    usable = rc.safe.get(f, rc.typed[f])
    keys = {int(i): str(rc.values[f][i]) for i in np.flatnonzero(usable)}
    rank = split_rank(t.split[0]) if len(t) else 0
    best = rc.store.split_ranks(list(keys.values()))  # splits validated before this one, more authoritative first
    rc.store.add_split_keys(keys.values(), rank)
    bad = np.zeros(len(t), bool)
    reasons = {}
    by_rank = {split_rank(s): s for s in t.header["splits"]}
    for i, k in keys.items():
        if best.get(k, rank) < rank:
            bad[i] = True
            reasons[i] = (f"field {f!r}: {short(rc.values[f][i])} also in split {by_rank[best[k]]!r} "
                          f"(splits must not share images)")
    rc.columns[f"{f}__split_disjoint"] = flag(~bad, usable)
    return Check(f"{f}: not shared between splits", "ExpectColumnValuesToBeInSet",
                 {"column": f"{f}__split_disjoint", "value_set": [True]}, bad, reasons)
