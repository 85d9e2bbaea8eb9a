"""`beit3 data validate`: Great Expectations suites per dataset kind, image checks, quarantine, shards.

For every dataset of SRC (one dataset or a collection) the rows of all splits are checked with vectorised
pandas code; each check quarantines rows with a reason and is also stated as a GX 1.x expectation that runs
on the same columns, so the GX result (and its Data Docs) and the quarantine agree. Images are read once,
in parallel (threads: decoding in Pillow and S3 reads release the GIL), checked (exist, decode fully,
size bounds) and the clean rows' images are packed into WebDataset shards.

Outputs (OUT mirrors SRC):
    OUT/<dataset>/dataset.json + <split>.jsonl + shards/   the validated datasets (clean rows only)
    OUT/validation.json    per dataset: each expectation, pass/fail, GX unexpected count, rows quarantined
    OUT/quarantine.jsonl   one line per rejected row: dataset, split, file, row, reason, data
    OUT/data_docs/index.html (self-contained summary) and OUT/data_docs/gx/ (the GX Data Docs site)

Nothing is dropped silently: clean + quarantined == input rows, per dataset and split. If any dataset
rejects more than `max_reject_fraction` of its rows the reports are still written, no dataset is, and a
UserError names the dataset.
"""

from __future__ import annotations

import argparse
import hashlib
import html
import io as _pyio
import json
import logging
import os
import re
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from tqdm import tqdm

from beit3core import io
from beit3core.data import formats
from beit3core.data.formats import KindSpec
from beit3core.data.shards import IMAGE_EXTS, ShardReader, ShardWriter
from beit3core.data.staging import staged_dir
from beit3core.errors import UserError

log = logging.getLogger(__name__)

SURROGATE = re.compile("[\ud800-\udfff]")
URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
ABSOLUTE = re.compile(r"^(?:/|\\|[A-Za-z]:)")
ESCAPES = re.compile(r"(?:^|[/\\])\.\.(?:[/\\]|$)")
UNSAFE_PATH = r"^(?:/|\\|[A-Za-z]:|[A-Za-z][A-Za-z0-9+.-]*://)|(?:^|[/\\])\.\.(?:[/\\]|$)"  # the same, for GX
EVAL_SPLITS = ("test", "val", "validation", "dev", "minival", "testdev", "test-dev")
MEMORY_BUDGET = 512 << 20  # image bytes kept from the check for packing; beyond it images are read again


# ------------------------------------------------------------------------------------------ reading
@dataclass
class Table:
    """All rows of one dataset, every split, in file order."""

    header: dict
    spec: KindSpec
    split: np.ndarray  # split name per row
    line: np.ndarray  # 1-based line number in <split>.jsonl
    rows: list  # dict, or an _Invalid
    prefix: str = ""  # dataset path shown in reasons ("tasks/vqa/")

    def __len__(self) -> int:
        return len(self.rows)

    def where(self, i: int) -> str:
        return f"{self.prefix}{formats.split_file(self.split[i])}:row {self.line[i]}"


@dataclass
class _Invalid:
    raw: str
    message: str


def parse_jsonl(data: bytes) -> tuple[list, list[int]]:
    """Rows of a JSON-lines file and their 1-based line numbers; malformed lines become _Invalid.

    Bytes that are not UTF-8 are kept as lone surrogates (surrogateescape) for the checks to name them.
    """
    text = data.decode("utf-8", "surrogateescape")
    numbered = [(n, line) for n, line in enumerate(text.split("\n"), 1) if line.strip()]
    try:  # fast path: one parser call for the whole file
        rows = json.loads("[" + ",".join(line for _, line in numbered) + "]")
        if len(rows) == len(numbered) and all(type(r) is dict for r in rows):
            return rows, [n for n, _ in numbered]
    except ValueError:
        pass
    rows, lines = [], []
    loads = json.loads
    for n, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = loads(line)
        except ValueError as e:
            row = _Invalid(line, f"invalid JSON ({getattr(e, 'msg', e)})")
        else:
            if not isinstance(row, dict):
                row = _Invalid(line, "not a JSON object")
        rows.append(row)
        lines.append(n)
    return rows, lines


def read_table(uri: str, prefix: str = "") -> Table:
    where = io.join(uri, formats.HEADER)
    if not io.exists(where):
        raise UserError(f"{where}: no such file (not a dataset folder)")
    header = formats.check_header(io.read_json(where), where)
    spec = formats.kind_spec(header["kind"], where)
    all_rows, splits, lines = [], [], []
    for split in header["splits"]:
        path = io.join(uri, formats.split_file(split))
        if not io.exists(path):
            raise UserError(f"{path}: no such file (split {split!r} is listed in dataset.json)")
        rows, nums = parse_jsonl(io.read_bytes(path))
        all_rows += rows
        lines += nums
        splits += [split] * len(rows)
    return Table(header, spec, np.array(splits, dtype=object), np.array(lines, dtype=np.int64), all_rows, prefix)


