"""Validation: the corrupted-COCO end-to-end case, the invariants (clean + quarantined == input), the CLI's
exit codes, validated datasets read back through the reading API, and S3 URIs."""

from __future__ import annotations

import io as pyio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from beit3core import data
from beit3core.data.cli import main as data_main
from beit3core.data.validation import check_image_bytes, parse_jsonl, validate
from beit3core.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def jpeg(colour, size=(24, 20)) -> bytes:
    buf = pyio.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def make_corrupt_coco(root: Path) -> dict[str, str]:
    """A Karpathy-format COCO folder with 40 good caption rows and 6 bad ones; returns sentid -> expected reason."""
    (root / "val2014").mkdir(parents=True)
    images, sentid = [], 0
    for i in range(20):
        name = f"COCO_val2014_{i:012d}.jpg"
        (root / "val2014" / name).write_bytes(jpeg((10 * i, 100, 200 - 5 * i)))
        sents = []
        for k in range(2):
            sentid += 1
            sents.append({"raw": f"a photo number {i} caption {k}", "sentid": sentid})
        images.append({"filepath": "val2014", "filename": name, "cocoid": i, "imgid": i,
                       "split": ["train", "restval", "val", "test"][i % 4], "sentences": sents})
    # 1. truncated JPEG
    full = jpeg((200, 30, 30), (64, 64))
    (root / "val2014" / "truncated.jpg").write_bytes(full[: len(full) // 2])
    images.append({"filepath": "val2014", "filename": "truncated.jpg", "cocoid": 100, "split": "train",
                   "sentences": [{"raw": "a truncated picture", "sentid": 1001}]})
    # 2. empty caption (on a good image of the train split)
    images.append({"filepath": "val2014", "filename": "COCO_val2014_000000000000.jpg", "cocoid": 0, "split": "train",
                   "sentences": [{"raw": "   ", "sentid": 1002}]})
    # 3. a path escaping the root
    (root.parent / "outside.jpg").write_bytes(jpeg((1, 2, 3)))
    images.append({"filepath": "../..", "filename": "outside.jpg", "cocoid": 101, "split": "train",
                   "sentences": [{"raw": "a picture outside the dataset", "sentid": 1003}]})
    # 4. a duplicate id
    images.append({"filepath": "val2014", "filename": "COCO_val2014_000000000004.jpg", "cocoid": 4, "split": "train",
                   "sentences": [{"raw": "another caption", "sentid": 1}]})
    # 5. bytes that are not UTF-8 (spliced into the file below)
    images.append({"filepath": "val2014", "filename": "COCO_val2014_000000000008.jpg", "cocoid": 8, "split": "train",
                   "sentences": [{"raw": "caf@@BADBYTES@@ au lait", "sentid": 1005}]})
    # 6. a missing image
    images.append({"filepath": "val2014", "filename": "COCO_val2014_000000009999.jpg", "cocoid": 9999,
                   "split": "train", "sentences": [{"raw": "an image that is not there", "sentid": 1006}]})
    text = json.dumps({"dataset": "coco", "images": images}).encode()
    (root / "dataset_coco.json").write_bytes(text.replace(b"@@BADBYTES@@", b"\xe9\xff"))
    return {"1001": "does not decode", "1002": "field 'caption': empty",
            "1003": "path escapes the dataset root", "1": "duplicate id 1 (first at",
            "1005": "field 'caption': not valid UTF-8", "1006": "image not found"}


def _read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def test_corrupted_coco_imports_and_validates_with_each_bad_row_quarantined(tmp_path):
    expected = make_corrupt_coco(tmp_path / "coco")
    raw, out = tmp_path / "raw", tmp_path / "validated"
    assert data_main(["import", "--format", "coco-karpathy", str(tmp_path / "coco"), str(raw)]) == 0
    raw_rows = {s: data.read_rows(str(raw), s) for s in data.splits(str(raw))}
    assert sum(map(len, raw_rows.values())) == 46  # the importer dropped nothing

    assert data_main(["validate", str(raw), "--out", str(out), "--max-reject-fraction", "0.2", "--workers", "2"]) == 0
    quarantine = _read_jsonl(out / "quarantine.jsonl")
    by_id = {str(q["data"]["id"]): q for q in quarantine}
    assert set(by_id) == set(expected)
    for sid, text in expected.items():
        assert text in by_id[sid]["reason"], (sid, by_id[sid]["reason"])
        assert by_id[sid]["reason"].startswith(f"{by_id[sid]['split']}.jsonl:row {by_id[sid]['row']}: ")
    # the duplicate names where the first one is; the kept first occurrence is clean
    assert "train.jsonl:row 1" in by_id["1"]["reason"]

    clean = {s: data.read_rows(str(out), s) for s in data.splits(str(out))}
    assert sum(map(len, clean.values())) == 40
    for s, rows in raw_rows.items():  # nothing dropped silently, per split
        assert len(clean[s]) + sum(q["split"] == s for q in quarantine) == len(rows)
    summary = json.loads((out / "validation.json").read_text())["datasets"]["."]
    assert (summary["rows"], summary["clean"], summary["quarantined"]) == (46, 40, 6)
    failed = {x["check"] for x in summary["expectations"] if not x["success"]}
    assert {"caption: valid UTF-8", "id: unique across splits", "image: a relative path inside the dataset",
            "image: image exists, decodes, within size bounds", "caption: 1 to 1000 characters"} <= failed
    # GX agrees with the quarantine on every check it states exactly
    for x in summary["expectations"]:
        if x["check"] not in ("id: unique across splits", "at least one row"):
            assert x["unexpected_count"] == x["quarantined"], x
    assert (out / "data_docs" / "index.html").read_text().count("<table>") == 1
    assert (out / "data_docs" / "gx" / "index.html").exists()

    # the validated dataset reads back: every clean row with its image bytes, from the shards
    samples = list(data.iter_samples(str(out), "train"))
    assert [r["id"] for r in samples] == [r["id"] for r in clean["train"]]
    for r in samples:
        assert r["image"].startswith("shards/") and Image.open(pyio.BytesIO(r["images"]["image"])).size == (24, 20)
    assert data.load_image(str(out), clean["test"][0]["image"]).size == (24, 20)


def test_threshold_exceeded_exits_2_with_one_line(tmp_path):
    make_corrupt_coco(tmp_path / "coco")
    cmd = [sys.executable, "-m", "beit3ops.cli", "data"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    assert data_main(["import", "--format", "coco-karpathy", str(tmp_path / "coco"), str(tmp_path / "raw")]) == 0
    r = subprocess.run(cmd + ["validate", str(tmp_path / "raw"), "--out", str(tmp_path / "v"), "--workers", "2"],
                       check=False, capture_output=True, text=True, env=env, cwd=REPO)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "6 of 46 rows rejected" in errors[0] and "max-reject-fraction 0.05" in errors[0]
    # the reports are there to read, the dataset is not
    assert len(_read_jsonl(tmp_path / "v" / "quarantine.jsonl")) == 6
    assert not (tmp_path / "v" / "dataset.json").exists()


def test_synth_collection_validates_clean_and_reads_back(tmp_path):
    data.synthesize(str(tmp_path / "raw"), scale=0.03, image_size=32)
    summary = validate(str(tmp_path / "raw"), str(tmp_path / "v"), workers=2, shard_size=16)
    assert summary["success"]
    assert set(summary["datasets"]) == {"pairs", "images", "text", "tasks/classification", "tasks/vqa",
                                        "tasks/nlvr2", "tasks/retrieval", "tasks/captioning"}
    for rel, d in summary["datasets"].items():
        assert d["quarantined"] == 0 and d["clean"] == d["rows"] > 0, rel
        raw, val = str(tmp_path / "raw" / rel), str(tmp_path / "v" / rel)
        header = data.read_header(val)
        assert header["validated"] and header["validation"]["clean"] == d["rows"]
        for split in data.splits(val):
            assert [r["id"] for r in data.read_rows(val, split)] == [r["id"] for r in data.read_rows(raw, split)]
    # every image of a validated split comes back byte-identical to the raw file, whatever the sharding
    nl = str(tmp_path / "v" / "tasks" / "nlvr2")
    raw_rows = {r["id"]: r for r in data.read_rows(str(tmp_path / "raw" / "tasks" / "nlvr2"), "train")}
    parts = [list(data.iter_samples(nl, "train", rank=r, world_size=2, worker=w, num_workers=3))
             for r in range(2) for w in range(3)]
    seen = [s["id"] for p in parts for s in p]
    assert sorted(seen) == sorted(raw_rows) and len(seen) == len(set(seen))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    for s in (x for p in parts for x in p):
        for f in ("image_left", "image_right"):
            assert s["images"][f] == (tmp_path / "raw" / "tasks" / "nlvr2" / raw_rows[s["id"]][f]).read_bytes()
    shards = sorted(os.listdir(Path(nl) / "shards"))
    assert shards[0] == "00000.idx.json" and "00000.tar" in shards
    assert len(data.read_header(nl)["validation"]["shards"]["train"]) > 1
    shuffled = [s["id"] for s in data.iter_samples(nl, "train", seed=3)]
    assert sorted(shuffled) == sorted(raw_rows) and shuffled != [r for r in raw_rows]


def test_every_kind_rule_quarantines(tmp_path):
    root = tmp_path / "vqa"
    (root / "images").mkdir(parents=True)
    for i in range(4):
        (root / "images" / f"{i}.jpg").write_bytes(jpeg((50 * i, 0, 0)))
    (root / "images" / "tiny.jpg").write_bytes(jpeg((0, 0, 0), (4, 4)))
    (root / "dataset.json").write_text(json.dumps({"kind": "vqa", "name": "t", "splits": ["train", "test"],
                                                   "answers": ["yes", "no", "2"]}))
    rows = {
        "train": [
            {"id": 1, "image": "images/0.jpg", "image_id": 0, "question": "is it red?", "answers": ["yes"] * 10},
            {"id": 2, "image": "images/0.jpg", "image_id": 0, "question": "how many?", "answers": ["three", "Three"]},
            {"id": 3, "image": "images/1.jpg", "image_id": 1, "question": "shared?", "answers": ["no"]},
            {"id": 4, "image": "images/tiny.jpg", "image_id": 7, "question": "tiny?", "answers": ["no"]},
            {"id": 5, "image": "/etc/passwd", "image_id": 8, "question": "abs?", "answers": ["no"]},
            {"id": 6, "image": "images/2.jpg", "image_id": 2, "question": None, "answers": ["no"]},
            {"id": 7, "image": "images/2.jpg", "image_id": 2, "question": "x" * 501, "answers": "no"},
        ],
        "test": [
            {"id": 10, "image": "images/1.jpg", "image_id": 1, "question": "shared?", "answers": ["zebra"]},
            {"id": 11, "image": "images/3.jpg", "image_id": 3, "question": "fine?", "answers": []},
        ],
    }
    for split, rs in rows.items():
        (root / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in rs) + "\n{not json\n" * (split == "test"))
    summary = validate(str(root), str(tmp_path / "out"), max_reject_fraction=1.0, workers=1)
    q = {(x["split"], x["row"]): x["reason"] for x in _read_jsonl(tmp_path / "out" / "quarantine.jsonl")}
    assert "no answer in the answer vocabulary" in q[("train", 2)]
    assert "'image_id': 1 also in split 'test'" in q[("train", 3)]
    assert "4x4 pixels" in q[("train", 4)]
    assert "absolute path '/etc/passwd'" in q[("train", 5)]
    assert "field 'question': missing or null" in q[("train", 6)]
    assert "501 characters" in q[("train", 7)] and "expected a list of strings" in q[("train", 7)]
    assert "invalid JSON" in q[("test", 3)]
    assert len(q) == 7  # rows 1 (train), 10 and 11 (test: no vocabulary rule outside training splits) are clean
    d = summary["datasets"]["."]
    assert (d["rows"], d["clean"], d["quarantined"]) == (10, 3, 7)


def test_truncated_and_garbage_images_fail_to_decode():
    full = jpeg((10, 200, 30), (64, 64))
    assert check_image_bytes(full).ok
    assert not check_image_bytes(full[:-200]).ok
    assert "does not decode" in check_image_bytes(b"not an image").reason
    buf = pyio.BytesIO()
    Image.new("RGB", (32, 32), (1, 2, 3)).save(buf, format="PNG")
    assert check_image_bytes(buf.getvalue()).ok and not check_image_bytes(buf.getvalue()[:-4]).ok
    assert "outside the bounds" in check_image_bytes(jpeg((0, 0, 0), (4, 300))).reason


def test_parse_jsonl_keeps_bad_bytes_and_lines():
    rows, lines = parse_jsonl(b'{"a": "ok"}\n\n{"a": "caf\xe9"}\n[1]\n{oops\n')
    assert lines == [1, 3, 4, 5]
    assert rows[1]["a"] == "caf\udce9"
    assert rows[2].message == "not a JSON object" and "invalid JSON" in rows[3].message


def test_bad_parameters_are_user_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no dataset.json"):
        validate(str(tmp_path / "empty"), str(tmp_path / "out"))
    with pytest.raises(UserError, match="must be outside SRC"):
        validate(str(tmp_path), str(tmp_path / "out"))
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "dataset.json").write_text('{"kind": "pairs", "name": "x", "splits": ["train"]}')
    with pytest.raises(UserError, match="train.jsonl: no such file"):
        validate(str(tmp_path / "d"), str(tmp_path / "out"))
    with pytest.raises(UserError, match="max-reject-fraction"):
        validate(str(tmp_path / "d"), str(tmp_path / "out"), max_reject_fraction=2)


def test_validate_between_s3_uris(tmp_path, s3_prefix):
    from beit3core import io

    make_corrupt_coco(tmp_path / "coco")
    src, out = f"{s3_prefix}/raw", f"{s3_prefix}/validated"
    data.import_dataset("coco-karpathy", str(tmp_path / "coco"), src)
    assert io.exists(f"{src}/dataset.json") and io.exists(f"{src}/images/val2014/truncated.jpg")
    summary = validate(src, out, max_reject_fraction=0.2, workers=2)
    assert summary["datasets"]["."]["quarantined"] == 6
    assert len(io.read_jsonl(f"{out}/quarantine.jsonl")) == 6
    rows = data.read_rows(out, "val")
    assert data.load_image(out, rows[0]["image"]).size == (24, 20)
    got = list(data.iter_samples(out, "train", world_size=2, rank=1))
    assert got and all(len(s["images"]["image"]) > 100 for s in got)
