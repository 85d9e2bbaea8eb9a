"""What validation must remember across chunks, on disk: one SQLite file per dataset.

Memory stays bounded in the number of rows: the ids and split keys already seen (cross-row checks), every
checked image's result (each image is checked once), and the clean rows waiting to be packed live in the
file; a chunk queries and extends them with one join each. SQLite keeps a small page cache of its own.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator

from beit3core.data.formats import KindSpec
from beit3core.data.validation.image_checks import ImageResult

SCHEMA = """
CREATE TABLE ids (key BLOB PRIMARY KEY, first TEXT) WITHOUT ROWID;
CREATE TABLE split_keys (key BLOB PRIMARY KEY, rank INTEGER) WITHOUT ROWID;
CREATE TEMP TABLE probe (k BLOB PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE images (ref BLOB PRIMARY KEY, ok INTEGER, reason TEXT, width INTEGER, height INTEGER, ext TEXT,
                     md5 TEXT) WITHOUT ROWID;
CREATE TABLE rows (seq INTEGER PRIMARY KEY, row TEXT);
CREATE TABLE placed (split TEXT, ref BLOB, ordinal INTEGER, PRIMARY KEY (split, ref)) WITHOUT ROWID;
CREATE TABLE packed (split TEXT, ordinal INTEGER, seq INTEGER, row TEXT, PRIMARY KEY (split, ordinal, seq))
    WITHOUT ROWID;
"""


class DatasetStore:
    """The on-disk memory of one dataset's validation (`path`: a file in a private temporary folder)."""

    def __init__(self, path: str, spec: KindSpec):
        self.spec = spec
        self.image_fields = spec.image_fields
        self.text_field = spec.text_fields[0].name if spec.text_fields else None
        # the file is scratch: a crash loses nothing worth a journal
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.executescript("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; PRAGMA temp_store=FILE;"
                              "PRAGMA cache_size=-16384;" + SCHEMA)
        self.db.execute("BEGIN")
        self._rows: dict[str, tuple[int, int]] = {}  # split -> its first and next seq (a split is added whole)
        self._placed: dict[str, int] = {}

    def close(self) -> None:
        self.db.execute("COMMIT")
        self.db.close()

    def _probe(self, sql: str, keys: Iterable[str], *args) -> list[tuple]:
        """`sql` (which joins the scratch table `probe`) run with `keys` in `probe`: one query per chunk."""
        self.db.execute("DELETE FROM probe")
        self.db.executemany("INSERT OR IGNORE INTO probe VALUES (?)", ((_blob(k),) for k in keys))
        return self.db.execute(sql, args).fetchall()

    def first_ids(self, keys: list[str]) -> dict[str, str]:
        """Where each id of `keys` was first seen, for the ids seen before."""
        return {_text(k): v for k, v in self._probe("SELECT key, first FROM probe JOIN ids ON key = k", keys)}

    def add_ids(self, firsts: Iterable[tuple[str, str]]) -> None:
        self.db.executemany("INSERT OR IGNORE INTO ids VALUES (?, ?)", ((_blob(k), w) for k, w in firsts))

    def split_ranks(self, keys: list[str]) -> dict[str, int]:
        """The best (lowest) split rank each key of `keys` was seen with, for the keys seen before."""
        return {_text(k): v for k, v in self._probe("SELECT key, rank FROM probe JOIN split_keys ON key = k", keys)}

    def add_split_keys(self, keys: Iterable[str], rank: int) -> None:
        self.db.executemany("INSERT INTO split_keys VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET "
                            "rank = min(rank, excluded.rank)", ((_blob(k), rank) for k in keys))

    def images(self, refs: list[str]) -> dict[str, ImageResult]:
        """The results of the images of `refs` checked before."""
        found = self._probe("SELECT ref, ok, reason, width, height, ext, md5 FROM probe JOIN images ON ref = k", refs)
        return {_text(ref): ImageResult(bool(ok), *rest) for ref, ok, *rest in found}

    def add_images(self, results: dict[str, ImageResult]) -> None:
        self.db.executemany("INSERT OR IGNORE INTO images VALUES (?, ?, ?, ?, ?, ?, ?)", (
            (_blob(ref), int(r.ok), r.reason, r.width, r.height, r.ext, r.md5) for ref, r in results.items()))

    def image_digests(self) -> Iterator[tuple[str, str]]:
        """(ref, md5) of every image checked, by ref."""
        for ref, md5 in self.db.execute("SELECT ref, md5 FROM images ORDER BY ref"):
            yield _text(ref), md5

    def add_rows(self, split: str, rows: list[dict]) -> None:
        """Clean rows of `split`, in file order, to be packed once the whole dataset has passed; kept as their
        `<split>.jsonl` lines (sorted keys, ASCII). The rows of one split are added before the next split's."""
        start = self.db.execute("SELECT coalesce(max(seq) + 1, 0) FROM rows").fetchone()[0]
        self._rows[split] = (self._rows.get(split, (start, start))[0], start + len(rows))
        self.db.executemany("INSERT INTO rows VALUES (?, ?)",
                            ((start + n, json.dumps(row, sort_keys=True, ensure_ascii=True)) for n, row in enumerate(rows)))

    def row_chunks(self, split: str, size: int) -> Iterator[list[tuple[int, str]]]:
        """(seq, row line) of the clean rows of `split` in file order, `size` at a time."""
        first, end = self._rows.get(split, (0, 0))
        for lo in range(first, end, size):
            yield self.db.execute("SELECT seq, row FROM rows WHERE seq >= ? AND seq < ? ORDER BY seq",
                                  (lo, min(lo + size, end))).fetchall()

    def place(self, split: str, refs: list[str]) -> dict[str, int]:
        """The ordinal of each of `refs` among the split's samples: new refs go last, in the order given."""
        known = {_text(r): n for r, n in self._probe(
            "SELECT ref, ordinal FROM probe JOIN placed ON split = ? AND ref = k", refs, split)}
        n = self._placed.get(split, 0)
        new = {r: n + k for k, r in enumerate(r for r in dict.fromkeys(refs) if r not in known)}
        self.db.executemany("INSERT INTO placed VALUES (?, ?, ?)", ((split, _blob(r), k) for r, k in new.items()))
        self._placed[split] = n + len(new)
        return {**known, **new}

    def placed_batches(self, split: str, size: int) -> Iterator[list[tuple[str, int]]]:
        """(ref, ordinal) of the split's samples in order, `size` at a time."""
        last = -1
        while True:
            got = self.db.execute("SELECT ref, ordinal FROM placed WHERE split = ? AND ordinal > ? "
                                  "ORDER BY ordinal LIMIT ?", (split, last, size)).fetchall()
            if not got:
                return
            yield [(_text(ref), n) for ref, n in got]
            last = got[-1][1]

    def add_packed(self, split: str, rows: Iterable[tuple[int, int, str]]) -> None:
        """(ordinal of the row's first image, seq, the row's line as written) for the samples' `rows`."""
        self.db.executemany("INSERT INTO packed VALUES (?, ?, ?, ?)", ((split, *r) for r in rows))

    def packed(self, split: str) -> Iterator[tuple[int, str]]:
        """(sample ordinal, line of a written row it carries) of the split, by sample and then file order: read
        as it is consumed (the table's own order, so nothing is sorted or held)."""
        yield from self.db.execute("SELECT ordinal, row FROM packed WHERE split = ? ORDER BY ordinal, seq", (split,))


def _blob(key: str) -> bytes:
    """A key as stored: its bytes (lone surrogates, from bytes that were not UTF-8, kept)."""
    return key.encode("utf-8", "surrogatepass")


def _text(key: bytes) -> str:
    return key.decode("utf-8", "surrogatepass")
