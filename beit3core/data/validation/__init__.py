"""`beit3 data validate`: Great Expectations suites per dataset kind, image checks, quarantine, shards.

For every dataset of SRC (one dataset or a collection) the rows of all splits are read (`table`), checked
with vectorised pandas code (`row_checks`) and their images checked in parallel (`image_checks`); each check
quarantines rows with a reason and is also stated as a GX 1.x expectation on the same columns (`gx`), so
the GX result (and its Data Docs) and the quarantine agree. The clean rows' images are packed into
WebDataset shards (`pack`).

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
import logging
import os

from beit3core import io, publish
from beit3core.data import formats
from beit3core.data.reading import clear_cache
from beit3core.data.staging import staged_dir
from beit3core.data.validation.gx import GXRunner, gx_frame
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
from beit3core.data.validation.row_checks import row_checks
from beit3core.data.validation.table import Table, parse_jsonl, read_table
from beit3core.errors import UserError, in_range
from beit3core.progress import progress_bar

__all__ = ["DatasetReport", "GXRunner", "Table", "ValidationReport", "add_arguments", "check_image_bytes",
           "check_images", "parse_jsonl", "read_table", "row_checks", "run", "validate", "validate_table"]

log = logging.getLogger(__name__)


def validate_table(t: Table, root: str = "", workers: int = 2, with_images: bool = True, rel: str = "") -> DatasetReport:
    """All checks of one dataset (`root` holds its images), before GX runs."""
    rows = row_checks(t)
    checks, columns, images = list(rows.checks), dict(rows.columns), {}
    if with_images and t.spec.image_fields:
        found = image_checks(t, rows.safe, workers, root)
        checks += found.checks
        columns.update(found.columns)
        images = found.results
    return DatasetReport(rel, t, checks, images, gx_frame(columns, rows.parsed))


def validate(src: str, out: str, *, max_reject_fraction: float = 0.05, workers: int | None = None,
             shard_size: int = 1000, data_docs: bool = True) -> dict:
    """Validate a dataset or a collection into `out`; returns the summary written to validation.json."""
    workers = _check_arguments(src, out, max_reject_fraction, workers)
    report = ValidationReport(max_reject_fraction)
    rels = formats.find_datasets(src)
    for rel in progress_bar(rels, desc="validate", unit="dataset", disable=len(rels) < 2):
        uri = io.join(src, rel) if rel else src
        report.datasets.append(validate_table(read_table(uri, prefix=f"{rel}/" if rel else ""), uri, workers, rel=rel))

    with io.temp_dir("gx") as docs_tmp:  # a killed run's copy is removed by the next run
        if data_docs:
            _run_gx(report, docs_tmp)
        summary = report.summary()
        with staged_dir(out, "data validate", flag="--out") as stage:
            if report.success:
                for d in progress_bar(report.datasets, desc="write shards", unit="dataset", disable=len(report.datasets) < 2):
                    write_dataset(io.join(src, d.rel) if d.rel else src, os.path.join(stage, d.rel) if d.rel else stage,
                                  d, shard_size=shard_size, max_reject_fraction=max_reject_fraction)
            write_reports(stage, report, summary, docs_tmp if data_docs else None)

    clear_cache(out)  # readers in this process must not keep indexes of the shards just replaced
    for rel, d in summary["datasets"].items():
        log.info("%s: %d rows, %d clean, %d quarantined", rel, d["rows"], d["clean"], d["quarantined"])
    if not report.success:
        raise report.failure(src, out, summary)
    return summary


def _check_arguments(src: str, out: str, max_reject_fraction: float, workers: int | None) -> int:
    """The number of workers to use; a UserError for a bad threshold, worker count or output place."""
    if not 0 <= max_reject_fraction <= 1:
        raise UserError(f"--max-reject-fraction must be between 0 and 1, got {max_reject_fraction}")
    workers = (os.cpu_count() or 1) if workers is None else workers
    if workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
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
    p.add_argument("--shard-size", type=int, default=1000, help="images per WebDataset shard")


def run(args: argparse.Namespace) -> int:
    summary = validate(args.src, args.out, max_reject_fraction=args.max_reject_fraction, workers=args.workers,
                       shard_size=args.shard_size)
    for rel, d in summary["datasets"].items():
        print(f"{rel}: {d['rows']} rows, {d['clean']} clean, {d['quarantined']} quarantined")
    print(f"wrote {args.out} (report: {io.join(args.out, 'validation.json')})")
    return 0
