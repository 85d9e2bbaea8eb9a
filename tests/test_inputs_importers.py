"""Hostile importer sources (issue 16): crafted split and dataset names, wrong JSON types, symbolic links out of
SRC, non-UTF-8 class names, byte-order marks. Each ends in one `error:` line with exit 2, or a row that
validation quarantines; nothing is written outside OUT and nothing outside SRC is read."""

from __future__ import annotations

import io as pyio
import json
import os
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from beit3core import data
from beit3core.data.cli import main as data_main
from beit3core.data.importers import import_dataset
from beit3core.errors import run_main


def img(colour=(200, 10, 10)) -> bytes:
    buf = pyio.BytesIO()
    Image.new("RGB", (20, 16), colour).save(buf, format="JPEG")
    return buf.getvalue()


def put(path: Path, content: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def run(capsys, *argv) -> tuple[int, str]:
    """The `beit3 data` command as a user runs it: exit status and stderr."""
    code = run_main(data_main, [str(a) for a in argv])
    return code, capsys.readouterr().err


def coco(src: Path, **entry) -> Path:
    put(src / "train2014" / "0.jpg", img())
    base = {"filepath": "train2014", "filename": "0.jpg", "cocoid": 0, "split": "train",
            "sentences": [{"raw": "a red picture", "sentid": 1}]}
    return put(src / "dataset_coco.json", json.dumps({"images": [{**base, **entry}]}))


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_coco_split_name_cannot_write_outside_out(tmp_path, capsys):
    coco(tmp_path / "deep" / "er" / "src", split="../../PWNED")
    before = tree(tmp_path)
    code, err = run(capsys, "import", "--format", "coco-karpathy", tmp_path / "deep" / "er" / "src",
                    tmp_path / "deep" / "er" / "out")
    assert code == 2 and err.count("\n") == 1
    assert "images[0]: field 'split': '../../PWNED' contains a path separator" in err
    assert tree(tmp_path) == before  # no PWNED.jsonl anywhere, no OUT


@pytest.mark.parametrize("split, why", [(3, "expected a name (string), got int"), ("", "empty name"),
                                        ("..", "is not a name"), ("/abs", "path separator")])
def test_coco_split_of_wrong_type_or_shape_is_refused(tmp_path, capsys, split, why):
    coco(tmp_path / "src", split=split)
    code, err = run(capsys, "import", "--format", "coco-karpathy", tmp_path / "src", tmp_path / "out")
    assert code == 2 and why in err and not (tmp_path / "out").exists()


@pytest.mark.parametrize("entry, message", [
    ({"sentences": "hello"}, "field 'sentences': expected a list, got str"),
    ({"sentences": None}, "field 'sentences': expected a list, got NoneType"),
    ({"sentences": ["a bare string"]}, "sentences[0]: expected an object, got str"),
])
def test_coco_wrong_sentence_types_are_refused_not_reshaped(tmp_path, capsys, entry, message):
    """A string of sentences used to become one caption per character (`"hello"` -> five rows)."""
    coco(tmp_path / "src", **entry)
    code, err = run(capsys, "import", "--format", "coco-karpathy", tmp_path / "src", tmp_path / "out")
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_coco_entry_of_wrong_type_is_one_line(tmp_path, capsys):
    put(tmp_path / "src" / "dataset_coco.json", json.dumps({"images": [["not", "an", "object"]]}))
    code, err = run(capsys, "import", "--format", "coco-karpathy", tmp_path / "src", tmp_path / "out")
    assert code == 2 and "images[0]: expected an object, got list" in err


def test_coco_leaf_values_of_wrong_type_are_kept_for_quarantine(tmp_path):
    """Row values of the wrong type (a numeric filepath or caption) stay as they are; validation names them."""
    coco(tmp_path / "src")
    doc = json.loads((tmp_path / "src" / "dataset_coco.json").read_text())
    doc["images"].append({"filepath": 7, "filename": "0.jpg", "cocoid": 1, "split": "train",
                          "sentences": [{"raw": ["a", "list"], "sentid": 2}]})
    (tmp_path / "src" / "dataset_coco.json").write_text(json.dumps(doc))
    import_dataset("coco-karpathy", str(tmp_path / "src"), str(tmp_path / "raw"))
    rows = data.read_rows(str(tmp_path / "raw"), "train")
    assert rows[1]["image"] == 7 and rows[1]["caption"] == ["a", "list"]
    summary = data.validate(str(tmp_path / "raw"), str(tmp_path / "v"), max_reject_fraction=1.0, workers=1,
                            data_docs=False)
    assert summary["datasets"]["."]["quarantined"] == 1


@pytest.mark.parametrize("name", ["../../escape", "/abs", "a/b", ".."])
def test_name_flag_cannot_be_a_path(tmp_path, capsys, name):
    coco(tmp_path / "src")
    code, err = run(capsys, "import", "--format", "coco-karpathy", tmp_path / "src", tmp_path / "out", "--name", name)
    why = "is not a name" if name == ".." else "contains a path separator"
    assert code == 2 and err == f"error: --name: {name!r} {why}\n"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("line, message", [
    ('["a", "list"]', "row 1: expected a JSON object, got list"),
    ('"just a string"', "row 1: expected a JSON object, got str"),
    ('{"identifier": 5, "sentence": "s", "label": "True"}', "row 1: field 'identifier': expected a string, got int"),
    ('{"identifier": "train-1-0-0", "directory": ["x"], "sentence": "s", "label": "True"}',
     "row 1: field 'directory': expected a string, got list"),
])
def test_nlvr2_wrong_json_types_are_one_line(tmp_path, capsys, line, message):
    put(tmp_path / "src" / "train.json", line + "\n")
    code, err = run(capsys, "import", "--format", "nlvr2", tmp_path / "src", tmp_path / "out")
    assert code == 2 and message in err and err.count("\n") == 1 and not (tmp_path / "out").exists()


def test_nlvr2_numeric_directory_is_the_folder_number(tmp_path):
    """The released NLVR2 files hold `directory` as a string; an integer names the same folder."""
    for k in (0, 1):
        put(tmp_path / "src" / "images" / "train" / "7" / f"train-1-0-img{k}.png", img((0, 90 * k, 0)))
    put(tmp_path / "src" / "train.json", json.dumps({"identifier": "train-1-0-0", "directory": 7,
                                                     "sentence": "s", "label": "True"}) + "\n")
    import_dataset("nlvr2", str(tmp_path / "src"), str(tmp_path / "raw"))
    row = data.read_rows(str(tmp_path / "raw"), "train")[0]
    assert row["image_left"] == "images/train/7/train-1-0-img0.png"
    assert (tmp_path / "raw" / row["image_left"]).exists()


def test_imagefolder_does_not_copy_links_out_of_src(tmp_path):
    """A symlinked image file and a symlinked class folder that lead outside SRC are not copied (their rows are
    quarantined as missing images); a link that stays inside SRC is followed."""
    src, outside = tmp_path / "src", tmp_path / "outside"
    put(src / "train" / "cat" / "a.jpg", img())
    put(outside / "secret.jpg", img((1, 2, 3)))
    put(outside / "dog" / "b.jpg", img((4, 5, 6)))
    os.symlink(outside / "secret.jpg", src / "train" / "cat" / "s.jpg")
    os.symlink(outside / "dog", src / "train" / "dog")
    os.symlink(src / "train" / "cat" / "a.jpg", src / "train" / "cat" / "inside.jpg")
    raw = tmp_path / "raw"
    import_dataset("imagefolder", str(src), str(raw))
    copied = {p.name for p in raw.rglob("*.jpg")}
    assert copied == {"a.jpg", "inside.jpg"}
    assert not any(p.is_symlink() for p in raw.rglob("*"))
    summary = data.validate(str(raw), str(tmp_path / "v"), max_reject_fraction=1.0, workers=1, data_docs=False)
    assert (summary["datasets"]["."]["clean"], summary["datasets"]["."]["quarantined"]) == (2, 2)


@pytest.mark.parametrize("fmt, layout", [("text", "txt"), ("cc-tsv", "tsv"), ("nlvr2", "json"),
                                         ("webdataset", "tar")])
def test_source_files_linked_from_outside_are_refused(tmp_path, capsys, fmt, layout):
    """A metadata file found in SRC's folder that is a link to outside SRC is never read."""
    outside = put(tmp_path / "outside" / "secret.txt", "secret line\tx.jpg\n")
    src = tmp_path / "src"
    src.mkdir()
    name = {"txt": "notes.txt", "tsv": "train.tsv", "json": "train.json", "tar": "00000.tar"}[layout]
    os.symlink(outside, src / name)
    code, err = run(capsys, "import", "--format", fmt, src, tmp_path / "out")
    assert code == 2 and "a symbolic link to outside" in err and not (tmp_path / "out").exists()


def test_non_utf8_class_folder_is_one_line(tmp_path, capsys):
    """Such a label reached Great Expectations, which logged tracebacks and exited 0."""
    src = tmp_path / "src"
    put(src / "train" / "ok" / "a.jpg", img())
    bad = os.path.join(os.fsencode(src / "train"), b"caf\xe9")
    os.makedirs(bad)
    with open(os.path.join(bad, b"b.jpg"), "wb") as f:
        f.write(img())
    code, err = run(capsys, "import", "--format", "imagefolder", src, tmp_path / "out")
    assert code == 2 and "class folder 'caf\\udce9': name is not valid UTF-8" in err and err.count("\n") == 1


def test_cc_tsv_bom_is_not_caption_text(tmp_path):
    """A BOM opening a file is an encoding marker, not the first caption's first character."""
    put(tmp_path / "src" / "imgs" / "a.jpg", img())
    put(tmp_path / "src" / "train.tsv", b"\xef\xbb\xbfa red picture\timgs/a.jpg\n")
    import_dataset("cc-tsv", str(tmp_path / "src"), str(tmp_path / "raw"))
    assert [r["caption"] for r in data.read_rows(str(tmp_path / "raw"), "train")] == ["a red picture"]


def test_cc_tsv_split_from_a_file_stem_must_be_a_name(tmp_path, capsys):
    put(tmp_path / "src" / "..tsv", "a caption\tx.jpg\n")
    code, err = run(capsys, "import", "--format", "cc-tsv", tmp_path / "src", tmp_path / "out")
    assert code == 2 and "split name: '.' is not a name" in err


def test_text_bom_is_dropped(tmp_path):
    put(tmp_path / "src" / "books.txt", b"\xef\xbb\xbffirst line\nsecond\n")
    import_dataset("text", str(tmp_path / "src"), str(tmp_path / "raw"))
    assert [r["text"] for r in data.read_rows(str(tmp_path / "raw"), "train")] == ["first line", "second"]


def test_webdataset_gzipped_shard_is_named(tmp_path, capsys):
    """A gzip-compressed shard (named .tar) is reported as such: range reads need an uncompressed tar."""
    import gzip

    buf = pyio.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("000.jpg")
        data_ = img()
        info.size = len(data_)
        tar.addfile(info, pyio.BytesIO(data_))
    put(tmp_path / "src" / "00000.tar", gzip.compress(buf.getvalue()))
    code, err = run(capsys, "import", "--format", "webdataset", tmp_path / "src", tmp_path / "out")
    assert code == 2 and "a gzip-compressed shard" in err


@pytest.mark.parametrize("fmt, files", [("nlvr2", ("train.json", "train.jsonl")),
                                        ("cc-tsv", ("train.tsv", "train.txt"))])
def test_two_files_for_one_split_are_refused(tmp_path, capsys, fmt, files):
    """One used to replace the other silently (nlvr2), or their row ids collided (cc-tsv)."""
    for name in files:
        put(tmp_path / "src" / name, '{"identifier": "train-1-0-0", "sentence": "s", "label": "True"}\n'
            if fmt == "nlvr2" else "a caption\tx.jpg\n")
    code, err = run(capsys, "import", "--format", fmt, tmp_path / "src", tmp_path / "out")
    assert code == 2 and "'train'" in err and "keep one" in err and not (tmp_path / "out").exists()
