"""Streaming validation: chunk by chunk with bounded memory, and the same verdicts and output as in one piece
(bad rows at chunk edges, duplicates across chunks and splits, images shared between chunks)."""

from __future__ import annotations

import importlib
import io as pyio
import json
import tracemalloc
from pathlib import Path

from PIL import Image

from beit3core.data.validation import validate

image_checks_module = importlib.import_module("beit3core.data.validation.image_checks")


def jpeg(colour) -> bytes:
    buf = pyio.BytesIO()
    Image.new("RGB", (16, 12), colour).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def pairs_dataset(root: Path) -> dict[str, int]:
    """A pairs dataset whose bad rows sit on the edges of 5-row chunks; returns the rows per split."""
    (root / "images").mkdir(parents=True)
    for i in range(12):
        (root / "images" / f"{i}.jpg").write_bytes(jpeg((20 * i, 50, 100)))

    def row(i, image, caption=None):
        return json.dumps({"id": i, "image": f"images/{image}.jpg", "caption": f"caption {i}" if caption is None else caption})

    train = [row(i, i % 8) for i in range(1, 24)]  # images 0..7, each used in two or three chunks
    train[4] = row(5, 1, "")  # line 5: the last of chunk 1, an empty caption
    train[5] = "{not json"  # line 6: the first of chunk 2
    train[9] = row(2, 3)  # line 10: the id of line 2 (chunk 1)
    train[10] = row(11, 9)  # line 11: an image also in test (validated first, though listed second)
    train[15] = row(100, 4)  # line 16: an id of the test split
    train[22] = row(23, 12)  # line 24 (23 rows and a blank line): the very last, a missing image
    test = [row(100 + i, 8 + i % 2) for i in range(3)] + [row(103, 10), row(100, 10)]  # a duplicate within test
    (root / "dataset.json").write_text(json.dumps({"kind": "pairs", "name": "p", "splits": ["train", "test"]}))
    (root / "train.jsonl").write_text("\n".join(train[:12]) + "\n\n" + "\n".join(train[12:]) + "\n")  # a blank line
    (root / "test.jsonl").write_text("\n".join(test) + "\n")
    return {"train": len(train), "test": len(test)}


def folder(root: Path) -> dict[str, bytes]:
    """The validated dataset's files (the reports, which name the chunk size, and the output record left out)."""
    reports = ("validation.json", "quarantine.jsonl", ".beit3-output.json")
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
            and "data_docs" not in p.parts and p.name not in reports}


def quarantine(root: Path) -> set[tuple]:
    return {(q["split"], q["row"], q["reason"]) for q in map(json.loads, (root / "quarantine.jsonl").read_text().splitlines())}


def test_chunked_validation_equals_one_piece_at_chunk_edges(tmp_path, monkeypatch):
    """5-row chunks give exactly the verdicts, reasons and files of one chunk; clean + quarantined == input."""
    rows = pairs_dataset(tmp_path / "src")
    checked: list[str] = []
    real = image_checks_module.check_images

    def counting(root, refs, *args, **kwargs):
        checked.extend(refs)
        return real(root, refs, *args, **kwargs)

    monkeypatch.setattr(image_checks_module, "check_images", counting)
    small = validate(str(tmp_path / "src"), str(tmp_path / "small"), max_reject_fraction=0.5, workers=2,
                     shard_size=3, chunk_rows=5, data_docs=False)
    assert sorted(checked) == sorted(set(checked)) and len(checked) == 12  # each image once, over all chunks
    whole = validate(str(tmp_path / "src"), str(tmp_path / "whole"), max_reject_fraction=0.5, workers=2,
                     shard_size=3, chunk_rows=10**6, data_docs=False)
    assert (small.pop("chunk_rows"), whole.pop("chunk_rows")) == (5, 10**6) and small == whole
    assert folder(tmp_path / "small") == folder(tmp_path / "whole")  # rows, shards, dataset.json: byte for byte
    q = quarantine(tmp_path / "small")
    assert q == quarantine(tmp_path / "whole")
    by_line = {(s, r): reason for s, r, reason in q}
    assert "field 'caption': empty" in by_line[("train", 5)]
    assert "invalid JSON" in by_line[("train", 6)]
    assert "duplicate id 2 (first at train.jsonl:row 2)" in by_line[("train", 10)]
    assert "also in split 'test'" in by_line[("train", 11)]
    assert "duplicate id 100 (first at test.jsonl:row 1)" in by_line[("train", 17)]  # line 17: after the blank
    assert "image not found" in by_line[("train", 24)]
    assert "duplicate id 100 (first at test.jsonl:row 1)" in by_line[("test", 5)]
    d = small["datasets"]["."]
    for split, n in rows.items():
        s = d["splits"][split]
        assert s["rows"] == n and s["clean"] + s["quarantined"] == n
        clean = (tmp_path / "small" / f"{split}.jsonl").read_text().splitlines()
        assert len(clean) == s["clean"] == n - sum(k[0] == split for k in q)
    assert (d["rows"], d["quarantined"]) == (28, 7)


