"""The on-disk dataset formats: one row schema per kind, the `dataset.json` header, image references.

A dataset is a folder (local or `s3://`) holding `dataset.json` and one JSON-lines file per split.

* **raw** (written by `beit3 data import` and `beit3 data synth`): `image*` fields are paths relative to the
  dataset root (`images/000001.jpg`).
* **validated** (written by `beit3 data validate`, read by every later stage; `format_version` 2): the same
  rows, minus the quarantined ones, whose `image*` fields read `shards/<file>.tar#<member>`. Every kind is
  packed into WebDataset tar shards in the img2dataset layout, one split's samples per shard: an image sample
  is `<key>.<ext>` + `<key>.txt` + `<key>.json` (each image of a split once), a text sample `<key>.txt` +
  `<key>.json`. The `.json` member's `"rows"` holds the validated rows whose first image field is that
  sample (a text sample: its row), so a split streams from its shards alone; `dataset.json`'s
  `validation.shards` lists each split's shards in order with their sample and row counts.

A collection is a folder of datasets (any depth); the data commands treat every dataset in it.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass, field

from beit3core import io
from beit3core.data.names import validate_name
from beit3core.errors import UserError

FORMAT_VERSION = 1  # raw datasets (import, synth)
VALIDATED_FORMAT = 2  # validated datasets: every kind sharded, rows in the shards, validation.shards
HEADER = "dataset.json"
SHARD_DIR = "shards"
SHARD_SEP = "#"  # "shards/00000.tar#000000012.jpg"


@dataclass(frozen=True)
class TextField:
    name: str
    min_len: int  # characters after stripping surrounding whitespace
    max_len: int


@dataclass(frozen=True)
class KindSpec:
    """Row schema of one dataset kind."""

    kind: str
    required: tuple[str, ...]  # fields every row must carry, non-null
    image_fields: tuple[str, ...] = ()
    text_fields: tuple[TextField, ...] = ()
    optional: tuple[str, ...] = ()
    vocab: dict[str, str] = field(default_factory=dict)  # row field -> dataset.json key of its vocabulary
    disjoint_key: str | None = None  # a field whose values must not be shared between splits

    @property
    def fields(self) -> tuple[str, ...]:
        return self.required + self.optional


CAPTION = TextField("caption", 1, 1000)
KINDS: dict[str, KindSpec] = {
    s.kind: s
    for s in (
        KindSpec("pairs", ("id", "image", "caption"), ("image",), (CAPTION,), disjoint_key="image"),
        KindSpec("images", ("id", "image"), ("image",), optional=("label",), vocab={"label": "labels"},
                 disjoint_key="image"),
        KindSpec("text", ("id", "text"), text_fields=(TextField("text", 1, 20000),)),
        KindSpec("classification", ("id", "image", "label"), ("image",), vocab={"label": "labels"},
                 disjoint_key="image"),
        KindSpec("vqa", ("id", "image", "image_id", "question", "answers"), ("image",),
                 (TextField("question", 1, 500),), vocab={"answers": "answers"}, disjoint_key="image_id"),
        KindSpec("nlvr2", ("id", "image_left", "image_right", "sentence", "label"), ("image_left", "image_right"),
                 (TextField("sentence", 1, 1000),)),
        KindSpec("retrieval", ("id", "image", "image_id", "caption"), ("image",), (CAPTION,),
                 disjoint_key="image_id"),
        KindSpec("captioning", ("id", "image", "image_id", "caption"), ("image",), (CAPTION,),
                 disjoint_key="image_id"),
    )
}

# Image bounds enforced by validation.
MIN_IMAGE_SIDE = 8
MAX_IMAGE_SIDE = 16384
MAX_IMAGE_PIXELS = 64_000_000


def kind_spec(kind: str, where: str = "dataset.json") -> KindSpec:
    if isinstance(kind, str) and kind in KINDS:
        return KINDS[kind]
    raise UserError(f"{where}: field 'kind': unknown kind {kind!r} (one of {', '.join(KINDS)})")


def make_header(kind: str, name: str, splits: list[str], source: dict | None = None, **vocabularies) -> dict:
    """A `dataset.json` header: kind, name, splits, source and vocabularies (labels=[...], answers=[...])."""
    kind_spec(kind)
    check_splits(splits, "dataset.json: field 'splits'")
    validate_name(name, what="dataset name")
    header = {"format_version": FORMAT_VERSION, "kind": kind, "name": name, "splits": list(splits),
              "source": source or {}}
    header.update({k: list(v) for k, v in vocabularies.items() if v is not None})
    return header


def check_header(header: object, where: str) -> dict:
    """A header as read from `where`, checked enough that every consumer can trust it."""
    if not isinstance(header, dict):
        raise UserError(f"{where}: expected a JSON object")
    for key in ("kind", "name", "splits"):
        if key not in header:
            raise UserError(f"{where}: missing field {key!r}")
    spec = kind_spec(header["kind"], where)
    validate_name(header["name"], what=f"{where}: field 'name'")
    check_splits(header["splits"], f"{where}: field 'splits'")
    for vocab_key in sorted(set(spec.vocab.values())):
        if vocab_key in header:
            _check_vocabulary(header[vocab_key], f"{where}: field {vocab_key!r}")
    if not isinstance(header.get("source", {}), dict):
        raise UserError(f"{where}: field 'source': expected an object")
    if spec.kind in ("classification",) and not header.get("labels"):
        raise UserError(f"{where}: field 'labels': a classification dataset needs its label list")
    if spec.kind == "vqa" and not header.get("answers"):
        raise UserError(f"{where}: field 'answers': a vqa dataset needs its answer vocabulary")
    return header


def split_shards(header: dict, where: str, split: str) -> list[dict]:
    """`validation.shards[split]` of a validated header read from `where`: [{"name", "samples", "rows"}, ...],
    each entry checked (a `shards/*.tar` name inside the dataset, a row count)."""
    shards = (header.get("validation") or {}).get("shards")
    if not header.get("validated"):
        raise UserError(f"{where}: not a validated dataset; run beit3 data validate")
    if header.get("format_version", 1) < VALIDATED_FORMAT or not isinstance(shards, dict):
        raise UserError(f"{where}: validated with an older format; rerun beit3 data validate")
    if split not in shards:
        raise UserError(f"{where}: field 'validation.shards': no split {split!r}")
    entries = shards[split]
    if not isinstance(entries, list):
        raise UserError(f"{where}: validation.shards.{split}: expected a list")
    for n, entry in enumerate(entries):  # names become paths: checked here, for every reader
        name, rows = (entry.get("name"), entry.get("rows")) if isinstance(entry, dict) else (None, None)
        if not (isinstance(name, str) and name.startswith(SHARD_DIR + "/") and name.endswith(".tar")
                and ".." not in name.split("/")) or type(rows) is not int or rows < 0:
            raise UserError(f"{where}: validation.shards.{split}[{n}]: expected "
                            "{\"name\": \"shards/NNNNN.tar\", \"rows\": <count>, ...}")
    return entries


def check_splits(splits: object, what: str) -> list[str]:
    """A non-empty list of distinct split names, each safe as a file name (`<split>.jsonl`)."""
    if not isinstance(splits, list) or not splits:
        raise UserError(f"{what}: expected a non-empty list of names")
    for split in splits:
        validate_name(split, what=what)
    dups = sorted({s for s in splits if splits.count(s) > 1})
    if dups:
        # a split listed twice would be read (and counted) twice
        raise UserError(f"{what}: split {dups[0]!r} listed more than once")
    return splits


def _check_vocabulary(vocab: object, what: str) -> None:
    """A vocabulary (labels, answers) is a list of strings that are valid UTF-8 (GX cannot hash lone surrogates)."""
    if not isinstance(vocab, list):
        raise UserError(f"{what}: expected a list")
    for n, v in enumerate(vocab):
        if not isinstance(v, str):
            raise UserError(f"{what}: entry {n}: expected a string, got {type(v).__name__}")
        if not v.isascii() and any("\ud800" <= ch <= "\udfff" for ch in v):
            raise UserError(f"{what}: entry {n}: not valid UTF-8")


def split_file(split: str) -> str:
    # every caller's split name passed validate_name (check_header, make_header); refuse any that did not
    return f"{validate_name(split, what='split')}.jsonl"


def is_dataset(uri: str) -> bool:
    return io.exists(io.join(uri, HEADER))


def find_datasets(uri: str) -> list[str]:
    """Relative paths ("" for `uri` itself) of every dataset at or under `uri`, sorted."""
    if is_dataset(uri):
        return [""]
    if not io.isdir(uri):
        raise UserError(f"{uri}: no such dataset or collection")
    found = []
    for entry in io.ls(uri, recursive=True):
        # Names come from the logical listing: a physical S3 path may run through a published generation.
        inner = entry[len(uri.rstrip("/")) + 1:] if io.is_remote(uri) else os.path.relpath(entry, uri)
        inner = inner.replace("\\", "/")
        if posixpath.basename(inner) == HEADER:
            rel = posixpath.dirname(inner) or "."
            if SHARD_DIR not in rel.split("/"):
                if rel != ".":  # each part names an output folder downstream (an S3 key may hold `..`)
                    for part in rel.split("/"):
                        validate_name(part, what=f"{uri}: dataset folder {rel!r}")
                found.append("" if rel == "." else rel)
    if not found:
        raise UserError(f"{uri}: no dataset.json found (not a dataset or a collection of datasets)")
    return sorted(found)


def is_shard_ref(ref: str) -> bool:
    return isinstance(ref, str) and ref.startswith(SHARD_DIR + "/") and SHARD_SEP in ref


def parse_shard_ref(ref: str) -> tuple[str, str]:
    """`shards/00000.tar#000000012.jpg` -> ("shards/00000.tar", "000000012.jpg")."""
    shard, _, member = ref.partition(SHARD_SEP)
    return shard, member


def shard_ref(shard: str, member: str) -> str:
    return f"{shard}{SHARD_SEP}{member}"
