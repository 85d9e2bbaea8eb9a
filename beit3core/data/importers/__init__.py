"""`beit3 data import --format F SRC OUT`: convert datasets in the formats users hold into raw datasets.

One small module per format; each exposes `convert(src, stage, opts) -> header` writing into a local
staging folder that is then published at OUT. Importers never drop a row: malformed values (bytes that are
not UTF-8, absolute or `..` paths, missing images, odd labels) are kept as they are so that
`beit3 data validate` quarantines them with a reason. A source whose structure is of the wrong type (a string
where a list of sentences belongs, a split or dataset name that is not a plain name) is refused with one
error line: it is never reshaped into rows. Symbolic links leading out of SRC are not followed.
"""

from __future__ import annotations

import argparse
import importlib
import logging

from beit3core import io, publish
from beit3core.data.names import validate_name
from beit3core.data.staging import staged_dir
from beit3core.errors import UserError, in_range

log = logging.getLogger(__name__)

FORMATS = {
    "coco-karpathy": "coco_karpathy",
    "flickr30k": "coco_karpathy",
    "cc-tsv": "cc_tsv",
    "imagefolder": "imagefolder",
    "text": "text",
    "vqav2": "vqav2",
    "nlvr2": "nlvr2",
    "webdataset": "webdataset",
}


def import_dataset(fmt: str, src: str, out: str, **opts) -> dict:
    """Convert SRC (format `fmt`) into a raw dataset at OUT; returns its dataset.json."""
    if fmt not in FORMATS:
        raise UserError(f"--format: unknown format {fmt!r} (one of {', '.join(FORMATS)})")
    if not io.exists(src):
        raise UserError(f"{src}: no such file or folder")
    publish.check_disjoint(src, out, src_flag="SRC", out_flag="OUT")  # OUT == SRC would delete the source
    if opts.get("name") is not None:
        validate_name(opts["name"], what="--name")  # before any work: the name becomes a folder downstream
    module = importlib.import_module(f"beit3core.data.importers.{FORMATS[fmt]}")
    opts = {**opts, "format": fmt}
    with staged_dir(out, "data import") as stage:
        header = module.convert(str(src), stage, opts)
    log.info("imported %s (%s) into %s", src, fmt, out)
    return header


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", required=True, choices=sorted(FORMATS), help="format of SRC")
    p.add_argument("src", help="the dataset as you hold it (file or folder)")
    p.add_argument("out", help="the raw dataset to write (folder or s3:// URI)")
    p.add_argument("--name", default=None, help="dataset name (default: from SRC)")
    p.add_argument("--images", default=None, help="image folder when not inside SRC (coco-karpathy, flickr30k, vqav2)")
    p.add_argument("--kind", default=None, choices=["captioning", "retrieval", "pairs"],
                   help="row kind for coco-karpathy / flickr30k (default captioning)")
    p.add_argument("--min-answer-count", type=int, default=9,
                   help="vqav2: answers seen at least this often in training annotations form the vocabulary")
    p.add_argument("--paragraphs", action="store_true", help="text: one row per blank-line separated paragraph")
    p.add_argument("--workers", type=in_range(int, "[1, inf)"), default=8, help="parallel image copies")


def run(args: argparse.Namespace) -> int:
    opts = {k: v for k, v in vars(args).items() if k not in ("format", "src", "out", "run", "command")}
    header = import_dataset(args.format, args.src, args.out, **opts)
    rows = header.get("source", {}).get("rows", {})
    print(f"imported {args.src} as {header['kind']} dataset {header['name']!r}: "
          + ", ".join(f"{s} {rows.get(s, '?')} rows" for s in header["splits"]))
    print(f"wrote {args.out}")
    return 0