def test_gx_runs_per_chunk_and_the_summary_adds_them_up(tmp_path):
    """One GX validation result per chunk (Data Docs), summed in validation.json: GX's unexpected count equals
    the rows quarantined for every check, the cross-chunk id check included."""
    pairs_dataset(tmp_path / "src")
    summary = validate(str(tmp_path / "src"), str(tmp_path / "v"), max_reject_fraction=0.5, workers=1, chunk_rows=5)
    d = summary["datasets"]["."]
    assert d["gx_success"] is False
    by_check = {x["check"]: x for x in d["expectations"]}
    assert by_check["at least one row"]["observed_value"] == 27 and by_check["at least one row"]["success"]
    assert by_check["id: unique across splits"]["unexpected_count"] == 3
    for x in d["expectations"][1:]:
        if x["check"] != "rows are JSON objects":  # GX sees the JSON objects only: that one is vacuous there
            assert x["unexpected_count"] == x["quarantined"], x
    runs = list((tmp_path / "v" / "data_docs" / "gx" / "validations").rglob("*.html"))
    assert len(runs) == 6  # train: 5 chunks of 5 lines (24 lines), test: 1 chunk


def _text_dataset(root: Path, rows: int) -> None:
    root.mkdir(parents=True)
    (root / "dataset.json").write_text(json.dumps({"kind": "text", "name": "t", "splits": ["train"]}))
    line = '{"id": %d, "text": "a sentence of some ordinary length, number %d, for the memory test"}\n'
    (root / "train.jsonl").write_text("".join(line % (i, i) for i in range(rows)))


def _peak_bytes(src: Path, out: Path) -> int:
    tracemalloc.start()
    try:
        summary = validate(str(src), str(out), workers=1, chunk_rows=1000, text_shard_size=1000, data_docs=False)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        assert summary["success"]


def test_memory_does_not_grow_with_rows(tmp_path):
    """The Python heap's peak validating 20k rows stays within 1.3x of 4k rows (whole-table code: ~5x)."""
    _text_dataset(tmp_path / "small", 4_000)
    _text_dataset(tmp_path / "large", 20_000)
    small = _peak_bytes(tmp_path / "small", tmp_path / "v_small")
    large = _peak_bytes(tmp_path / "large", tmp_path / "v_large")
    assert large <= 1.3 * small, (small, large)
    assert len((tmp_path / "v_large" / "train.jsonl").read_text().splitlines()) == 20_000


def test_split_chunks_number_lines_across_chunks_and_reads(tmp_path, monkeypatch):
    """Chunks cut at line ends whatever the read size: line numbers run on, blank lines count, a BOM opens
    only the file, a last line without newline is read, and the digest is the file's md5."""
    import hashlib

    from beit3core.data.validation import table

    data = b'\xef\xbb\xbf{"id": 1}\n\n{"id": 2}\n{bad\n{"id": 3}\n\xef\xbb\xbf{"id": 4}'
    (tmp_path / "train.jsonl").write_bytes(data)
    header = {"kind": "text", "name": "t", "splits": ["train"]}
    for read_size in (5, 1 << 20):
        monkeypatch.setattr(table, "READ_BLOCK", read_size)
        for n in (1, 2, 3, 100):
            digest = hashlib.md5()
            chunks = list(table.split_chunks(str(tmp_path), header, "train", n, digest=digest))
            assert all(len(t) <= n for t in chunks)
            assert [int(x) for t in chunks for x in t.line] == [1, 3, 4, 5, 6]
            rows = [r for t in chunks for r in t.rows]
            assert [r.get("id") if type(r) is dict else "bad" for r in rows] == [1, 2, "bad", 3, "bad"]
            assert digest.hexdigest() == hashlib.md5(data).hexdigest()


def test_gx_pages_of_a_nested_dataset_are_written(tmp_path):
    """great_expectations TupleFilesystemStoreBackend refuses keys holding '/' or '\\' (its `_validate_key`),
    and the run name is part of the key: a dataset inside a collection ("tasks/vqa") must still get its Data
    Docs validation pages (the error is only logged by GX, so check the pages exist)."""
    pairs_dataset(tmp_path / "src" / "tasks" / "pairs")
    validate(str(tmp_path / "src"), str(tmp_path / "v"), max_reject_fraction=0.5, workers=1, chunk_rows=5)
    runs = list((tmp_path / "v" / "data_docs" / "gx" / "validations").rglob("*.html"))
    assert len(runs) == 6
