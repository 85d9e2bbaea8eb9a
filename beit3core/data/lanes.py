"""The shard-lane sequence: an endless, deterministic order of a split's rows read shard by shard.

A stream's samples are defined by (seed, stream id, the split's shard list, `lanes` L) alone, so they do not
depend on how many ranks or loader workers read them:

- epoch e is the permutation `default_rng([seed, stream, e])` of the stream's N shards. The epochs, one after
  another, make one endless shard sequence Q (Q[e*N + i] = perm_e[i]); lane j reads Q[j], Q[j+L], Q[j+2L], ...
  When L divides N that is "lane j reads perm_e[j::L], then epoch e+1's"; the endless form also gives every
  lane shards when N is not a multiple of L, or smaller than L (a small dataset). Each epoch's shards are
  read exactly once, each by one lane.
- a shard is read whole with one sequential GET (the next one of each lane prefetched in a background thread)
  and its rows are taken in the order `default_rng([seed, stream, e, shard_index]).permutation(rows)`.
- a lane's position is a row count. Seeking to position p needs only the per-shard row counts of
  `dataset.json` (`validation.shards`), so a resume reads nothing but the shard it resumes inside.
- `row_key` (seed, stream, epoch, shard, row in shard) names one read of one row: masks and augmentation are
  drawn from generators seeded by it, so they do not depend on which process draws them.

Memory: the shard list (one small entry per shard) and, per lane held, the shard being read plus at most one
prefetched: nothing grows with the number of rows.
"""

from __future__ import annotations

import json
import math
import posixpath
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from beit3core import io
from beit3core.data import formats
from beit3core.data.names import check_inside
from beit3core.data.reading import read_header
from beit3core.data.shards import group_samples, tar_members
from beit3core.errors import UserError


@dataclass(frozen=True)
class Shard:
    """One tar shard of one split: where it is and how many rows its samples carry."""

    dataset: str  # dataset URI
    name: str  # "shards/00012.tar", relative to the dataset
    rows: int

    @property
    def uri(self) -> str:
        return io.join(self.dataset, self.name)

    @property
    def stem(self) -> str:
        return posixpath.basename(self.name).rsplit(".", 1)[0]


def split_shards(uri: str, split: str) -> list[Shard]:
    """The shards of `split` of a validated dataset, in order, from `dataset.json` (`validation.shards`)."""
    where = io.join(uri, formats.HEADER)
    header = read_header(uri)
    if split not in header["splits"]:
        raise UserError(f"{where}: no split {split!r} (splits: {', '.join(header['splits'])})")
    return [Shard(uri, entry["name"], entry["rows"]) for entry in formats.split_shards(header, where, split)]


# -- reading one shard ----------------------------------------------------------------------------------------
@dataclass
class ShardSamples:
    """A shard as read: its rows (from each sample's `<key>.json` "rows", in shard order), the sample key of
    each row, and the sample files other than the json (`{key: {ext: bytes}}`)."""

    rows: list[dict]
    keys: list[str]
    files: dict[str, dict[str, bytes]]


def read_shard(shard: Shard, keep: Callable[[str], bool] = lambda ext: True) -> ShardSamples:
    """Read a shard whole with one GET (cat_file: one GetObject on S3) and parse its samples; sample files
    whose extension `keep` refuses are dropped right away."""
    uri = check_inside(shard.dataset, shard.uri)
    fs, path = io.filesystem(uri)
    with io.storage_errors(uri):
        try:
            # on S3 one GetObject: no HEAD for the size, no split into concurrent ranged GETs
            data = fs.cat_file(path, max_concurrency=1) if io.is_s3(uri) else fs.cat_file(path)
        except FileNotFoundError:
            raise UserError(f"{uri}: no such shard (dataset.json lists it)") from None
    rows, keys, files = [], [], {}
    for key, sample in group_samples(tar_members(data, uri)):
        try:
            meta = json.loads(sample.pop("json", b"{}"))
            sample_rows = meta["rows"]
        except (ValueError, KeyError, TypeError):
            raise UserError(f"{uri}: sample {key!r} has no \"rows\" in its json (rerun beit3 data validate)") from None
        rows.extend(sample_rows)
        keys.extend([key] * len(sample_rows))
        files[key] = {ext: b for ext, b in sample.items() if keep(ext)}
    del data
    if len(rows) != shard.rows:
        raise UserError(f"{uri}: holds {len(rows)} rows, dataset.json says {shard.rows} (rerun beit3 data validate)")
    return ShardSamples(rows, keys, files)


# -- the sequence ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RowKey:
    """One read of one row: in `epoch`, row `row` (its index in the shard as written) of shard `shard`."""

    epoch: int
    shard: int  # index in the stream's shard list
    row: int

    def seed(self, seed: int, stream: int) -> list[int]:
        """The entropy of this read's generators (masks, augmentation)."""
        return [seed, stream, self.epoch, self.shard, self.row]


