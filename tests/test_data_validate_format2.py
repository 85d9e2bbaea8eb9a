"""The validated layout, format 2 (contract C1): every kind sharded, each split's images packed in its own
shards, the validated rows carried in `<key>.json`, and `validation.shards` counting each shard."""

from __future__ import annotations

import io as pyio
import json
from pathlib import Path

import pytest
from PIL import Image

from beit3core.data import formats
from beit3core.data.cli import main as data_main
from beit3core.data.shards import ShardWriter, group_samples, iter_tar
from beit3core.data.validation import validate
from beit3core.errors import UserError


def jpeg(colour) -> bytes:
    buf = pyio.BytesIO()
    Image.new("RGB", (16, 12), colour).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write_dataset(root: Path, header: dict, rows: dict[str, list[dict]], images: int = 0) -> Path:
    (root / "images").mkdir(parents=True)
    for i in range(images):
        (root / "images" / f"{i}.jpg").write_bytes(jpeg((20 * i, 40, 90)))
    (root / "dataset.json").write_text(json.dumps({**header, "splits": list(rows)}))
    for split, rs in rows.items():
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rs))
    return root


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def shard_samples(root: Path, name: str) -> list[tuple[str, dict[str, bytes]]]:
    return list(group_samples(iter_tar(str(root / name))))


def check_listing(out: Path, header: dict) -> dict[str, list]:
    """validation.shards agrees with the shards' contents; returns split -> its samples in shard order."""
    assert header["format_version"] == formats.VALIDATED_FORMAT == 2
    listed = header["validation"]["shards"]
    assert sorted(listed) == sorted(header["splits"])
    names = [s["name"] for split in header["splits"] for s in listed[split]]
    assert len(names) == len(set(names))  # shards never span two splits
    assert sorted(names) == sorted(f"shards/{p.name}" for p in (out / "shards").glob("*.tar"))
    by_split = {}
    for split in header["splits"]:
        samples = []
        for s in listed[split]:
            got = shard_samples(out, s["name"])
            assert (s["samples"], s["rows"]) == (len(got), sum(len(json.loads(m["json"])["rows"]) for _, m in got))
            samples += got
        by_split[split] = samples
    return by_split


def test_nlvr2_images_packed_once_per_split_rows_carried_by_first_image(tmp_path):
    """An image used by rows of two splits is in both splits' shards, once each; each sample carries the rows
    whose first image field (image_left) it is, exactly as written to <split>.jsonl, in jsonl order."""
    def row(i, left, right):
        return {"id": i, "image_left": f"images/{left}.jpg", "image_right": f"images/{right}.jpg",
                "sentence": f"sentence {i}", "label": bool(i % 2)}

    rows = {"train": [row(1, 0, 1), row(2, 2, 0), row(3, 0, 3), row(4, 4, 5), row(5, 2, 1)],
            "dev": [row(10, 0, 1), row(11, 5, 6)]}
    src = write_dataset(tmp_path / "nl", {"kind": "nlvr2", "name": "nl"}, rows, images=7)
    out = tmp_path / "v"
    validate(str(src), str(out), workers=1, shard_size=2, data_docs=False)
    header = json.loads((out / "dataset.json").read_text())
    by_split = check_listing(out, header)

    for split, source_rows in rows.items():
        written = read_jsonl(out / f"{split}.jsonl")
        assert [r["id"] for r in written] == [r["id"] for r in source_rows]
        samples = by_split[split]
        sources = [json.loads(m["json"])["source"] for _, m in samples]
        used = list(dict.fromkeys(r[f] for r in source_rows for f in ("image_left", "image_right")))
        assert sources == used  # every image of the split once, in order of first use
        for key, members in samples:
            meta = json.loads(members["json"])
            assert members["jpg"] == (src / meta["source"]).read_bytes() and meta["split"] == split
            first = [r for r, s in zip(written, source_rows, strict=True) if s["image_left"] == meta["source"]]
            assert meta["rows"] == first  # the validated rows, shard references included
        for r in written:  # each reference points into this split's own shards
            for f in ("image_left", "image_right"):
                shard, member = formats.parse_shard_ref(r[f])
                assert shard in [s["name"] for s in header["validation"]["shards"][split]]
                assert any(f"{k}.jpg" == member for k, _ in samples)
    assert sum(len(json.loads(m["json"])["rows"]) for s in by_split.values() for _, m in s) == 7
    assert header["validation"]["images"] == 6 + 4  # images 0, 1 and 5 are packed once in each split


def test_text_dataset_is_sharded_with_its_own_shard_size(tmp_path):
    """A text sample is `<key>.txt` (the text) + `<key>.json` with its one row; --text-shard-size sets the size."""
    rows = {"train": [{"id": i, "text": f"text number {i}"} for i in range(7)] + [{"id": 99, "text": ""}],
            "val": [{"id": 100 + i, "text": f"held out {i}"} for i in range(2)]}
    src = write_dataset(tmp_path / "t", {"kind": "text", "name": "t"}, rows)
    out = tmp_path / "v"
    assert data_main(["validate", str(src), "--out", str(out), "--workers", "1", "--max-reject-fraction", "0.2",
                      "--text-shard-size", "3", "--shard-size", "100"]) == 0
    header = json.loads((out / "dataset.json").read_text())
    by_split = check_listing(out, header)
    assert [s["samples"] for s in header["validation"]["shards"]["train"]] == [3, 3, 1]
    assert [s["samples"] for s in header["validation"]["shards"]["val"]] == [2]
    assert header["validation"]["shard_size"] == 3
    for split in rows:
        written = read_jsonl(out / f"{split}.jsonl")
        assert [set(m) for _, m in by_split[split]] == [{"txt", "json"}] * len(written)
        assert [m["txt"].decode() for _, m in by_split[split]] == [r["text"] for r in written]
        assert [json.loads(m["json"])["rows"] for _, m in by_split[split]] == [[r] for r in written]
    assert 99 not in [r["id"] for r in read_jsonl(out / "train.jsonl")]  # the quarantined row is in no shard


def test_split_shards_refuses_an_older_or_unvalidated_header():
    where = "s3://b/d/dataset.json"
    new = {"validated": True, "format_version": 2,
           "validation": {"shards": {"train": [{"name": "shards/00000.tar", "samples": 2, "rows": 3}]}}}
    assert formats.split_shards(new, where, "train")[0]["rows"] == 3
    with pytest.raises(UserError, match=f"^{where}: validated with an older format; rerun beit3 data validate$"):
        formats.split_shards({"validated": True, "format_version": 1, "validation": {"shards": 4}}, where, "train")
    with pytest.raises(UserError, match="not a validated dataset"):
        formats.split_shards({"format_version": 1}, where, "train")
    with pytest.raises(UserError, match="no split 'test'"):
        formats.split_shards(new, where, "test")


def test_writer_text_samples_and_planned_shards(tmp_path):
    w = ShardWriter(str(tmp_path), shard_size=2)
    assert [w.ahead(n) for n in range(5)] == ["00000.tar", "00000.tar", "00001.tar", "00001.tar", "00002.tar"]
    assert w.add("000000001", None, "", "hello", {"rows": []}) == "000000001.txt"
    w.add("000000002", b"IMG", "jpg", "cap")
    assert w.ahead(0) == "00001.tar"
    w.close()
    samples = shard_samples(tmp_path, "00000.tar")
    assert [(k, sorted(m)) for k, m in samples] == [("000000001", ["json", "txt"]), ("000000002", ["jpg", "json", "txt"])]