# ------------------------------------------------------------------------------------------ checks
@dataclass
class Check:
    """One rule: which rows break it (and why), and the GX expectation that states it."""

    name: str
    expectation: str  # GX expectation class in great_expectations.expectations
    kwargs: dict
    bad: np.ndarray
    reasons: dict[int, str] = field(default_factory=dict)


def _clean_text(v):
    """A string GX can hash and render: lone surrogates shown as U+FFFD."""
    return SURROGATE.sub("\ufffd", v) if not v.isascii() and SURROGATE.search(v) else v


def _gx_value(v):
    if v is None or isinstance(v, bool | int | float):
        return v
    if isinstance(v, str):
        return _clean_text(v)
    return _clean_text(json.dumps(v, sort_keys=True, ensure_ascii=False))


def _short(v, limit: int = 60) -> str:
    s = repr(_gx_value(v)) if isinstance(v, str) else json.dumps(v, ensure_ascii=False, default=str)
    return s if len(s) <= limit else s[: limit - 3] + "..."


TYPES = {
    "id": ((str, int), "a string or an integer"),
    "image_id": ((str, int), "a string or an integer"),
    "label": ((str,), "a string"),
    "answers": ((list,), "a list of strings"),
}


def _type_ok(spec: KindSpec, name: str, values: list) -> tuple[np.ndarray, str]:
    if spec.kind == "nlvr2" and name == "label":
        return np.fromiter((type(v) is bool for v in values), bool, len(values)), "true or false"
    if name == "answers":
        ok = (type(v) is list and all(type(a) is str for a in v) for v in values)
        return np.fromiter(ok, bool, len(values)), "a list of strings"
    types, text = TYPES.get(name, ((str,), "a string"))
    return np.fromiter((type(v) in types for v in values), bool, len(values)), text


def _vocab_norm(answer: str) -> str:
    return " ".join(answer.lower().split())


def _flag(ok: np.ndarray, applies: np.ndarray) -> pd.arrays.BooleanArray:
    """A nullable boolean column: `ok` where the rule applies, NA elsewhere (GX skips NA)."""
    return pd.arrays.BooleanArray(np.asarray(ok, bool), ~np.asarray(applies, bool))


def _gx_column(values: list) -> list:
    """The column GX sees: the values themselves, except lists/dicts (as JSON) and lone surrogates (U+FFFD)."""
    fix = [i for i, v in enumerate(values)
           if not (v is None or (type(v) is str and v.isascii()) or type(v) in (int, float, bool))]
    if not fix:
        return values
    out = list(values)
    for i in fix:
        out[i] = _gx_value(values[i])
    return out


def _invalid_utf8(values: list, typed: np.ndarray) -> np.ndarray:
    """True where a string holds a lone surrogate (bytes that were not UTF-8)."""
    bad = np.zeros(len(values), bool)
    for i, v in enumerate(values):
        if typed[i] and not v.isascii() and SURROGATE.search(v):
            bad[i] = True
    return bad


