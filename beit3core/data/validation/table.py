"""Reading a dataset for validation: every split's rows in file order, malformed lines kept to be named."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from beit3core import io
from beit3core.data import formats
from beit3core.data.formats import KindSpec
from beit3core.data.names import check_inside
from beit3core.errors import UserError


@dataclass
class InvalidRow:
    """A line that is not a JSON object: its text and why."""

    raw: str
    message: str


@dataclass
class Table:
    """All rows of one dataset, every split, in file order."""

    header: dict
    spec: KindSpec
    split: np.ndarray  # split name per row
    line: np.ndarray  # 1-based line number in <split>.jsonl
    rows: list  # dict, or an InvalidRow
    prefix: str = ""  # dataset path shown in reasons ("tasks/vqa/")

    def __len__(self) -> int:
        return len(self.rows)

    def where(self, i: int) -> str:
        return f"{self.prefix}{formats.split_file(self.split[i])}:row {self.line[i]}"

    def file(self, i: int) -> str:
        """The split file of row `i`, as quarantine.jsonl names it."""
        return f"{self.prefix}{formats.split_file(self.split[i])}"

    def parsed(self) -> np.ndarray:
        """True for the rows that are JSON objects."""
        return np.fromiter((type(r) is dict for r in self.rows), bool, len(self.rows))


def parse_jsonl(data: bytes) -> tuple[list, list[int]]:
    """Rows of a JSON-lines file and their 1-based line numbers; malformed lines become InvalidRow.

    Bytes that are not UTF-8 are kept as lone surrogates (surrogateescape) for the checks to name them.
    """
    text = data.removeprefix(b"\xef\xbb\xbf").decode("utf-8", "surrogateescape")  # a leading BOM is not a row
    numbered = [(n, line) for n, line in enumerate(text.split("\n"), 1) if line.strip()]
    try:  # fast path: one parser call for the whole file
        rows = json.loads("[" + ",".join(line for _, line in numbered) + "]")
        if len(rows) == len(numbered) and all(type(r) is dict for r in rows):
            return rows, [n for n, _ in numbered]
    except ValueError:
        pass
    return [_parse_line(line) for _, line in numbered], [n for n, _ in numbered]


def _parse_line(line: str):
    try:
        row = json.loads(line)
    except ValueError as e:
        return InvalidRow(line, f"invalid JSON ({getattr(e, 'msg', e)})")
    return row if isinstance(row, dict) else InvalidRow(line, "not a JSON object")


def read_table(uri: str, prefix: str = "") -> Table:
    """The dataset at `uri`: its checked header and the rows of every split it lists."""
    where = io.join(uri, formats.HEADER)
    if not io.exists(where):
        raise UserError(f"{where}: no such file (not a dataset folder)")
    header = formats.check_header(io.read_json(check_inside(uri, where)), where)
    spec = formats.kind_spec(header["kind"], where)
    all_rows, splits, lines = [], [], []
    for split in header["splits"]:
        path = io.join(uri, formats.split_file(split))
        if not io.exists(path):
            raise UserError(f"{path}: no such file (split {split!r} is listed in dataset.json)")
        if io.isdir(path):
            raise UserError(f"{path}: a folder, not a split file (split {split!r} is listed in dataset.json)")
        rows, nums = parse_jsonl(io.read_bytes(check_inside(uri, path)))
        all_rows += rows
        lines += nums
        splits += [split] * len(rows)
    return Table(header, spec, np.array(splits, dtype=object), np.array(lines, dtype=np.int64), all_rows, prefix)
