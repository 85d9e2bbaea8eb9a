"""What validation found, and the files that say so: validation.json, quarantine.jsonl, data_docs/.

`DatasetReport` adds up one dataset's verdicts chunk by chunk (quarantined rows are written out as they are
found, so no row is held); `ValidationReport` holds them all and builds the summary written to
validation.json (and returned by `validate()`) and data_docs/index.html, both covering the whole dataset.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from typing import TextIO

import numpy as np

from beit3core import io
from beit3core.data.validation.check import Check
from beit3core.data.validation.table import Table
from beit3core.errors import UserError


@dataclass
class DatasetReport:
    """One dataset's verdicts, added up chunk by chunk: counts per split and per check, GX results, examples."""

    rel: str  # the dataset's path in the collection ("" for a lone dataset)
    header: dict
    checks: list[dict] = field(default_factory=list)  # name, expectation, kwargs, quarantined: in suite order
    splits: dict[str, dict] = field(default_factory=dict)  # split -> rows, clean, quarantined
    gx: dict | None = None  # the GX result of all chunks so far, once run
    examples: list[str] = field(default_factory=list)  # the first quarantine reasons

    def __post_init__(self):
        self.splits = {s: {"rows": 0, "clean": 0, "quarantined": 0} for s in self.header["splits"]}

    @property
    def key(self) -> str:
        """The dataset's name in validation.json and quarantine.jsonl."""
        return self.rel or "."

    @property
    def rows(self) -> int:
        return sum(s["rows"] for s in self.splits.values())

    @property
    def clean(self) -> int:
        return sum(s["clean"] for s in self.splits.values())

    @property
    def rejected_fraction(self) -> float:
        return (self.rows - self.clean) / self.rows if self.rows else 0.0

    def add_chunk(self, t: Table, checks: list[Check], quarantine: TextIO) -> np.ndarray:
        """Add one chunk's verdicts (its quarantined rows written to `quarantine`); the chunk's clean rows."""
        if not self.checks:
            self.checks = [{"check": c.name, "expectation": c.expectation, "kwargs": c.kwargs, "quarantined": 0}
                           for c in checks]
        bad = np.zeros(len(t), bool)
        per_row: dict[int, list[str]] = {}
        for entry, c in zip(self.checks, checks, strict=True):
            entry["quarantined"] += int(c.bad.sum())
            bad |= c.bad
            for i in np.flatnonzero(c.bad):
                per_row.setdefault(int(i), []).append(c.reasons.get(int(i), c.name))
        for i, rs in sorted(per_row.items()):
            reason = f"{t.where(i)}: " + "; ".join(rs)
            if len(self.examples) < 10:
                self.examples.append(reason)
            quarantine.write(json.dumps({"dataset": self.key, "split": t.split[i], "file": t.file(i),
                                         "row": int(t.line[i]), "reason": reason,
                                         "data": t.rows[i] if type(t.rows[i]) is dict else {"raw": t.rows[i].raw}},
                                        sort_keys=True, ensure_ascii=True) + "\n")
        for split in np.unique(t.split):
            mine = t.split == split
            counts = self.splits[split]
            counts["rows"] += int(mine.sum())
            counts["quarantined"] += int((mine & bad).sum())
            counts["clean"] = counts["rows"] - counts["quarantined"]
        return ~bad

    def summary(self, max_reject_fraction: float) -> dict:
        n, c = self.rows, self.clean
        return {
            "kind": self.header["kind"], "name": self.header["name"], "rows": n, "clean": c, "quarantined": n - c,
            "rejected_fraction": round(self.rejected_fraction, 6),
            "within_threshold": self.rejected_fraction <= max_reject_fraction,
            "gx_success": self.gx["success"] if self.gx else None,
            "splits": {s: dict(v) for s, v in self.splits.items()},
            "expectations": self.expectations(),
            "examples": list(self.examples),
        }

    def expectations(self) -> list[dict]:
        """Each check with its GX result (when GX ran) and the number of rows it quarantined."""
        out = []
        gx_results = list(self.gx["results"]) if self.gx else []
        if gx_results and gx_results[0]["expectation"] == "expect_table_row_count_to_be_between":
            out.append({"check": "at least one row", **gx_results.pop(0), "quarantined": 0})
        by_key = {(r["expectation"], r["kwargs"].get("column")): r for r in gx_results}
        for c in self.checks:
            snake = re.sub(r"(?<!^)(?=[A-Z])", "_", c["expectation"]).lower()
            r = by_key.get((snake, c["kwargs"].get("column")))
            entry = {"check": c["check"], "quarantined": c["quarantined"]}
            if r is not None:
                entry.update(r)
                if "value_set" in entry["kwargs"] and len(entry["kwargs"]["value_set"]) > 50:
                    entry["kwargs"] = {**entry["kwargs"], "value_set": f"<{len(entry['kwargs']['value_set'])} values>"}
            else:
                entry.update({"expectation": c["expectation"], "kwargs": c["kwargs"], "success": not c["quarantined"]})
            out.append(entry)
        return out


