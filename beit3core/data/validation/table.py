"""Reading a dataset for validation: each split's rows in file order, in chunks of bounded size, malformed
lines kept to be named."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field

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


READ_BLOCK = 1 << 20  # bytes per read of a split file


@dataclass
class Table:
    """Rows of one dataset in file order: one chunk of one split (the checks also take several splits)."""

    header: dict
    spec: KindSpec
    split: np.ndarray  # split name per row
    line: np.ndarray  # 1-based line number in <split>.jsonl
    rows: list  # dict, or an InvalidRow
    prefix: str = ""  # dataset path shown in reasons ("tasks/vqa/")
    _files: dict[str, str] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.rows)

    def where(self, i: int) -> str:
        return f"{self.file(i)}:row {self.line[i]}"

    def file(self, i: int) -> str:
        """The split file of row `i`, as quarantine.jsonl names it."""
        split = self.split[i]
        if split not in self._files:
            self._files[split] = f"{self.prefix}{formats.split_file(split)}"
        return self._files[split]

    def parsed(self) -> np.ndarray:
        """True for the rows that are JSON objects."""
        return np.fromiter((type(r) is dict for r in self.rows), bool, len(self.rows))


def parse_jsonl(data: bytes, first_line: int = 1) -> tuple[list, list[int]]:
    """Rows of JSON lines (the file's from line `first_line` on) and their 1-based line numbers; malformed lines
    become InvalidRow.

    Bytes that are not UTF-8 are kept as lone surrogates (surrogateescape) for the checks to name them.
    """
    if first_line == 1:
        data = data.removeprefix(b"\xef\xbb\xbf")  # a leading BOM is not a row
    text = data.decode("utf-8", "surrogateescape")
    numbered = [(n, line) for n, line in enumerate(text.split("\n"), first_line) if line.strip()]
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


def read_header(uri: str) -> dict:
    """The checked `dataset.json` of the dataset at `uri`."""
    where = io.join(uri, formats.HEADER)
    if not io.exists(where):
        raise UserError(f"{where}: no such file (not a dataset folder)")
    return formats.check_header(io.read_json(check_inside(uri, where)), where)


def split_path(uri: str, split: str) -> str:
    """The split file of `split`, refused when missing or a folder."""
    path = io.join(uri, formats.split_file(split))
    if not io.exists(path):
        raise UserError(f"{path}: no such file (split {split!r} is listed in dataset.json)")
    if io.isdir(path):
        raise UserError(f"{path}: a folder, not a split file (split {split!r} is listed in dataset.json)")
    return check_inside(uri, path)


def _line_blocks(uri: str, lines_per_block: int, digest) -> Iterator[tuple[bytes, int]]:
    """(whole lines, number of the first) of the file at `uri`, `lines_per_block` lines at a time (the last
    block: what is left)."""
    data, first = b"", 1
    with io.open(uri, "rb") as f:
        while block := f.read(READ_BLOCK):
            if digest is not None:
                digest.update(block)
            data += block
            if data.count(b"\n") < lines_per_block:  # not a whole chunk yet: no line-by-line search
                continue
            pos, cut = 0, _nth_newline(data, 0, lines_per_block)
            while cut >= 0:
                yield data[pos:cut + 1], first
                first += lines_per_block
                pos, cut = cut + 1, _nth_newline(data, cut + 1, lines_per_block)
            data = data[pos:]
    if data:
        yield data, first


def _nth_newline(data: bytes, start: int, n: int) -> int:
    """Index of the `n`-th newline in `data` from `start` on, or -1 when there are fewer."""
    at = start - 1
    for _ in range(n):
        at = data.find(b"\n", at + 1)
        if at < 0:
            return -1
    return at


def split_chunks(uri: str, header: dict, split: str, chunk_rows: int, prefix: str = "", digest=None) -> Iterator[Table]:
    """The rows of one split as Tables of at most `chunk_rows` lines each, in file order; `digest` (a hashlib
    object) is fed the file's bytes as they are read."""
    spec = formats.kind_spec(header["kind"])
    for data, first in _line_blocks(split_path(uri, split), chunk_rows, digest):
        rows, nums = parse_jsonl(data, first)
        if rows:
            yield Table(header, spec, np.full(len(rows), split, dtype=object), np.array(nums, dtype=np.int64),
                        rows, prefix)