def metadata_checks(t: Table) -> tuple[list[Check], pd.DataFrame, np.ndarray]:
    """Row checks that need no image bytes, the GX frame (parseable rows) and the parseable-row mask.

    Per-value work is one pass of cheap C-level string tests per column; regular expressions and reason
    strings only touch the rows that are suspicious or bad, so 1M rows take seconds.
    """
    spec, header, n = t.spec, t.header, len(t)
    parsed = np.fromiter((type(r) is dict for r in t.rows), bool, n)
    checks = [Check("rows are JSON objects", "ExpectColumnValuesToBeInSet",
                    {"column": "row_is_json_object", "value_set": [True]}, ~parsed,
                    {int(i): t.rows[i].message for i in np.flatnonzero(~parsed)})]
    empty_row: dict = {}
    rows = [r if type(r) is dict else empty_row for r in t.rows]
    gx: dict[str, object] = {"row_is_json_object": parsed}
    cols: dict[str, list] = {f: [r.get(f) for r in rows] for f in spec.fields}
    typed: dict[str, np.ndarray] = {}
    safe: dict[str, np.ndarray] = {}

    for f in spec.fields:
        values = cols[f]
        present = np.fromiter((v is not None for v in values), bool, n)
        if f in spec.vocab and f != "answers":
            gx[f] = _gx_column(values)
        if f in spec.required:
            bad = parsed & ~present
            # stated on the type column: it is NA exactly where the field is missing or null
            checks.append(Check(f"{f}: present and not null", "ExpectColumnValuesToNotBeNull",
                                {"column": f"{f}__type_ok"}, bad,
                                {int(i): f"field {f!r}: missing or null" for i in np.flatnonzero(bad)}))
        ok, expected = _type_ok(spec, f, values)
        typed[f] = ok & present
        bad = parsed & present & ~ok
        gx[f"{f}__type_ok"] = _flag(ok, present)
        checks.append(Check(f"{f}: is {expected}", "ExpectColumnValuesToBeInSet",
                            {"column": f"{f}__type_ok", "value_set": [True]}, bad,
                            {int(i): f"field {f!r}: expected {expected}, got {_short(values[i])}"
                             for i in np.flatnonzero(bad)}))

    # text fields: valid UTF-8, non-empty, bounded
    for tf in spec.text_fields:
        values, ok_type = cols[tf.name], typed[tf.name]
        invalid = _invalid_utf8(values, ok_type)
        gx[f"{tf.name}__valid_utf8"] = _flag(~invalid, ok_type)
        checks.append(Check(f"{tf.name}: valid UTF-8", "ExpectColumnValuesToBeInSet",
                            {"column": f"{tf.name}__valid_utf8", "value_set": [True]}, invalid,
                            {int(i): f"field {tf.name!r}: not valid UTF-8" for i in np.flatnonzero(invalid)}))
        stripped = [v.strip() if type(v) is str else None for v in values]
        lengths = np.fromiter((len(v) if v is not None else -1 for v in stripped), np.int64, n)
        gx[f"{tf.name}__stripped"] = _gx_column(stripped)
        bad = ok_type & ((lengths < tf.min_len) | (lengths > tf.max_len))
        reasons = {int(i): (f"field {tf.name!r}: empty" if lengths[i] == 0 else
                            f"field {tf.name!r}: {int(lengths[i])} characters, outside [{tf.min_len}, {tf.max_len}]")
                   for i in np.flatnonzero(bad)}
        checks.append(Check(f"{tf.name}: {tf.min_len} to {tf.max_len} characters", "ExpectColumnValueLengthsToBeBetween",
                            {"column": f"{tf.name}__stripped", "min_value": tf.min_len, "max_value": tf.max_len},
                            bad, reasons))

    # unique ids across all splits; the first occurrence is kept
    has_id = typed["id"]
    keys = [str(v) if has_id[k] else None for k, v in enumerate(cols["id"])]
    dup = pd.Series(keys, dtype=object).duplicated(keep="first").to_numpy() & has_id
    reasons = {}
    if dup.any():
        dup_keys = {keys[i] for i in np.flatnonzero(dup)}
        first: dict[str, int] = {}
        for i, k in enumerate(keys):
            if k in dup_keys and k not in first:
                first[k] = i
        reasons = {int(i): f"duplicate id {_short(cols['id'][i])} (first at {t.where(first[keys[i]])})"
                   for i in np.flatnonzero(dup)}
    gx["id__key"] = _gx_column(keys)
    checks.append(Check("id: unique across splits", "ExpectColumnValuesToBeUnique", {"column": "id__key"}, dup, reasons))

    # image paths: relative, inside the root, local. Only suspicious strings meet the regular expressions.
    for f in spec.image_fields:
        values, ok_type = cols[f], typed[f]
        suspicious = [i for i, v in enumerate(values) if type(v) is str and (
            ".." in v or ":" in v or v[:1] in ("/", "\\") or not v.strip() or not v.isascii())]
        bad = np.zeros(n, bool)
        reasons = {}
        for i in suspicious:
            v = values[i]
            shown = _short(v)
            reason = (f"field {f!r}: empty path" if not v.strip() else
                      f"field {f!r}: path is not valid UTF-8" if not v.isascii() and SURROGATE.search(v) else
                      f"field {f!r}: remote URL not fetched (no network at run time): {shown}" if URL.search(v) else
                      f"field {f!r}: absolute path {shown}" if ABSOLUTE.search(v) else
                      f"field {f!r}: path escapes the dataset root: {shown}" if ESCAPES.search(v) else None)
            if reason:
                bad[i] = True
                reasons[i] = reason
        path_col = list(values)
        for i in suspicious:
            path_col[i] = None if not values[i].strip() else _clean_text(values[i])
        if not ok_type.all():
            path_col = [v if ok_type[k] else None for k, v in enumerate(path_col)]
        gx[f"{f}__path"] = path_col
        # (empty and undecodable paths are quarantined too; the regex does not state them)
        checks.append(Check(f"{f}: a relative path inside the dataset", "ExpectColumnValuesToNotMatchRegex",
                            {"column": f"{f}__path", "regex": UNSAFE_PATH}, bad, reasons))
        safe[f] = ok_type & ~bad  # only these are opened

    # vocabularies
    for f, key in spec.vocab.items():
        vocab = header.get(key)
        if vocab is None:
            continue
        values = cols[f]
        if f == "answers":
            norm_vocab = {_vocab_norm(a) for a in vocab if isinstance(a, str)}
            train = np.isin(t.split, [s for s in header["splits"] if s not in EVAL_SPLITS])
            hit = np.fromiter((typed[f][k] and any(_vocab_norm(a) in norm_vocab for a in v)
                               for k, v in enumerate(values)), bool, n)
            bad = typed[f] & train & ~hit
            gx["answers__in_vocab"] = _flag(hit, typed[f] & train)
            checks.append(Check("answers: at least one in the answer vocabulary (training splits)",
                                "ExpectColumnValuesToBeInSet", {"column": "answers__in_vocab", "value_set": [True]},
                                bad, {int(i): "field 'answers': no answer in the answer vocabulary"
                                      for i in np.flatnonzero(bad)}))
        else:
            vocab_set = set(vocab)
            inv = np.fromiter((v in vocab_set if typed[f][k] else True for k, v in enumerate(values)), bool, n)
            bad = typed[f] & ~inv
            checks.append(Check(f"{f}: in dataset.json[{key!r}]", "ExpectColumnValuesToBeInSet",
                                {"column": f, "value_set": sorted(vocab_set, key=str)}, bad,
                                {int(i): f"field {f!r}: {_short(values[i])} not in {key}" for i in np.flatnonzero(bad)}))
    if spec.kind == "nlvr2":
        both = typed["image_left"] & typed["image_right"]
        same = np.fromiter((both[k] and a == b for k, (a, b) in enumerate(zip(cols["image_left"], cols["image_right"],
                                                                              strict=True))), bool, n)
        gx["images__distinct"] = _flag(~same, both)
        checks.append(Check("image_left and image_right: two different images", "ExpectColumnValuesToBeInSet",
                            {"column": "images__distinct", "value_set": [True]}, same,
                            {int(i): "fields 'image_left', 'image_right': the same image twice" for i in np.flatnonzero(same)}))

    # split disjointness: a value shared with a more authoritative split (test > val > train) is quarantined
    if spec.disjoint_key and len(header["splits"]) > 1:
        f = spec.disjoint_key
        usable = safe.get(f, typed[f])
        keys = pd.Series([str(v) if usable[k] else None for k, v in enumerate(cols[f])], dtype=object)
        prio = {s: (EVAL_SPLITS.index(s) if s in EVAL_SPLITS else len(EVAL_SPLITS)) for s in header["splits"]}
        rank = np.array([prio[s] for s in t.split], dtype=np.int64)
        best = pd.DataFrame({"k": keys, "r": rank})[usable].groupby("k")["r"].min()
        best_rank = keys.map(best).to_numpy(dtype=float, na_value=np.nan)
        bad = usable & (rank > best_rank)
        by_rank = {v: s for s, v in prio.items()}
        reasons = {int(i): f"field {f!r}: {_short(cols[f][i])} also in split {by_rank[int(best_rank[i])]!r} "
                           f"(splits must not share images)" for i in np.flatnonzero(bad)}
        gx[f"{f}__split_disjoint"] = _flag(~bad, usable)
        checks.append(Check(f"{f}: not shared between splits", "ExpectColumnValuesToBeInSet",
                            {"column": f"{f}__split_disjoint", "value_set": [True]}, bad, reasons))

    # GX hashes the whole frame: only the columns the suite reads, flags as nullable booleans
    frame = pd.DataFrame({k: (v if isinstance(v, np.ndarray | pd.arrays.BooleanArray) else pd.Series(v, dtype=object))
                          for k, v in gx.items()})
    for f in spec.image_fields:
        frame[f"{f}__safe"] = safe[f]
    return checks, frame, parsed