@dataclass
class ValidationReport:
    """Every dataset of one `validate()` run, against the rejection threshold."""

    max_reject_fraction: float
    chunk_rows: int  # rows checked (and given to GX) at a time
    datasets: list[DatasetReport] = field(default_factory=list)

    @property
    def failures(self) -> list[DatasetReport]:
        """Datasets above the threshold, and those left with no clean row (an empty dataset is no success)."""
        return [d for d in self.datasets if d.rejected_fraction > self.max_reject_fraction or not d.clean]

    @property
    def success(self) -> bool:
        return not self.failures

    def summary(self) -> dict:
        """The content of validation.json."""
        return {"max_reject_fraction": self.max_reject_fraction, "chunk_rows": self.chunk_rows,
                "datasets": {d.key: d.summary(self.max_reject_fraction) for d in self.datasets},
                "success": self.success}

    def failure(self, src: str, out: str, summary: dict) -> UserError:
        """The error naming the failed dataset: an empty one or one with no clean row first, else the one that
        rejected the largest fraction of its rows."""
        worst = max(self.failures, key=lambda d: (not d.clean, d.rejected_fraction))
        d = summary["datasets"][worst.key]
        where = io.join(src, worst.rel) if worst.rel else src
        if d["rows"] == 0:
            return UserError(f"{where}: no rows in any split (an empty dataset does not validate)")
        if d["clean"] == 0:
            return UserError(f"{where}: all {d['rows']} rows rejected, none left to write; "
                             f"reasons in {io.join(out, 'quarantine.jsonl')}")
        return UserError(f"{where}: {d['quarantined']} of {d['rows']} rows "
                         f"rejected ({d['rejected_fraction']:.1%}), above --max-reject-fraction "
                         f"{self.max_reject_fraction}; reasons in {io.join(out, 'quarantine.jsonl')}")


def write_reports(stage: str, quarantine: str, summary: dict, gx_docs: str | None) -> None:
    """quarantine.jsonl (moved from the local file `quarantine`), data_docs/ (the summary page, and the GX site
    from `gx_docs`) and validation.json."""
    shutil.move(quarantine, os.path.join(stage, "quarantine.jsonl"))
    docs = os.path.join(stage, "data_docs")
    os.makedirs(docs, exist_ok=True)
    if gx_docs and os.path.isdir(gx_docs) and os.listdir(gx_docs):
        shutil.copytree(gx_docs, os.path.join(docs, "gx"))
    with open(os.path.join(docs, "index.html"), "w", encoding="utf-8") as f:
        f.write(summary_html(summary))
    with open(os.path.join(stage, "validation.json"), "w", encoding="utf-8") as f:
        f.write(json.dumps(summary, sort_keys=True, indent=2, ensure_ascii=True, default=str) + "\n")


def _ok(good: bool, yes: str, no: str) -> str:
    return f"<b class='{'ok' if good else 'bad'}'>{yes if good else no}</b>"


def _dataset_html(rel: str, d: dict) -> list[str]:
    e = html.escape
    parts = [(f"<h2>{e(rel)} <small>({e(d['kind'])})</small></h2><p>{d['rows']} rows, {d['clean']} clean, "
              f"{d['quarantined']} quarantined ({d['rejected_fraction']:.2%}) - "
              f"{_ok(d['within_threshold'], 'within threshold', 'above threshold')}</p>"),
             ("<table><tr><th>check</th><th>GX expectation</th><th>result</th><th>unexpected</th>"
              "<th>quarantined</th></tr>")]
    for x in d["expectations"]:
        unexpected = x.get("unexpected_count") if x.get("unexpected_count") is not None else ""
        parts.append(f"<tr><td>{e(x['check'])}</td><td>{e(x['expectation'])}</td>"
                     f"<td class='{'ok' if x['success'] else 'bad'}'>{'pass' if x['success'] else 'fail'}</td>"
                     f"<td>{unexpected}</td><td>{x['quarantined']}</td></tr>")
    parts.append("</table>")
    if d.get("examples"):
        parts.append("<p>First quarantined rows:</p><ul>" + "".join(f"<li>{e(r)}</li>" for r in d["examples"]) + "</ul>")
    return parts


def summary_html(summary: dict) -> str:
    """data_docs/index.html: a self-contained page of every dataset's checks."""
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>Data validation</title><style>",
             "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:2em}",
             "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}.ok{color:#080}.bad{color:#b00}",
             "</style></head><body><h1>Data validation</h1>",
             (f"<p>Overall: {_ok(summary['success'], 'PASS', 'FAIL')}; maximum rejected fraction "
              f"{summary['max_reject_fraction']}. Each table covers the whole dataset: Great Expectations "
              f"validated it in chunks of {summary['chunk_rows']} rows, and the counts here add the chunks up. "
              "The full Great Expectations Data Docs, one validation result per chunk, are in "
              "<a href='gx/index.html'>gx/index.html</a>.</p>")]
    for rel, d in summary["datasets"].items():
        parts += _dataset_html(rel, d)
    parts.append("</body></html>")
    return "\n".join(parts)
