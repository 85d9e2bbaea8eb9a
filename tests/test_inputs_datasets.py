"""Hostile datasets for `beit3 data validate` and the readers (issue 16): crafted dataset.json fields, split
files that are folders, empty datasets, links out of the dataset, gzipped shards, EXIF orientation, control
characters, and quarantine reports that are the same on every run."""

from __future__ import annotations

import gzip
import io as pyio
import json
import os
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from beit3core import data
from beit3core.data.cli import main as data_main
from beit3core.data.shards import ShardReader, iter_tar
from beit3core.data.validation import parse_jsonl, validate
from beit3core.errors import UserError, run_main


def jpeg(colour=(200, 10, 10), size=(24, 20), exif=None) -> bytes:
    buf = pyio.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="JPEG", **({"exif": exif} if exif is not None else {}))
    return buf.getvalue()


def dataset(root: Path, rows: dict[str, list[dict]], kind="pairs", **header) -> Path:
    """A raw dataset: dataset.json (header fields override the defaults) and one file per split."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset.json").write_text(json.dumps({"kind": kind, "name": "t", "splits": list(rows), **header}))
    for split, rs in rows.items():
        if "/" not in split and split not in ("", ".", ".."):
            (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rs))
    return root


def pairs(root: Path, n=3, **rows_and_header) -> Path:
    (root / "images").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (root / "images" / f"{i}.jpg").write_bytes(jpeg((40 * i, 0, 0)))
    rows = [{"id": i, "image": f"images/{i}.jpg", "caption": f"picture {i}"} for i in range(n)]
    return dataset(root, {"train": rows}, **rows_and_header)


def run(capsys, *argv) -> tuple[int, str]:
    code = run_main(data_main, [str(a) for a in argv])
    return code, capsys.readouterr().err.splitlines()[-1] if code else ""


def test_split_names_cannot_reach_outside_the_dataset(tmp_path, capsys):
    """`"splits": ["train", "../../../victim"]` made validate read a file outside the dataset and write one outside
    OUT; now nothing is read or written and the command says why."""
    victim = tmp_path / "victim.jsonl"
    victim.write_text('{"id": 9, "image": "x.jpg", "caption": "not yours"}\n')
    root = tmp_path / "a" / "b" / "ds"
    pairs(root)
    header = json.loads((root / "dataset.json").read_text())
    header["splits"] = ["train", "../../../victim"]
    (root / "dataset.json").write_text(json.dumps(header))
    before = victim.read_bytes()
    code, err = run(capsys, "validate", root, "--out", tmp_path / "a" / "b" / "out")
    assert code == 2
    assert err == f"error: {root}/dataset.json: field 'splits': '../../../victim' contains a path separator"
    assert victim.read_bytes() == before and not (tmp_path / "a" / "b" / "out").exists()
    with pytest.raises(UserError, match="path separator"):
        data.read_rows(str(root), "train")


@pytest.mark.parametrize("field, value, message", [
    ("splits", ["train", "train"], "field 'splits': split 'train' listed more than once"),
    ("splits", "train", "field 'splits': expected a non-empty list of names"),
    ("splits", [["train"]], "field 'splits': expected a name (string), got list"),
    ("kind", ["pairs"], "field 'kind': unknown kind ['pairs']"),
    ("name", 7, "field 'name': expected a name (string), got int"),
    ("name", "../up", "field 'name': '../up' contains a path separator"),
    ("source", ["x"], "field 'source': expected an object"),
])
def test_dataset_json_fields_of_the_wrong_type(tmp_path, capsys, field, value, message):
    root = pairs(tmp_path / "ds", **{field: value})
    code, err = run(capsys, "validate", root, "--out", tmp_path / "out")
    assert code == 2 and err.startswith(f"error: {root}/dataset.json: ") and message in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("labels, message", [(["cat", 3], "field 'labels': entry 1: expected a string, got int"),
                                             (["caf\udce9"], "field 'labels': entry 0: not valid UTF-8"),
                                             ("cat", "field 'labels': expected a list")])
def test_vocabulary_of_the_wrong_type(tmp_path, capsys, labels, message):
    """A label that is not valid UTF-8 reached Great Expectations, which logged tracebacks and exited 0."""
    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    (root / "images" / "0.jpg").write_bytes(jpeg())
    dataset(root, {"train": [{"id": 0, "image": "images/0.jpg", "label": "cat"}]}, kind="classification",
            labels=labels)
    code, err = run(capsys, "validate", root, "--out", tmp_path / "out")
    assert code == 2 and err.endswith(message), err


def test_split_file_that_is_a_folder(tmp_path, capsys):
    root = pairs(tmp_path / "ds")
    (root / "train.jsonl").unlink()
    (root / "train.jsonl").mkdir()
    code, err = run(capsys, "validate", root, "--out", tmp_path / "out")
    assert code == 2 and err.endswith("train.jsonl: a folder, not a split file (split 'train' is listed in "
                                      "dataset.json)")
    with pytest.raises(UserError, match="train.jsonl: .*folder"):
        data.read_rows(str(root), "train")


def test_an_empty_dataset_does_not_validate(tmp_path, capsys):
    root = dataset(tmp_path / "ds", {"train": [], "val": []})
    code, err = run(capsys, "validate", root, "--out", tmp_path / "out")
    assert code == 2 and err == f"error: {root}: no rows in any split (an empty dataset does not validate)"
    summary = json.loads((tmp_path / "out" / "validation.json").read_text())
    assert summary["success"] is False and not (tmp_path / "out" / "dataset.json").exists()


def test_all_rows_rejected_is_no_success_even_at_threshold_one(tmp_path):
    root = dataset(tmp_path / "ds", {"train": [{"id": 1, "image": "/etc/passwd", "caption": "x"}]})
    with pytest.raises(UserError, match="all 1 rows rejected, none left to write"):
        validate(str(root), str(tmp_path / "out"), max_reject_fraction=1.0, workers=1, data_docs=False)


def test_quarantine_reasons_are_identical_run_to_run(tmp_path):
    """Pillow's error text names `<_io.BytesIO object at 0x...>`: the address differed on every run."""
    root = pairs(tmp_path / "ds")
    (root / "images" / "1.jpg").write_bytes(b"not an image at all")
    outs = []
    for k in range(2):
        validate(str(root), str(tmp_path / f"out{k}"), max_reject_fraction=1.0, workers=2, data_docs=False)
        outs.append((tmp_path / f"out{k}" / "quarantine.jsonl").read_text())
    assert outs[0] == outs[1] and "cannot identify image file" in outs[0] and " at 0x" not in outs[0]
    with pytest.raises(UserError) as e:
        data.decode_image(b"not an image")
    assert " at 0x" not in str(e.value)