class LanePlan:
    """The shard-lane sequence of one stream (see the module docstring)."""

    def __init__(self, shards: list[Shard], *, seed: int, stream: int, lanes: int):
        if lanes < 1:
            raise UserError(f"--lanes: must be >= 1, got {lanes}")
        self.shards = list(shards)
        self.rows = np.array([s.rows for s in shards], dtype=np.int64)
        if int(self.rows.sum()) == 0:
            raise UserError("no rows in the stream's shards")
        self.seed, self.stream, self.lanes = int(seed), int(stream), int(lanes)

    def order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, self.stream, epoch]).permutation(len(self.shards))

    def lane_shards(self, lane: int, epoch: int) -> np.ndarray:
        """The shards lane `lane` reads in `epoch`, in order."""
        n = len(self.shards)
        return self.order(epoch)[(lane - epoch * n) % self.lanes::self.lanes]

    def row_order(self, epoch: int, shard: int) -> np.ndarray:
        return np.random.default_rng([self.seed, self.stream, epoch, shard]).permutation(int(self.rows[shard]))

    def visits(self, lane: int, position: int) -> Iterator[tuple[int, int, int]]:
        """(epoch, shard, rows to skip in it) of every shard lane `lane` reads from row `position` on: the
        first skips into the shard the position falls in, the others start at 0."""
        if not 0 <= lane < self.lanes or position < 0:
            raise ValueError(f"lane {lane} of {self.lanes}, position {position}")
        epoch, skip = 0, int(position)
        while True:
            picks = self.lane_shards(lane, epoch)
            total = int(self.rows[picks].sum())
            if skip >= total:  # the whole epoch lies before the position: count it, read nothing
                skip -= total
            else:
                for shard in picks.tolist():
                    n = int(self.rows[shard])
                    if skip >= n:
                        skip -= n
                        continue
                    yield epoch, shard, skip
                    skip = 0
            epoch += 1


class LaneReader:
    """The rows of one lane from a position on: `take(n)` -> n (RowKey, ShardSamples) pairs. The lane's next
    shard is loaded in `pool` while the current one is read (at most one shard ahead)."""

    def __init__(self, plan: LanePlan, lane: int, position: int, load: Callable[[int], object],
                 pool: ThreadPoolExecutor):
        self.plan, self.load, self.pool = plan, load, pool
        self._visits = plan.visits(lane, position)
        self._next: tuple[int, int, int, Future] | None = None
        self._current: object = None
        self._epoch = self._shard = 0
        self._order: np.ndarray = np.zeros(0, np.int64)
        self._at = 0
        self._prefetch()

    def _prefetch(self) -> None:
        epoch, shard, skip = next(self._visits)
        self._next = (epoch, shard, skip, self.pool.submit(self.load, shard))

    def _advance(self) -> None:
        epoch, shard, skip, future = self._next
        self._current = None  # drop the finished shard while the next one may still be arriving
        self._current = future.result()
        self._epoch, self._shard = epoch, shard
        self._order, self._at = self.plan.row_order(epoch, shard), skip
        self._prefetch()

    def take(self, n: int) -> list[tuple[RowKey, object]]:
        out = []
        while len(out) < n:
            if self._at >= len(self._order):
                self._advance()
                continue
            stop = min(len(self._order), self._at + n - len(out))
            out.extend((RowKey(self._epoch, self._shard, int(r)), self._current) for r in self._order[self._at:stop])
            self._at = stop
        return out

    def close(self) -> None:
        if self._next is not None:
            self._next[3].cancel()
        self._current = self._next = None


def check_layout(lanes: int, world_size: int, workers: int, global_batches: dict[str, int]) -> None:
    """Refuse a layout the lanes cannot be dealt over: L divides every stream's global batch, the ranks divide
    L, the loader workers divide each rank's lanes."""
    for name, g in global_batches.items():
        if g > 0 and g % lanes:
            raise UserError(f"--lanes {lanes}: must divide the global batch of every stream; {name} has {g} "
                            f"per step (batch per rank x {world_size} processes)")
    if lanes % world_size:
        raise UserError(f"--lanes {lanes}: must be a multiple of the number of processes ({world_size})")
    if workers > 1 and (lanes // world_size) % workers:
        raise UserError(f"--lanes {lanes}: each process's {lanes // world_size} lanes cannot be split among "
                        f"--num-workers {workers}; use a worker count that divides it")


AUTO_LANES_PER_PROCESS = 4  # at most this many lanes per loader process per stream: two shards each in memory


def auto_lanes(global_batches: dict[str, int], world_size: int, workers: int) -> int:
    """The lane count a run picks at its first start (`--lanes 0`): the largest L that divides every global
    batch and is a multiple of processes x loader workers, with at most AUTO_LANES_PER_PROCESS lanes per loader
    process (memory), so a later resume on more processes still divides it where the batches allow."""
    unit = world_size * max(workers, 1)
    sizes = [g for g in global_batches.values() if g > 0]
    common = math.gcd(*sizes) if sizes else unit
    fits = [d for d in range(unit, unit * AUTO_LANES_PER_PROCESS + 1, unit) if common % d == 0]
    if not fits:
        raise UserError(f"--lanes: no lane count fits: it must divide every global batch ({common} is their "
                        f"largest common divisor) and be a multiple of processes x loader workers ({unit}); "
                        "change --batch-* or --num-workers")
    return fits[-1]


def held_lanes(lanes: int, world_size: int, rank: int, workers: int, worker: int) -> range:
    """The lanes of rank `rank`'s loader worker `worker` (of `workers`; 0 workers = the rank itself)."""
    per_rank = lanes // world_size
    per_worker = per_rank // max(workers, 1)
    first = rank * per_rank + worker * per_worker
    return range(first, first + per_worker)