# ------------------------------------------------------------------------------------------ images
@dataclass
class ImageResult:
    ok: bool
    reason: str = ""
    width: int = 0
    height: int = 0
    ext: str = "jpg"
    md5: str = ""
    data: bytes | None = None


def check_image_bytes(data: bytes) -> ImageResult:
    """Decode fully (a truncated file fails) and check the size bounds."""
    from PIL import Image

    try:
        with Image.open(_pyio.BytesIO(data)) as img:
            fmt, (w, h) = img.format, img.size
            if min(w, h) < formats.MIN_IMAGE_SIDE or max(w, h) > formats.MAX_IMAGE_SIDE or \
                    w * h > formats.MAX_IMAGE_PIXELS:
                return ImageResult(False, f"image is {w}x{h} pixels, outside the bounds "
                                          f"(sides {formats.MIN_IMAGE_SIDE}..{formats.MAX_IMAGE_SIDE}, "
                                          f"at most {formats.MAX_IMAGE_PIXELS} pixels)", w, h)
            img.verify()
        with Image.open(_pyio.BytesIO(data)) as img:
            img.load()
        if fmt == "PNG" and not data.rstrip(b"\0").endswith(b"IEND\xaeB`\x82"):
            raise OSError("PNG ends before its IEND chunk (truncated)")
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, struct.error, ... on bad data
        return ImageResult(False, f"image does not decode ({type(e).__name__}: {' '.join(str(e).split())})")
    return ImageResult(True, "", w, h, IMAGE_EXTS.get(fmt, (fmt or "img").lower()), hashlib.md5(data).hexdigest())