def test_links_out_of_the_dataset_are_not_read_or_packed(tmp_path):
    """An image that is a symbolic link to a file outside the dataset is quarantined, its bytes never packed;
    a link that stays inside the dataset is followed."""
    secret = jpeg((1, 2, 3), (30, 30))
    (tmp_path / "outside.jpg").write_bytes(secret)
    root = pairs(tmp_path / "ds")
    os.remove(root / "images" / "1.jpg")
    os.symlink(tmp_path / "outside.jpg", root / "images" / "1.jpg")
    os.remove(root / "images" / "2.jpg")
    os.symlink(root / "images" / "0.jpg", root / "images" / "2.jpg")
    with pytest.raises(UserError, match="symbolic link to outside"):
        data.image_bytes(str(root), "images/1.jpg")
    summary = validate(str(root), str(tmp_path / "out"), max_reject_fraction=0.5, workers=1, data_docs=False)
    assert (summary["datasets"]["."]["clean"], summary["datasets"]["."]["quarantined"]) == (2, 1)
    (q,) = [json.loads(x) for x in (tmp_path / "out" / "quarantine.jsonl").read_text().splitlines()]
    assert q["data"]["id"] == 1 and "a symbolic link to outside <dataset> (not followed)" in q["reason"]
    for shard in (tmp_path / "out" / "shards").glob("*.tar"):
        assert secret not in shard.read_bytes()


