"""`beit3 data validate`: Great Expectations suites per dataset kind, image checks, quarantine, shards.

For every dataset of SRC (one dataset or a collection) each split is read in chunks of `--chunk-rows` rows
(`table`), checked with vectorised pandas code (`row_checks`) and its images checked in parallel
(`image_checks`); each check quarantines rows with a reason and is also stated as a GX 1.x expectation on the
same columns (`gx`, one run per chunk), so the GX result (and its Data Docs) and the quarantine agree. What
must outlive a chunk (ids and split keys seen, image results, clean rows) is on disk (`store`), so memory is
bounded by the chunk, not the dataset. Every split's clean rows are packed into
WebDataset shards, with the rows themselves (`pack`, format 2: see beit3core.data.formats).

Outputs (OUT mirrors SRC), written by `report` and `pack`:
    OUT/<dataset>/dataset.json + <split>.jsonl + shards/   the validated datasets (clean rows only)
    OUT/validation.json    per dataset: each expectation, pass/fail, GX unexpected count, rows quarantined
    OUT/quarantine.jsonl   one line per rejected row: dataset, split, file, row, reason, data
    OUT/data_docs/index.html (self-contained summary) and OUT/data_docs/gx/ (the GX Data Docs site)

Nothing is dropped silently: clean + quarantined == input rows, per dataset and split. If any dataset
rejects more than `max_reject_fraction` of its rows, or has no clean row at all (an empty dataset is no
success), the reports are still written, no dataset is, and a UserError names the dataset.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import logging
import os

import numpy as np

from beit3core import io, publish
from beit3core.data import formats
from beit3core.data.reading import clear_cache
from beit3core.data.staging import staged_dir
from beit3core.data.validation.check import Check
from beit3core.data.validation.gx import GXRunner, gx_frame, merge_results
from beit3core.data.validation.image_checks import (
    check_image_bytes,
    check_images,
    image_checks,
)
from beit3core.data.validation.pack import write_dataset
from beit3core.data.validation.report import (
    DatasetReport,
    ValidationReport,
    write_reports,
)
from beit3core.data.validation.row_checks import row_checks, split_order
from beit3core.data.validation.store import DatasetStore
from beit3core.data.validation.table import (
    Table,
    parse_jsonl,
    read_header,
    split_chunks,
)
from beit3core.errors import UserError, in_range
from beit3core.progress import progress_bar

__all__ = ["CHUNK_ROWS", "DatasetReport", "DatasetStore", "GXRunner", "Table", "ValidationReport", "add_arguments",
           "check_chunk", "check_image_bytes", "check_images", "parse_jsonl", "row_checks", "run", "validate"]

log = logging.getLogger(__name__)

CHUNK_ROWS = 100_000  # rows checked (and given to GX) at a time: what bounds the memory of a validation


def check_chunk(t: Table, root: str, store: DatasetStore, workers: int = 2,
                with_images: bool = True) -> tuple[list[Check], object]:
    """All checks of one chunk (`root` holds the dataset's images), and the frame GX validates."""
    rows = row_checks(t, store)
    checks, columns = list(rows.checks), dict(rows.columns)
    if with_images and t.spec.image_fields:
        found = image_checks(t, rows.safe, workers, root, store)
        checks += found.checks
        columns.update(found.columns)
    return checks, gx_frame(columns, rows.parsed)


def validate(src: str, out: str, *, max_reject_fraction: float = 0.05, workers: int | None = None,
             shard_size: int = 1000, text_shard_size: int = 10000, data_docs: bool = True,
             chunk_rows: int = CHUNK_ROWS) -> dict:
    """Validate a dataset or a collection into `out`; returns the summary written to validation.json."""
    workers = _check_arguments(src, out, max_reject_fraction, workers, chunk_rows)
    report = ValidationReport(max_reject_fraction, chunk_rows)
    rels = formats.find_datasets(src)
    # a killed run's scratch (the stores, the quarantine so far, the GX docs) is removed by the next run
    with io.temp_dir("validate") as scratch, io.temp_dir("gx") as docs_tmp, contextlib.ExitStack() as stack:
        runner = GXRunner(docs_tmp) if data_docs else None
        quarantine = os.path.join(scratch, "quarantine.jsonl")
        stores, metadata = [], []
        with open(quarantine, "w", encoding="utf-8") as qf:
            for n, rel in enumerate(progress_bar(rels, desc="validate", unit="dataset", disable=len(rels) < 2)):
                uri = io.join(src, rel) if rel else src
                header = read_header(uri)
                store = DatasetStore(os.path.join(scratch, f"{n}.sqlite"), formats.kind_spec(header["kind"]))
                stack.callback(store.close)
                d = DatasetReport(rel, header)
                metadata.append(_validate_dataset(uri, d, store, runner, workers, qf, chunk_rows))
                report.datasets.append(d)
                stores.append(store)
        if runner:
            runner.build_docs()
        summary = report.summary()
        with staged_dir(out, "data validate", flag="--out") as stage:
            if report.success:
                for d, store, files in progress_bar(list(zip(report.datasets, stores, metadata, strict=True)),
                                                    desc="write shards", unit="dataset", disable=len(stores) < 2):
                    write_dataset(io.join(src, d.rel) if d.rel else src, os.path.join(stage, d.rel) if d.rel else stage,
                                  d, store, shard_size=shard_size, text_shard_size=text_shard_size,
                                  max_reject_fraction=max_reject_fraction, metadata=files, workers=workers,
                                  chunk_rows=chunk_rows)
            write_reports(stage, quarantine, summary, docs_tmp if data_docs else None)

    clear_cache(out)  # readers in this process must not keep indexes of the shards just replaced
    for rel, d in summary["datasets"].items():
        log.info("%s: %d rows, %d clean, %d quarantined", rel, d["rows"], d["clean"], d["quarantined"])
    if not report.success:
        raise report.failure(src, out, summary)
    return summary


def _validate_dataset(uri: str, d: DatasetReport, store: DatasetStore, runner: GXRunner | None, workers: int,
                      quarantine, chunk_rows: int) -> list[tuple[str, str]]:
    """Check every split of one dataset chunk by chunk into `d` and `store` (its clean rows kept there for
    packing); (file name, md5) of its metadata files, hashed as they were read."""
    header, prefix = d.header, f"{d.rel}/" if d.rel else ""
    digests = {formats.HEADER: hashlib.md5(io.read_bytes(io.join(uri, formats.HEADER))).hexdigest()}
    for split in split_order(header["splits"]):
        digest = hashlib.md5()
        for t in split_chunks(uri, header, split, chunk_rows, prefix, digest):
            checks, frame = check_chunk(t, uri, store, workers)
            if runner:
                if d.gx is None:
                    runner.start(d.rel or header["name"], header["kind"], checks)
                label = f"{prefix}{formats.split_file(split)} lines {t.line[0]}-{t.line[-1]}"
                d.gx = merge_results(d.gx, runner.run(frame, label))
            clean = d.add_chunk(t, checks, quarantine)
            store.add_rows(split, [t.rows[i] for i in np.flatnonzero(clean)])
        digests[formats.split_file(split)] = digest.hexdigest()
    return [(name, digests[name]) for name in [formats.HEADER] + [formats.split_file(s) for s in header["splits"]]]


def _check_arguments(src: str, out: str, max_reject_fraction: float, workers: int | None, chunk_rows: int) -> int:
    """The number of workers to use; a UserError for a bad threshold, worker count or output place."""
    if not 0 <= max_reject_fraction <= 1:
        raise UserError(f"--max-reject-fraction must be between 0 and 1, got {max_reject_fraction}")
    workers = (os.cpu_count() or 1) if workers is None else workers
    if workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    if chunk_rows < 1:
        raise UserError(f"--chunk-rows must be >= 1, got {chunk_rows}")
    publish.check_disjoint(src, out, src_flag="SRC", out_flag="--out")
    publish.check_place(out, "data validate", flag="--out")  # before the work: OUT must be empty or our own earlier output
    publish.check_complete(src, what="SRC")  # an import or synth output that lost files is refused
    return workers


def _run_gx(report: ValidationReport, docs_dir: str) -> None:
    """Run each dataset's GX suite and build the Data Docs into `docs_dir`."""
    runner = GXRunner(docs_dir)
    for d in report.datasets:
        d.gx = runner.run(d.rel or d.table.header["name"], d.table.spec.kind, d.frame, d.checks)
    runner.build_docs()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="a dataset or a collection (folder or s3:// URI)")
    p.add_argument("--out", required=True, help="where the validated copy and the reports go")
    p.add_argument("--max-reject-fraction", type=float, default=0.05)
    p.add_argument("--workers", type=in_range(int, "[1, inf)"), default=None, help="parallel image checks (default: CPU count)")
    p.add_argument("--shard-size", type=in_range(int, "[1, inf)"), default=1000, help="images per WebDataset shard")
    p.add_argument("--chunk-rows", type=in_range(int, "[1, inf)"), default=CHUNK_ROWS,
                   help="rows checked at a time (bounds the memory)")
    p.add_argument("--text-shard-size", type=in_range(int, "[1, inf)"), default=10000,
                   help="samples per shard of a text dataset (one row each)")


def run(args: argparse.Namespace) -> int:
    summary = validate(args.src, args.out, max_reject_fraction=args.max_reject_fraction, workers=args.workers,
                       shard_size=args.shard_size, text_shard_size=args.text_shard_size, chunk_rows=args.chunk_rows)
    for rel, d in summary["datasets"].items():
        print(f"{rel}: {d['rows']} rows, {d['clean']} clean, {d['quarantined']} quarantined")
    print(f"wrote {args.out} (report: {io.join(args.out, 'validation.json')})")
    return 0
