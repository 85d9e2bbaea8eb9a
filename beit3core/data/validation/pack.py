"""Writing a validated dataset (format 2): the clean rows, every split packed into its WebDataset shards,
dataset.json. Streams from the dataset's on-disk store: memory does not grow with the number of rows.

A split is written in two passes over its clean rows (held by the store, in file order): the first gives each
image its place among the split's samples (order of first use) and writes `<split>.jsonl` with the shard
references, the second writes the samples, each image once with the rows whose first image it is. A sample
also carries a copy of every other image its rows use (NLVR2's right image, packed as another sample), stored
as `<key>.<that image's member>`, so a row and all its images come with one sequential read of one shard
(beit3core.data.task_stream); `validation.image_copies` counts them.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

from beit3core import io
from beit3core.data import formats
from beit3core.data.shards import ShardReader, ShardWriter
from beit3core.data.validation.check import gx_value
from beit3core.data.validation.image_checks import read_ref
from beit3core.data.validation.report import DatasetReport
from beit3core.data.validation.store import DatasetStore
from beit3core.errors import UserError

IMAGES_PER_BATCH = 256  # images read (in parallel) and packed at a time
COPIES_SEP = "\n"  # in the store, between a row's line (JSON, ASCII: no newline) and the images its sample copies


def write_dataset(src: str, dst: str, d: DatasetReport, store: DatasetStore, *, shard_size: int,
                  text_shard_size: int, max_reject_fraction: float, metadata: list[tuple[str, str]], workers: int,
                  chunk_rows: int) -> None:
    """The validated copy (format 2) of the dataset at `src` in the local folder `dst`, `chunk_rows` rows at a
    time."""
    os.makedirs(dst, exist_ok=True)
    spec = formats.kind_spec(d.header["kind"])
    size = shard_size if spec.image_fields else text_shard_size
    packer = _SplitPacker(src, ShardWriter(os.path.join(dst, formats.SHARD_DIR), size), store, workers, chunk_rows)
    shards = {}
    for split in d.header["splits"]:  # shards numbered in split order
        with open(os.path.join(dst, formats.split_file(split)), "w", encoding="utf-8") as f:
            packer.pack(split, f)
        shards[split] = packer.finish_split()
    packer.writer.close()
    header = dict(d.header)
    header["format_version"] = formats.VALIDATED_FORMAT
    header["validation"] = {"rows": d.rows, "clean": d.clean, "quarantined": d.rows - d.clean,
                            "max_reject_fraction": max_reject_fraction, "shard_size": size, "shards": shards,
                            "images": packer.images_packed, "image_copies": packer.images_copied,
                            "gx_success": d.gx["success"] if d.gx else None}
    header["validated"] = True
    header["source_fingerprint"] = _source_fingerprint(metadata, store)
    with open(os.path.join(dst, formats.HEADER), "w", encoding="utf-8") as f:
        f.write(json.dumps(header, sort_keys=True, indent=2) + "\n")


def _source_fingerprint(metadata: list[tuple[str, str]], store: DatasetStore) -> str:
    """md5 over the source metadata files ((name, md5 of its bytes) of dataset.json and each split file, in
    that order) and the bytes of every image checked."""
    digest = hashlib.md5()
    for name, md5 in metadata:
        digest.update(name.encode() + b"\0" + md5.encode())
    for ref, md5 in store.image_digests():
        digest.update(ref.encode("utf-8", "surrogateescape") + b"\0" + md5.encode())
    return digest.hexdigest()


def _line(row: dict) -> str:
    """A row as `<split>.jsonl` holds it (without the newline)."""
    return json.dumps(row, sort_keys=True, ensure_ascii=True)


def sample_json(meta: dict, row_lines: list[str]) -> bytes:
    """A sample's `<key>.json`: `meta` (sorted keys) and then `"rows"`, the rows' jsonl lines spliced in as
    they are (no row is parsed or encoded again)."""
    head = json.dumps(meta, sort_keys=True, ensure_ascii=True)
    return (head[:-1] + (", " if meta else "") + '"rows": [' + ", ".join(row_lines) + "]}").encode()


class _SplitPacker:
    """Packs one split at a time; counts each shard's samples and rows for `validation.shards`."""

    def __init__(self, src: str, writer: ShardWriter, store: DatasetStore, workers: int, chunk_rows: int):
        self.src, self.writer, self.store, self.workers = src, writer, store, max(1, workers)
        self.chunk_rows = chunk_rows
        self.reader = ShardReader(src)
        self.keys = 0  # sample keys run on across splits: a key names one sample of the dataset
        self.images_packed = 0
        self.images_copied = 0  # images stored again in a sample whose rows use them (see the module docstring)
        self._counts: dict[str, dict] = {}

    def pack(self, split: str, jsonl) -> None:
        """Write the split's rows to `jsonl` and its samples to the shards."""
        fields = self.store.image_fields
        if not fields:  # a text sample per row: the text and the row itself
            text = self.store.text_field
            for chunk in self.store.row_chunks(split, self.chunk_rows):
                for _, line in chunk:
                    jsonl.write(line + "\n")
                    self._add(None, "", json.loads(line)[text], {"split": split}, [line])
            return
        for chunk in self.store.row_chunks(split, self.chunk_rows):
            rows = [(seq, json.loads(line)) for seq, line in chunk]
            places = self.store.place(split, [row[f] for _, row in rows for f in fields])
            exts = {ref: res.ext for ref, res in self.store.images(list(places)).items()}
            written = []
            for seq, row in rows:
                refs = {f: self._ref(places[row[f]], exts[row[f]]) for f in fields}
                line = _line({**row, **refs})
                jsonl.write(line + "\n")
                first = places[row[fields[0]]]
                copies = {formats.parse_shard_ref(refs[f])[1]: row[f] for f in fields[1:] if places[row[f]] != first}
                written.append((first, seq, line + (COPIES_SEP + json.dumps(copies) if copies else "")))
            self.store.add_packed(split, written)
        self._samples(split)

    def _ref(self, ordinal: int, ext: str) -> str:
        """The shard reference the split's sample number `ordinal` will have (the writer is at the split's start)."""
        return formats.shard_ref(f"{formats.SHARD_DIR}/{self.writer.ahead(ordinal)}", f"{self.keys + ordinal + 1:09d}.{ext}")

    def _samples(self, split: str) -> None:
        """Each image of the split once, in order of first use, with the rows whose first image it is and copies of
        the other images those rows use."""
        caption = "caption" if any(tf.name == "caption" for tf in self.store.spec.text_fields) else None
        carried = _grouped(self.store.packed(split))
        pending = next(carried, None)
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            for batch in self.store.placed_batches(split, IMAGES_PER_BATCH):
                refs = [ref for ref, _ in batch]
                results = self.store.images(refs)
                carried_rows = []
                for _, n in batch:
                    mine = []
                    if pending is not None and pending[0] == n:
                        mine, pending = pending[1], next(carried, None)
                    carried_rows.append(_rows_and_copies(mine))
                copies = pool.map(self._bytes, [src for _, c in carried_rows for src in c.values()])
                for (ref, n), data, (mine, copied) in zip(batch, pool.map(self._bytes, refs), carried_rows,
                                                          strict=True):
                    res = results[ref]
                    extra = {name: next(copies) for name in copied}
                    member = self._add(data, res.ext, json.loads(mine[0]).get(caption, "") if mine and caption else "",
                                       {"source": gx_value(ref), "width": res.width, "height": res.height,
                                        "split": split}, mine, extra)
                    if member != f"{self.keys:09d}.{res.ext}":  # the references already written say so
                        raise AssertionError(f"{ref}: packed as {member}")
                    self.images_packed += 1
                    self.images_copied += len(extra)

    def _add(self, image: bytes | None, ext: str, text: str, meta: dict, row_lines: list[str],
             extra: dict[str, bytes] | None = None) -> str:
        self.keys += 1
        key = f"{self.keys:09d}"
        member = self.writer.add(key, image, ext, text, sample_json({"key": key, **meta}, row_lines), extra)
        c = self._counts.setdefault(self.writer.current, {"samples": 0, "rows": 0})
        c["samples"] += 1
        c["rows"] += len(row_lines)
        return member

    def finish_split(self) -> list[dict]:
        """Close the split's last shard (shards never span two splits); its shards in order."""
        self.writer.flush()
        out = [{"name": f"{formats.SHARD_DIR}/{name}", **c} for name, c in self._counts.items()]
        self._counts = {}
        return out

    def _bytes(self, ref: str) -> bytes:
        """An image's bytes, read again from the source (an image in two splits is read for each)."""
        data = read_ref(self.src, ref, self.reader)
        if data is None:
            raise UserError(f"{io.join(self.src, ref)}: disappeared during validation")
        return data


def _grouped(pairs: Iterator[tuple[int, str]]) -> Iterator[tuple[int, list[str]]]:
    """(ordinal, [lines]) from (ordinal, line) pairs sorted by ordinal."""
    for n, group in itertools.groupby(pairs, key=lambda p: p[0]):
        yield n, [line for _, line in group]


def _rows_and_copies(entries: list[str]) -> tuple[list[str], dict[str, str]]:
    """The row lines of a sample as the store keeps them, and {member: source ref} of the images it copies."""
    lines, copies = [], {}
    for entry in entries:
        line, _, copied = entry.partition(COPIES_SEP)
        lines.append(line)
        if copied:
            copies.update(json.loads(copied))
    return lines, copies