def test_shards_linked_from_outside_are_not_read(tmp_path):
    """A dataset whose shard is a symbolic link to another folder's shard: not read, not re-packed."""
    from beit3core.data.shards import ShardWriter

    writer = ShardWriter(str(tmp_path / "elsewhere" / "shards"), shard_size=10)
    members = [writer.add(f"{k:09d}", jpeg((60 * k, 0, 0)), "jpg", "c") for k in range(3)]
    writer.close()
    root = dataset(tmp_path / "ds", {"train": [{"id": k, "image": f"shards/00000.tar#{m}", "caption": "c"}
                                               for k, m in enumerate(members)]})
    (root / "shards").mkdir()
    os.symlink(tmp_path / "elsewhere" / "shards" / "00000.tar", root / "shards" / "00000.tar")
    data.clear_cache()
    with pytest.raises(UserError, match="symbolic link to outside"):
        list(data.iter_samples(str(root), "train"))
    with pytest.raises(UserError, match="symbolic link to outside"):
        ShardReader(str(root)).read("shards/00000.tar", members[0])
    with pytest.raises(UserError, match="all 3 rows rejected"):  # nor is it re-packed by validation
        validate(str(root), str(tmp_path / "again"), max_reject_fraction=1.0, workers=1, data_docs=False)
    reasons = [json.loads(x)["reason"] for x in (tmp_path / "again" / "quarantine.jsonl").read_text().splitlines()]
    assert len(reasons) == 3 and all("a symbolic link to outside <dataset> (not followed)" in r for r in reasons)


def test_a_gzipped_shard_is_reported_as_such(tmp_path):
    """Shards are uncompressed tar (the index holds byte offsets); a gzipped one used to fail as 'image not found'."""
    raw = tmp_path / "raw"
    (raw / "shards").mkdir(parents=True)
    buf = pyio.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for k in range(2):
            body = jpeg((90 * k, 0, 0))
            info = tarfile.TarInfo(f"{k:03d}.jpg")
            info.size = len(body)
            tar.addfile(info, pyio.BytesIO(body))
    (raw / "shards" / "00000.tar").write_bytes(gzip.compress(buf.getvalue()))
    dataset(raw, {"train": [{"id": k, "image": f"shards/00000.tar#{k:03d}.jpg", "caption": "c"} for k in range(2)]})
    with pytest.raises(UserError, match="gzip-compressed shard"):
        list(iter_tar(str(raw / "shards" / "00000.tar")))
    with pytest.raises(UserError, match="all 2 rows rejected"):
        validate(str(raw), str(tmp_path / "out"), max_reject_fraction=1.0, workers=1, data_docs=False)
    reasons = [json.loads(x)["reason"] for x in (tmp_path / "out" / "quarantine.jsonl").read_text().splitlines()]
    assert len(reasons) == 2 and all("a gzip-compressed shard; shards must be uncompressed .tar" in r for r in reasons)


def test_exif_orientation_is_applied_when_images_are_read(tmp_path):
    """A phone photo stored landscape with EXIF Orientation 6 (rotate 90) is seen upright, as viewers show it
    (PIL.ImageOps.exif_transpose), by every reader: load_image, load_split and decode_image."""
    exif = Image.Exif()
    exif[0x0112] = 6
    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    (root / "images" / "0.jpg").write_bytes(jpeg(size=(40, 20), exif=exif))
    dataset(root, {"train": [{"id": 0, "image": "images/0.jpg", "caption": "a tall picture"}]})
    assert data.load_image(str(root), "images/0.jpg").size == (20, 40)
    assert data.load_split(str(root), "train", decode=True)[0]["images"]["image"].size == (20, 40)
    validate(str(root), str(tmp_path / "out"), workers=1, data_docs=False)
    (row,) = data.read_rows(str(tmp_path / "out"), "train")
    assert data.load_image(str(tmp_path / "out"), row["image"]).size == (20, 40)


@pytest.mark.parametrize("caption, code_point", [("ring\x07bell", "U+0007"), ("nul\x00here", "U+0000"),
                                                 ("mid\ufeffbom", "U+FEFF"), ("c1\x85next", "U+0085"),
                                                 ("esc\x1b[31mred", "U+001B")])