def _read_ref(root: str, ref: str, reader: ShardReader | None) -> bytes | None:
    try:
        if formats.is_shard_ref(ref) and reader is not None:
            return reader.read(*formats.parse_shard_ref(ref))
        return io.read_bytes(io.join(root, ref))
    except (UserError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError):
        return None


def _check_one(root: str, ref: str, reader: ShardReader | None) -> ImageResult:
    data = _read_ref(root, ref, reader)
    if data is None:
        return ImageResult(False, f"image not found: {_short(ref)}")
    res = check_image_bytes(data)
    res.data = data if res.ok else None
    return res


def _check_chunk(root: str, refs: list[str]) -> list[ImageResult]:
    """Process-pool task: check a chunk of images; bytes stay in the worker (read again when packing)."""
    reader = ShardReader(root)
    out = []
    for ref in refs:
        res = _check_one(root, ref, reader)
        res.data = None
        out.append(res)
    return out


def check_images(root: str, refs: list[str], workers: int, keep_bytes: bool = True, desc: str = "images",
                 processes: bool | None = None) -> dict[str, ImageResult]:
    """Check every referenced image in parallel; keep the bytes (up to a memory budget) for packing.

    Threads by default: reads wait on disk or network, Pillow's decoder releases the GIL, and the bytes stay
    at hand for packing. `processes=True` uses a process pool instead (bytes are then read again to pack).
    """
    workers = max(1, workers)
    processes = bool(processes) and workers > 1
    results: dict[str, ImageResult] = {}
    bar = tqdm(total=len(refs), desc=desc, unit="img", leave=False, mininterval=1.0)
    if processes:
        import multiprocessing as mp

        step = max(16, min(256, len(refs) // (workers * 8) or 1))
        chunks = [refs[i:i + step] for i in range(0, len(refs), step)]
        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            for chunk, res in zip(chunks, pool.map(_check_chunk, [root] * len(chunks), chunks), strict=True):
                results.update(zip(chunk, res, strict=True))
                bar.update(len(chunk))
        bar.close()
        return results
    reader = ShardReader(root)
    budget = MEMORY_BUDGET if keep_bytes else 0
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for ref, res in zip(refs, pool.map(lambda r: _check_one(root, r, reader), refs), strict=True):
            if res.data is not None:
                if budget >= len(res.data):
                    budget -= len(res.data)
                else:
                    res.data = None
            results[ref] = res
            bar.update()
    bar.close()
    return results


def image_checks(t: Table, frame: pd.DataFrame, workers: int, root: str) -> tuple[list[Check], dict[str, ImageResult]]:
    spec = t.spec
    refs: dict[str, None] = {}
    for f in spec.image_fields:
        safe = frame[f"{f}__safe"].to_numpy(bool)
        for i in np.flatnonzero(safe):
            refs.setdefault(t.rows[i][f])
    results = check_images(root, list(refs), workers, desc=f"{t.prefix or 'dataset '}images")
    checks = []
    for f in spec.image_fields:
        safe = frame[f"{f}__safe"].to_numpy(bool)
        ok = np.ones(len(t), bool)
        reasons = {}
        for i in np.flatnonzero(safe):
            res = results[t.rows[i][f]]
            if not res.ok:
                ok[i] = False
                reasons[int(i)] = f"field {f!r}: {res.reason}"
        frame[f"{f}__image_ok"] = _flag(ok, safe)
        checks.append(Check(f"{f}: image exists, decodes, within size bounds", "ExpectColumnValuesToBeInSet",
                            {"column": f"{f}__image_ok", "value_set": [True]}, safe & ~ok, reasons))
    return checks, results


# ------------------------------------------------------------------------------------------ GX
class GXRunner:
    """One ephemeral GX context, one suite per dataset, Data Docs built into a local folder."""

    SITE = "beit3_validation"  # an ephemeral context already has a site named local_site

    def __init__(self, docs_dir: str):
        # GX logs hundreds of INFO lines while it sets up; keep ours readable.
        logging.getLogger("great_expectations").setLevel(max(logging.WARNING, logging.getLogger().level))
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        self.gx = gx
        self.ctx = gx.get_context(mode="ephemeral")
        self.ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
        self.ctx.add_data_docs_site(site_name=self.SITE, site_config={
            "class_name": "SiteBuilder", "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": docs_dir}})
        self.source = self.ctx.data_sources.add_pandas("beit3")
        self.count = 0

    def run(self, name: str, kind: str, frame: pd.DataFrame, checks: list[Check]) -> dict:
        import great_expectations.expectations as gxe

        gx = self.gx
        self.count += 1
        asset_name = re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "dataset"
        asset = self.source.add_dataframe_asset(name=f"{self.count:02d}_{asset_name}")
        batch = asset.add_batch_definition_whole_dataframe("all_rows")
        suite = self.ctx.suites.add(gx.ExpectationSuite(name=f"{kind}_{asset_name}"))
        suite.add_expectation(gxe.ExpectTableRowCountToBeBetween(min_value=1))
        for c in checks:
            suite.add_expectation(getattr(gxe, c.expectation)(**c.kwargs))
        vd = self.ctx.validation_definitions.add(gx.ValidationDefinition(name=f"vd_{self.count}", data=batch, suite=suite))
        cp = self.ctx.checkpoints.add(gx.Checkpoint(
            name=f"cp_{self.count}", validation_definitions=[vd], result_format={"result_format": "SUMMARY"},
            actions=[]))  # the Data Docs are built once, by build_docs()
        result = cp.run(batch_parameters={"dataframe": frame})
        (vr,) = result.run_results.values()
        out = {"success": bool(vr.success), "statistics": dict(vr.statistics), "results": []}
        for r in vr.results:
            cfg = r.expectation_config
            kwargs = {k: v for k, v in cfg.kwargs.items() if k not in ("batch_id",)}
            out["results"].append({"expectation": cfg.type, "kwargs": kwargs, "success": bool(r.success),
                                   "unexpected_count": (r.result or {}).get("unexpected_count"),
                                   "observed_value": (r.result or {}).get("observed_value"),
                                   "exception": bool(r.exception_info.get("raised_exception"))
                                   if isinstance(r.exception_info, dict) else False})
        return out

    def build_docs(self) -> None:
        self.ctx.build_data_docs(site_names=[self.SITE])


# ------------------------------------------------------------------------------------------ driver
@dataclass
class DatasetReport:
    rel: str
    table: Table
    checks: list[Check]
    clean: np.ndarray
    reasons: dict[int, str]
    images: dict[str, ImageResult]
    frame: pd.DataFrame | None = None  # what GX validates
    gx: dict | None = None

    @property
    def rejected_fraction(self) -> float:
        return float((~self.clean).sum()) / len(self.clean) if len(self.clean) else 0.0


def validate_table(t: Table, root: str = "", workers: int = 2, check_images_: bool = True):
    """All checks of one dataset: (checks, GX frame, clean mask, reasons by row index, image results)."""
    checks, frame, _ = metadata_checks(t)
    images = {}
    if check_images_ and t.spec.image_fields:
        img_checks, images = image_checks(t, frame, workers, root)
        checks += img_checks
    n = len(t)
    bad = np.zeros(n, bool)
    per_row: dict[int, list[str]] = {}
    for c in checks:
        bad |= c.bad
        for i in np.flatnonzero(c.bad):
            per_row.setdefault(int(i), []).append(c.reasons.get(int(i), c.name))
    reasons = {i: f"{t.where(i)}: " + "; ".join(rs) for i, rs in sorted(per_row.items())}
    gx_frame = frame[np.asarray([type(r) is dict for r in t.rows], bool)].drop(
        columns=[c for c in frame.columns if c.endswith("__safe")]).reset_index(drop=True)
    return checks, gx_frame, ~bad, reasons, images


def _source_fingerprint(uri: str, header: dict, images: dict[str, ImageResult]) -> str:
    digest = hashlib.md5()
    for name in [formats.HEADER] + [formats.split_file(s) for s in header["splits"]]:
        digest.update(name.encode() + b"\0" + hashlib.md5(io.read_bytes(io.join(uri, name))).hexdigest().encode())
    for ref in sorted(images):
        digest.update(ref.encode("utf-8", "surrogateescape") + b"\0" + images[ref].md5.encode())
    return digest.hexdigest()


def _pack(src: str, dst: str, rep: DatasetReport, shard_size: int) -> dict:
    """Write the validated dataset: clean rows with shard references, images in shards."""
    t, spec = rep.table, rep.table.spec
    reader = ShardReader(src)
    writer = ShardWriter(os.path.join(dst, formats.SHARD_DIR), shard_size) if spec.image_fields else None
    packed: dict[str, str] = {}
    counts = {}
    caption_field = next((tf.name for tf in spec.text_fields if tf.name == "caption"), None)
    key = 0
    for split in t.header["splits"]:
        out_rows = []
        for i in np.flatnonzero((t.split == split) & rep.clean):
            row = dict(t.rows[i])
            for f in spec.image_fields:
                ref = row[f]
                if ref not in packed:
                    res = rep.images[ref]
                    data = res.data if res.data is not None else _read_ref(src, ref, reader)
                    if data is None:
                        raise UserError(f"{io.join(src, ref)}: disappeared during validation")
                    key += 1
                    member = writer.add(f"{key:09d}", data, res.ext, row.get(caption_field, "") if caption_field else "",
                                        {"source": _gx_value(ref), "width": res.width, "height": res.height,
                                         "split": split})
                    packed[ref] = formats.shard_ref(f"{formats.SHARD_DIR}/{writer.current}", member)
                    res.data = None
                row[f] = packed[ref]
            out_rows.append(row)
        if writer:
            writer.flush()  # shards never span two splits
        with open(os.path.join(dst, formats.split_file(split)), "w", encoding="utf-8") as f:
            for row in out_rows:
                f.write(json.dumps(row, sort_keys=True, ensure_ascii=True) + "\n")
        counts[split] = len(out_rows)
    shards = writer.close() if writer else []
    return {"rows": counts, "shards": len(shards), "images": len(packed)}


def _expectation_summary(rep: DatasetReport) -> list[dict]:
    out = []
    gx_results = list(rep.gx["results"]) if rep.gx else []
    if gx_results and gx_results[0]["expectation"] == "expect_table_row_count_to_be_between":
        r = gx_results.pop(0)
        out.append({"check": "at least one row", **r, "quarantined": 0})
    by_key = {(r["expectation"], r["kwargs"].get("column")): r for r in gx_results}
    for c in rep.checks:
        snake = re.sub(r"(?<!^)(?=[A-Z])", "_", c.expectation).lower()
        r = by_key.get((snake, c.kwargs.get("column")))
        entry = {"check": c.name, "quarantined": int(c.bad.sum())}
        if r is not None:
            entry.update(r)
            if "value_set" in entry["kwargs"] and len(entry["kwargs"]["value_set"]) > 50:
                entry["kwargs"] = {**entry["kwargs"], "value_set": f"<{len(entry['kwargs']['value_set'])} values>"}
        else:
            entry.update({"expectation": c.expectation, "kwargs": c.kwargs, "success": not c.bad.any()})
        out.append(entry)
    return out


def _summary_html(summary: dict) -> str:
    e = html.escape
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>Data validation</title><style>",
             "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:2em}",
             "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}.ok{color:#080}.bad{color:#b00}",
             "</style></head><body><h1>Data validation</h1>",
             f"<p>Overall: <b class='{'ok' if summary['success'] else 'bad'}'>{'PASS' if summary['success'] else 'FAIL'}"
             f"</b>; maximum rejected fraction {summary['max_reject_fraction']}. "
             "The full Great Expectations Data Docs are in <a href='gx/index.html'>gx/index.html</a>.</p>"]
    for rel, d in summary["datasets"].items():
        parts.append(f"<h2>{e(rel)} <small>({e(d['kind'])})</small></h2><p>{d['rows']} rows, {d['clean']} clean, "
                     f"{d['quarantined']} quarantined ({d['rejected_fraction']:.2%}) - "
                     f"<b class='{'ok' if d['within_threshold'] else 'bad'}'>"
                     f"{'within' if d['within_threshold'] else 'above'} threshold</b></p>")
        parts.append("<table><tr><th>check</th><th>GX expectation</th><th>result</th><th>unexpected</th>"
                     "<th>quarantined</th></tr>")
        for x in d["expectations"]:
            parts.append(f"<tr><td>{e(x['check'])}</td><td>{e(x['expectation'])}</td>"
                         f"<td class='{'ok' if x['success'] else 'bad'}'>{'pass' if x['success'] else 'fail'}</td>"
                         f"<td>{x.get('unexpected_count') if x.get('unexpected_count') is not None else ''}</td>"
                         f"<td>{x['quarantined']}</td></tr>")
        parts.append("</table>")
        if d.get("examples"):
            parts.append("<p>First quarantined rows:</p><ul>" +
                         "".join(f"<li>{e(r)}</li>" for r in d["examples"]) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)


