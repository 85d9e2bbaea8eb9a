"""Each importer on a tiny fixture in its exact source format, then validated end to end."""

from __future__ import annotations

import io as pyio
import json
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from beit3core import data
from beit3core.data.importers import import_dataset
from beit3core.data.importers.vqav2 import answer_vocabulary, normalize_answer
from beit3core.data.validation import validate
from beit3core.errors import UserError


def img(colour, fmt="JPEG", size=(20, 16)) -> bytes:
    buf = pyio.BytesIO()
    Image.new("RGB", size, colour).save(buf, format=fmt)
    return buf.getvalue()


def put(path: Path, content: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def check(tmp_path, fmt, src, **opts) -> tuple[str, dict]:
    """Import, validate (no GX: fast), return the raw dataset URI and the validation summary of it."""
    raw = str(tmp_path / "raw")
    import_dataset(fmt, str(src), raw, **opts)
    summary = validate(raw, str(tmp_path / "validated"), max_reject_fraction=1.0, workers=2, data_docs=False)
    return raw, summary["datasets"]["."]


def quarantined(tmp_path) -> list[dict]:
    return [json.loads(x) for x in (tmp_path / "validated" / "quarantine.jsonl").read_text().splitlines()]


def test_coco_karpathy_restval_joins_train_and_kind_option(tmp_path):
    src = tmp_path / "coco"
    images = []
    for i, split in enumerate(["train", "restval", "val", "test"]):
        put(src / "train2014" / f"{i}.jpg", img((60 * i, 0, 0)))
        images.append({"filepath": "train2014", "filename": f"{i}.jpg", "cocoid": i, "split": split,
                       "sentences": [{"raw": f"picture {i} one", "sentid": 10 * i}, {"raw": f"pic {i}", "sentid": 10 * i + 1}]})
    put(src / "dataset_coco.json", json.dumps({"images": images, "dataset": "coco"}))
    raw, d = check(tmp_path, "coco-karpathy", src, kind="retrieval")
    assert data.read_header(raw)["kind"] == "retrieval" and data.splits(raw) == ["train", "val", "test"]
    assert [r["image_id"] for r in data.read_rows(raw, "train")] == [0, 0, 1, 1]
    assert d["quarantined"] == 0 and d["clean"] == 8


def test_flickr30k(tmp_path):
    src = tmp_path / "f30k"
    put(src / "flickr30k-images" / "1000092795.jpg", img((0, 90, 0)))
    put(src / "flickr30k-images" / "10002456.jpg", img((0, 0, 90)))
    doc = {"dataset": "flickr30k", "images": [
        {"filename": "1000092795.jpg", "imgid": 0, "split": "train", "sentences": [{"raw": "Two young guys", "sentid": 0}]},
        {"filename": "10002456.jpg", "imgid": 1, "split": "test", "sentences": [{"raw": "Several men", "sentid": 5}]}]}
    put(src / "dataset_flickr30k.json", json.dumps(doc))
    raw, d = check(tmp_path, "flickr30k", src)
    assert data.read_rows(raw, "test") == [{"id": 5, "image": "images/10002456.jpg", "image_id": 1,
                                            "caption": "Several men"}]
    assert d["clean"] == 2


def test_cc_tsv_keeps_urls_for_quarantine(tmp_path):
    src = tmp_path / "cc"
    put(src / "imgs" / "a.jpg", img((10, 10, 200)))
    put(src / "train.tsv", "caption\turl\na blue picture\timgs/a.jpg\na remote one\thttps://example.com/x.jpg\n"
                           "no tab on this line\n")
    raw, d = check(tmp_path, "cc-tsv", src / "train.tsv")
    rows = data.read_rows(raw, "train")
    assert [r["image"] for r in rows] == ["images/train/imgs/a.jpg", "https://example.com/x.jpg", None]
    reasons = [q["reason"] for q in quarantined(tmp_path)]
    assert "remote URL not fetched (no network at run time)" in reasons[0]
    assert "field 'image': missing or null" in reasons[1]
    assert (d["clean"], d["quarantined"]) == (1, 2)


def test_imagefolder(tmp_path):
    src = tmp_path / "inet"
    for split in ("train", "val"):
        for c, cls in enumerate(["n01440764", "n01443537"]):
            for k in range(2):
                put(src / split / cls / f"{k}.JPEG", img((100 * c, 50 * k, 0)))
    put(src / "train" / "n01443537" / "notes.txt", "not an image")
    raw, d = check(tmp_path, "imagefolder", src)
    header = data.read_header(raw)
    assert header["kind"] == "classification" and header["labels"] == ["n01440764", "n01443537"]
    assert data.splits(raw) == ["train", "val"] and len(data.read_rows(raw, "train")) == 5
    assert (d["clean"], d["quarantined"]) == (8, 1)
    assert "does not decode" in quarantined(tmp_path)[0]["reason"]


def test_text_lines_paragraphs_and_bad_bytes(tmp_path):
    src = tmp_path / "corpus"
    put(src / "books.txt", b"first line\n\n  second line  \ncaf\xe9 bytes\n")
    put(src / "val.txt", "held out\n")
    raw, d = check(tmp_path, "text", src)
    assert [r["text"] for r in data.read_rows(raw, "train")] == ["first line", "second line", "caf\udce9 bytes"]
    assert [r["text"] for r in data.read_rows(raw, "val")] == ["held out"]
    assert "not valid UTF-8" in quarantined(tmp_path)[0]["reason"] and d["clean"] == 3
    import_dataset("text", str(src / "books.txt"), str(tmp_path / "para"), paragraphs=True)
    assert [r["text"] for r in data.read_rows(str(tmp_path / "para"), "train")] == ["first line", "second line caf\udce9 bytes"]


def test_vqav2_normalises_answers_and_builds_the_vocabulary(tmp_path):
    src = tmp_path / "vqa"
    for subtype, ids in (("train2014", [1, 2]), ("val2014", [3])):
        for i in ids:
            put(src / subtype / f"COCO_{subtype}_{i:012d}.jpg", img((20 * i, 0, 0)))
        qs = [{"image_id": i, "question": f"what is {i}?", "question_id": i * 10} for i in ids]
        put(src / f"v2_OpenEnded_mscoco_{subtype}_questions.json", json.dumps({"data_subtype": subtype, "questions": qs}))
        ann = [{"image_id": i, "question_id": i * 10, "multiple_choice_answer": "two",
                "answers": [{"answer": a, "answer_id": k} for k, a in enumerate(["Two", "2", "two.", "a dog", "3"])]}
               for i in ids]
        put(src / f"v2_mscoco_{subtype}_annotations.json", json.dumps({"annotations": ann}))
    raw, d = check(tmp_path, "vqav2", src, min_answer_count=3)
    assert data.read_header(raw)["answers"] == ["2"]  # multiple_choice_answer "two" x3 over train + val
    row = data.read_rows(raw, "train")[0]
    assert row == {"id": 10, "image": "images/train2014/COCO_train2014_000000000001.jpg", "image_id": 1,
                   "question": "what is 1?", "answers": ["2", "2", "2", "dog", "3"]}
    assert data.splits(raw) == ["train", "val"] and d["clean"] == 3
    assert normalize_answer("Yes!") == "yes" and normalize_answer("the 10,000") == "10000"
    assert answer_vocabulary(["y", "x", "z", "x", "y"], 2) == ["y", "x"]  # first-seen order


def test_nlvr2(tmp_path):
    src = tmp_path / "nlvr2"
    recs = {"train": [("train-10-0-0", "True", "7"), ("train-10-0-1", "False", "7")], "dev": [("dev-3-1-0", "true", None)]}
    for split, items in recs.items():
        lines = []
        for ident, label, directory in items:
            base = ident.rsplit("-", 1)[0]
            folder = src / "images" / split / (directory or "")
            put(folder / f"{base}-img0.png", img((0, 200, 0), "PNG"))
            put(folder / f"{base}-img1.png", img((0, 0, 200), "PNG"))
            rec = {"identifier": ident, "sentence": f"statement {ident}", "label": label}
            if directory:
                rec["directory"] = directory
            lines.append(json.dumps(rec))
        put(src / f"{split}.json", "\n".join(lines) + "\n")
    raw, d = check(tmp_path, "nlvr2", src)
    assert data.splits(raw) == ["train", "val"]
    first = data.read_rows(raw, "train")[0]
    assert first["label"] is True and first["image_left"] == "images/train/7/train-10-0-img0.png"
    assert data.read_rows(raw, "val")[0]["label"] is True
    assert d["clean"] == 3 and d["quarantined"] == 0


def test_webdataset_shards_as_they_are(tmp_path):
    src = tmp_path / "laion"
    src.mkdir()
    with tarfile.open(src / "00000.tar", "w") as tar:
        for key, payload in (("000000000", {"jpg": img((200, 0, 0)), "txt": b"a red square", "json": b'{"key": "000000000"}'}),
                             ("000000001", {"jpg": b"broken", "txt": b"broken image", "json": b"{}"}),
                             ("000000002", {"txt": b"image failed to download", "json": b"{}"})):
            for ext, content in payload.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(content)
                tar.addfile(info, pyio.BytesIO(content))
    raw, d = check(tmp_path, "webdataset", src)
    rows = data.read_rows(raw, "train")
    assert rows[0] == {"id": "000000000", "image": "shards/00000.tar#000000000.jpg", "caption": "a red square"}
    assert rows[2]["image"] is None
    assert data.load_image(raw, rows[0]["image"]).getpixel((0, 0))[0] > 150
    assert (d["clean"], d["quarantined"]) == (1, 2)
    clean = list(data.iter_samples(str(tmp_path / "validated"), "train"))
    assert len(clean) == 1 and clean[0]["caption"] == "a red square"


def test_unknown_format_and_missing_source(tmp_path):
    with pytest.raises(UserError, match="unknown format"):
        import_dataset("parquet", str(tmp_path), str(tmp_path / "o"))
    with pytest.raises(UserError, match="no such file"):
        import_dataset("text", str(tmp_path / "nope"), str(tmp_path / "o"))
    src = tmp_path / "src"
    src.mkdir()
    with pytest.raises(UserError, match="dataset_coco.json"):
        import_dataset("coco-karpathy", str(src), str(tmp_path / "o"))