def test_control_characters_in_text_are_quarantined(tmp_path, caption, code_point):
    root = pairs(tmp_path / "ds", n=2)
    rows = data.read_rows(str(root), "train")
    rows[1]["caption"] = caption
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    validate(str(root), str(tmp_path / "out"), max_reject_fraction=1.0, workers=1, data_docs=False)
    (q,) = [json.loads(x) for x in (tmp_path / "out" / "quarantine.jsonl").read_text().splitlines()]
    assert q["data"]["id"] == 1 and f"field 'caption': control character {code_point}" in q["reason"]


def test_tabs_and_newlines_are_text_not_control(tmp_path):
    root = pairs(tmp_path / "ds", n=2)
    rows = data.read_rows(str(root), "train")
    rows[1]["caption"] = "two\tcolumns\nand lines"
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = validate(str(root), str(tmp_path / "out"), workers=1, data_docs=False)
    assert summary["datasets"]["."]["quarantined"] == 0


def test_a_split_file_opening_with_a_bom_keeps_its_first_row():
    rows, lines = parse_jsonl(b'\xef\xbb\xbf{"id": 1}\n{"id": 2}\n')
    assert rows == [{"id": 1}, {"id": 2}] and lines == [1, 2]


def test_dataset_name_is_checked_by_every_reader(tmp_path):
    """Tokenize names its output folder after dataset.json's `name`: a reader never hands out a name that is a path."""
    root = pairs(tmp_path / "ds", name="../../../tokens")
    with pytest.raises(UserError, match="field 'name': '../../../tokens' contains a path separator"):
        data.read_header(str(root))


def test_collection_listing_with_dot_dot_is_refused(tmp_path, monkeypatch):
    """An object store key may hold `..` (`coll/../../x/dataset.json`); its folder would become an output path."""
    from beit3core.data import formats

    coll = tmp_path / "coll"
    pairs(coll / "ok")
    listing = [str(coll / "ok" / "dataset.json"), str(coll) + "/../escape/dataset.json"]
    monkeypatch.setattr(formats.io, "ls", lambda uri, recursive=False: listing)
    with pytest.raises(UserError, match="dataset folder '../escape'"):
        formats.find_datasets(str(coll))


def test_corrupt_exif_is_quarantined_not_a_crash_in_training(tmp_path):
    """Pillow's EXIF parser raises struct.error/TypeError on some corrupt tags: such an image would pass validation
    and then crash a training worker in exif_transpose. It is quarantined, and a reader raises one line."""
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010E] = "desc" * 20
    good = bytearray(jpeg(size=(40, 20), exif=exif))
    at = bytes(good).index(b"Exif")
    good[at + 17], good[at + 87] = 32, 113  # found by mutating the EXIF block: a tag Pillow cannot write back
    root = pairs(tmp_path / "ds", n=2)
    (root / "images" / "1.jpg").write_bytes(bytes(good))
    with pytest.raises(UserError, match="unreadable EXIF orientation"):
        data.load_image(str(root), "images/1.jpg")
    validate(str(root), str(tmp_path / "out"), max_reject_fraction=1.0, workers=1, data_docs=False)
    (q,) = [json.loads(x) for x in (tmp_path / "out" / "quarantine.jsonl").read_text().splitlines()]
    assert q["data"]["id"] == 1 and "unreadable EXIF orientation" in q["reason"]


@pytest.mark.parametrize("name", ["dataset.json", "train.jsonl"])
def test_metadata_linked_from_outside_is_not_read(tmp_path, capsys, name):
    """A dataset.json or split file that is a link to a file outside the dataset is refused by validate and readers."""
    root = pairs(tmp_path / "ds")
    os.replace(root / name, tmp_path / name)
    os.symlink(tmp_path / name, root / name)
    code, err = run(capsys, "validate", root, "--out", tmp_path / "out")
    assert code == 2 and err == f"error: {root / name}: a symbolic link to outside {root} (not followed)"
    with pytest.raises(UserError, match="symbolic link to outside"):
        data.read_rows(str(root), "train")