def validate(src: str, out: str, *, max_reject_fraction: float = 0.05, workers: int | None = None,
             shard_size: int = 1000, data_docs: bool = True) -> dict:
    """Validate a dataset or a collection into `out`; returns the summary written to validation.json."""
    if not 0 <= max_reject_fraction <= 1:
        raise UserError(f"--max-reject-fraction must be between 0 and 1, got {max_reject_fraction}")
    workers = workers or os.cpu_count() or 1
    if workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    a = str(src).rstrip("/") if io.is_remote(src) else os.path.abspath(src)
    b = str(out).rstrip("/") if io.is_remote(out) else os.path.abspath(out)
    if a == b or b.startswith(a + "/") or a.startswith(b + "/"):
        raise UserError(f"--out {out}: must be outside SRC {src} (and not contain it)")
    rels = formats.find_datasets(src)
    reports: list[DatasetReport] = []
    for rel in tqdm(rels, desc="validate", unit="dataset", disable=len(rels) < 2):
        uri = io.join(src, rel) if rel else src
        t = read_table(uri, prefix=f"{rel}/" if rel else "")
        checks, frame, clean, reasons, images = validate_table(t, uri, workers)
        reports.append(DatasetReport(rel, t, checks, clean, reasons, images, frame))

    with tempfile.TemporaryDirectory(prefix="beit3-gx-") as docs_tmp:
        if data_docs:
            runner = GXRunner(docs_tmp)
            for rep in reports:
                rep.gx = runner.run(rep.rel or rep.table.header["name"], rep.table.spec.kind, rep.frame, rep.checks)
            runner.build_docs()

        summary = {"max_reject_fraction": max_reject_fraction, "datasets": {}, "success": True}
        failures = []
        for rep in reports:
            t = rep.table
            n, q = len(t), int((~rep.clean).sum())
            within = rep.rejected_fraction <= max_reject_fraction
            if not within:
                failures.append(rep)
            summary["datasets"][rep.rel or "."] = {
                "kind": t.spec.kind, "name": t.header["name"], "rows": n, "clean": n - q, "quarantined": q,
                "rejected_fraction": round(rep.rejected_fraction, 6), "within_threshold": within,
                "gx_success": rep.gx["success"] if rep.gx else None,
                "splits": {s: {"rows": int((t.split == s).sum()), "clean": int(((t.split == s) & rep.clean).sum()),
                               "quarantined": int(((t.split == s) & ~rep.clean).sum())} for s in t.header["splits"]},
                "expectations": _expectation_summary(rep),
                "examples": [rep.reasons[i] for i in list(rep.reasons)[:10]],
            }
        summary["success"] = not failures

        with staged_dir(out) as stage:
            if not failures:
                for rep in tqdm(reports, desc="write shards", unit="dataset", disable=len(reports) < 2):
                    src_uri = io.join(src, rep.rel) if rep.rel else src
                    dst = os.path.join(stage, rep.rel) if rep.rel else stage
                    os.makedirs(dst, exist_ok=True)
                    packed = _pack(src_uri, dst, rep, shard_size)
                    header = {k: v for k, v in rep.table.header.items()}
                    header["validation"] = {"rows": len(rep.table), "clean": int(rep.clean.sum()),
                                            "quarantined": int((~rep.clean).sum()),
                                            "max_reject_fraction": max_reject_fraction, "shard_size": shard_size,
                                            "shards": packed["shards"], "images": packed["images"],
                                            "gx_success": summary["datasets"][rep.rel or "."]["gx_success"]}
                    header["validated"] = True
                    header["source_fingerprint"] = _source_fingerprint(src_uri, rep.table.header, rep.images)
                    with open(os.path.join(dst, formats.HEADER), "w", encoding="utf-8") as f:
                        f.write(json.dumps(header, sort_keys=True, indent=2) + "\n")
            with open(os.path.join(stage, "quarantine.jsonl"), "w", encoding="utf-8") as f:
                for rep in reports:
                    for i, reason in rep.reasons.items():
                        row = rep.table.rows[i]
                        f.write(json.dumps({
                            "dataset": rep.rel or ".", "split": rep.table.split[i],
                            "file": f"{rep.table.prefix}{formats.split_file(rep.table.split[i])}",
                            "row": int(rep.table.line[i]), "reason": reason,
                            "data": row if type(row) is dict else {"raw": row.raw}}, sort_keys=True, ensure_ascii=True) + "\n")
            docs = os.path.join(stage, "data_docs")
            os.makedirs(docs, exist_ok=True)
            if data_docs and os.path.isdir(docs_tmp) and os.listdir(docs_tmp):
                shutil.copytree(docs_tmp, os.path.join(docs, "gx"))
            with open(os.path.join(docs, "index.html"), "w", encoding="utf-8") as f:
                f.write(_summary_html(summary))
            with open(os.path.join(stage, "validation.json"), "w", encoding="utf-8") as f:
                f.write(json.dumps(summary, sort_keys=True, indent=2, ensure_ascii=True, default=str) + "\n")

    from beit3core.data.reading import clear_cache

    clear_cache(out)  # readers in this process must not keep indexes of the shards just replaced
    for rel, d in summary["datasets"].items():
        log.info("%s: %d rows, %d clean, %d quarantined", rel, d["rows"], d["clean"], d["quarantined"])
    if failures:
        worst = max(failures, key=lambda r: r.rejected_fraction)
        d = summary["datasets"][worst.rel or "."]
        raise UserError(f"{io.join(src, worst.rel) if worst.rel else src}: {d['quarantined']} of {d['rows']} rows "
                        f"rejected ({d['rejected_fraction']:.1%}), above --max-reject-fraction {max_reject_fraction}; "
                        f"reasons in {io.join(out, 'quarantine.jsonl')}")
    return summary


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="a dataset or a collection (folder or s3:// URI)")
    p.add_argument("--out", required=True, help="where the validated copy and the reports go")
    p.add_argument("--max-reject-fraction", type=float, default=0.05)
    p.add_argument("--workers", type=int, default=None, help="parallel image checks (default: CPU count)")
    p.add_argument("--shard-size", type=int, default=1000, help="images per WebDataset shard")


def run(args: argparse.Namespace) -> int:
    summary = validate(args.src, args.out, max_reject_fraction=args.max_reject_fraction, workers=args.workers,
                       shard_size=args.shard_size)
    for rel, d in summary["datasets"].items():
        print(f"{rel}: {d['rows']} rows, {d['clean']} clean, {d['quarantined']} quarantined")
    print(f"wrote {args.out} (report: {io.join(args.out, 'validation.json')})")
    return 0
