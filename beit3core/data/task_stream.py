"""A task split streamed from its shards: the rows of fine-tuning's epochs and of evaluation's one pass.

A validated split (format 2) is read part by part, a part being one of its shards as `dataset.json` lists them
(`validation.shards`): each whole with one GET (`lanes.read_shard`), the next one fetched in a background
thread while this one is used, and each row's images taken from the sample that carries the row (the packer
stores there every image the sample's rows use). No row list of the split is read. A raw split (`beit3 data
import` / `synth` output, no shards) is read from its jsonl in parts of RAW_PART rows, one read per image file:
for tests and quick looks; `beit3 data validate` it for anything larger.

Training epoch e, for `world` ranks of `batch` rows and `workers` loader workers per rank (`train_plan`):
- the parts are taken in the order `default_rng([seed, e]).permutation(N)`; the epoch's rows are their rows
  one after another, each part's in file order;
- every rank runs P = (rows // world) // batch steps: rank r takes batches [r*P, (r+1)*P) of that sequence and
  each of its workers a contiguous block of those batches, so each row is used by one process once an epoch
  (rows past world * P * batch wait for another epoch's order). A shard cut by the edge of two blocks is
  fetched by both processes, each using its own rows: at most world * workers - 1 extra GETs an epoch;
- a process passes its rows through a shuffle buffer of `buffer` rows (`shuffled`) drawn from
  `default_rng([seed, e, rank, worker])`. An epoch's batches follow from (seed, e, the layout) alone, so a run
  resumed at an epoch end needs nothing but e.

Evaluation (`eval_plan`) reads the parts in order and their rows in file order, up to `max_rows` rows; a
distributed one gives each rank a contiguous block of them, so the ranks' outputs joined in rank order are in
row order.

Memory: the part list (one small entry per shard), the part being read and one prefetched, the shuffle buffer.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from beit3core import io
from beit3core.data import formats
from beit3core.data.lanes import Shard, read_shard
from beit3core.data.reading import image_bytes, read_header, read_rows
from beit3core.errors import UserError

RAW_PART = 256  # rows of a raw split read as one part
Item = tuple[dict, dict[str, bytes]]  # a row and the bytes of each of its image fields
Plan = list[tuple[int, int, int]]  # (part, first row, end row) to read, in order


class SplitSource:
    """The parts of one split (`sizes`: rows of each) and how to read one (`read`)."""

    def __init__(self, uri: str, split: str, header: dict | None = None):
        header = header or read_header(uri)
        where = io.join(uri, formats.HEADER)
        if split not in header["splits"]:
            raise UserError(f"{where}: no split {split!r} (splits: {', '.join(header['splits'])})")
        self.uri, self.split = uri, split
        self.fields = formats.kind_spec(header["kind"]).image_fields
        self._shards: list[Shard] = []
        self._raw: list[dict] = []
        if header.get("validated"):
            self._shards = [Shard(uri, e["name"], e["rows"]) for e in formats.split_shards(header, where, split)]
            sizes = [s.rows for s in self._shards]
        else:  # a raw dataset has no shards: its jsonl, cut into parts
            self._raw = read_rows(uri, split)
            sizes = [min(RAW_PART, len(self._raw) - lo) for lo in range(0, len(self._raw), RAW_PART)]
        self.sizes = np.array(sizes, dtype=np.int64)

    @property
    def rows(self) -> int:
        return int(self.sizes.sum())

    def read(self, part: int) -> list[Item]:
        """Every row of part `part` with its images' bytes."""
        if not self._shards:
            lo = part * RAW_PART
            return [(row, {f: image_bytes(self.uri, row[f]) for f in self.fields})
                    for row in self._raw[lo:lo + int(self.sizes[part])]]
        shard = self._shards[part]
        images = bool(self.fields)
        got = read_shard(shard, keep=lambda ext: images and ext not in ("txt", "json"))
        return [(row, {f: _carried(got.files[key], key, row[f], shard) for f in self.fields})
                for row, key in zip(got.rows, got.keys, strict=True)]


def _carried(files: dict[str, bytes], key: str, ref: object, shard: Shard) -> bytes:
    """The bytes of image `ref` (a row field) from sample `key`: its own image `<key>.<ext>`, or the copy of
    another sample's image `<other>.<ext>` stored in it as `<key>.<other>.<ext>`."""
    member = formats.parse_shard_ref(ref)[1] if formats.is_shard_ref(ref) else ""
    name = member[len(key) + 1:] if member.startswith(key + ".") else member
    if name not in files:
        raise UserError(f"{shard.uri}: sample {key!r} does not carry image {ref!r} of its rows (written before "
                        "samples carried every image of their rows; rerun beit3 data validate)")
    return files[name]


def cut(sizes: np.ndarray, order: Iterable[int], start: int, end: int) -> Plan:
    """The rows [start, end) of the sequence of the parts in `order` (each part's rows in file order)."""
    plan, at = [], 0
    for part in order:
        n = int(sizes[part])
        lo, hi = max(start - at, 0), min(end - at, n)
        if lo < hi:
            plan.append((int(part), lo, hi))
        at += n
        if at >= end:
            break
    return plan


def block(n: int, part: int, parts: int) -> tuple[int, int]:
    """[lo, hi) of share `part` of `parts` nearly equal contiguous shares of range(n)."""
    return n * part // parts, n * (part + 1) // parts


def train_plan(sizes: np.ndarray, *, seed: int, epoch: int, rank: int, steps: int, batch: int, worker: int,
               workers: int) -> Plan:
    """What loader worker `worker` (of `workers`) of rank `rank` reads in `epoch`: its block of the rank's
    `steps` batches of `batch` rows (see the module docstring)."""
    lo, hi = block(steps, worker, workers)
    order = np.random.default_rng([seed, epoch]).permutation(len(sizes))
    return cut(sizes, order.tolist(), (rank * steps + lo) * batch, (rank * steps + hi) * batch)


def eval_plan(sizes: np.ndarray, max_rows: int = 0, *, share: int = 0, shares: int = 1) -> Plan:
    """The first `max_rows` rows (0: all) of the parts in order, or block `share` of `shares` contiguous blocks
    of them (one per rank of a distributed evaluation)."""
    total = int(sizes.sum())
    lo, hi = block(min(max_rows, total) if max_rows else total, share, shares)
    return cut(sizes, range(len(sizes)), lo, hi)


def read_plan(source: SplitSource, plan: Plan) -> Iterator[Item]:
    """The rows of `plan` in order; the next part is read in a background thread while one is consumed."""
    if not plan:
        return
    with ThreadPoolExecutor(1, thread_name_prefix="task-stream") as pool:
        ahead = pool.submit(source.read, plan[0][0])
        try:
            for n, (_, lo, hi) in enumerate(plan):
                items = ahead.result()
                ahead = pool.submit(source.read, plan[n + 1][0]) if n + 1 < len(plan) else None
                yield from items[lo:hi]
                del items  # the used part goes before the next one is taken
        finally:
            if ahead is not None:
                ahead.cancel()


def shuffled(items: Iterable, size: int, rng: np.random.Generator) -> Iterator:
    """`items` in a random order drawn through a buffer of `size`: once it is full, each new item takes the
    place of a random one, which is yielded; the rest leave in a random order at the end."""
    buf: list = []
    for item in items:
        if len(buf) < size:
            buf.append(item)
            continue
        i = int(rng.integers(size))
        yield buf[i]
        buf[i] = item
    for i in rng.permutation(len(buf)).tolist():
        yield buf[i]
