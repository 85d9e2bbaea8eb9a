"""`beit3 tokenize text|visual` end to end on `beit3 data synth` + `beit3 data validate` output."""

import json

import numpy as np
import pytest

from beit3core.errors import run_main
from beit3core.tokenizers import cli


def main(argv: list[str]) -> int:
    """`beit3 tokenize ARGV` as the command runs it: a user mistake is exit status 2."""
    return run_main(cli.main, argv)


@pytest.fixture(scope="module")
def validated(tmp_path_factory):
    from beit3core.data.cli import main as data_main

    root = tmp_path_factory.mktemp("tokdata")
    assert data_main(["synth", str(root / "raw"), "--scale", "0.05", "--seed", "1"]) == 0
    assert data_main(["validate", str(root / "raw"), "--out", str(root / "val"), "--workers", "1"]) == 0
    return root / "val"


def test_tokenize_text_stage(validated, tmp_path, capsys):
    from beit3core import io
    from beit3core.tokenizers import TextTokenizer

    out = tmp_path / "text"
    assert main(["text", "--data", str(validated), "--out", str(out), "--vocab-size", "48", "--workers", "2",
                 "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["vocab_size"] == 50
    tok = TextTokenizer.load(str(out))
    assert tok.vocab_size == 50 and tok.mask_id == 49
    meta = json.loads((out / "tokenizer" / "meta.json").read_text())
    assert meta["dataset"]["fingerprint"] == io.fingerprint(str(validated))
    assert meta["parameters"]["vocab_size"] == 48 and meta["special_ids"]["mask"] == 49
    rows = [json.loads(line) for line in (validated / "tasks" / "nlvr2" / "train.jsonl").read_text().splitlines()]
    z = np.load(out / "tokens" / "tasks" / "nlvr2" / "train.npz")
    assert z["ids"].dtype == np.int32 and z["offsets"].dtype == np.int64 and len(z["offsets"]) == len(rows) + 1
    assert list(z["keys"]) == [str(r["id"]) for r in rows]
    for i in (0, len(rows) - 1):
        seq = z["ids"][z["offsets"][i] : z["offsets"][i + 1]].tolist()
        ids, pad = tok.encode(rows[i]["sentence"], 64)
        assert seq == [t for t, p in zip(ids, pad) if not p]
    for name in ("text/train", "pairs/train", "tasks/vqa/val", "tasks/captioning/test", "tasks/retrieval/train"):
        assert (out / "tokens" / f"{name}.npz").exists()
    assert not (out / "tokens" / "images").exists()  # no text in an images dataset
    assert (out / "quarantine.jsonl").read_text() == ""


def test_tokenize_text_quarantines_non_utf8_and_imports_a_model(validated, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(validated / "text", data / "text")
    with open(data / "text" / "train.jsonl", "ab") as f:
        f.write(b'{"id": "bad-bytes", "text": "caf\xe9"}\n')
        f.write(b'{"id": "bad-escape", "text": "lone \\udcff"}\n')
    out = tmp_path / "out"
    assert main(["text", "--data", str(data), "--out", str(out), "--vocab-size", "40", "--no-progress"]) == 0
    quarantined = [json.loads(line) for line in (out / "quarantine.jsonl").read_text().splitlines()]
    assert len(quarantined) == 2 and all("UTF-8" in q["reason"] for q in quarantined)
    assert {q.get("id") for q in quarantined} == {None, "bad-escape"}
    keys = np.load(out / "tokens" / "text" / "train.npz")["keys"]
    assert "bad-escape" not in keys and "bad-bytes" not in keys
    # importing an existing model skips training and keeps its pieces
    out2 = tmp_path / "imported"
    assert main(["text", "--data", str(data), "--out", str(out2), "--import-model",
                 str(out / "tokenizer" / "spm.model"), "--no-progress"]) == 0
    assert (out2 / "tokenizer" / "spm.model").read_bytes() == (out / "tokenizer" / "spm.model").read_bytes()
    assert np.array_equal(np.load(out2 / "tokens/text/val.npz")["ids"], np.load(out / "tokens/text/val.npz")["ids"])


def test_tokenize_text_user_errors(validated, tmp_path, capsys):
    assert main(["text", "--data", str(validated), "--out", str(tmp_path / "o"), "--vocab-size", "5000",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: vocab_size=5000 is larger than the corpus supports") and "\n" not in err
    assert main(["text", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    empty = tmp_path / "empty" / "text"
    empty.mkdir(parents=True)
    (empty / "dataset.json").write_text(json.dumps({"kind": "text", "name": "e", "splits": ["train"]}))
    (empty / "train.jsonl").write_text("")
    assert main(["text", "--data", str(empty), "--out", str(tmp_path / "o")]) == 2
    assert "empty" in capsys.readouterr().err


def test_tokenize_visual_stage(validated, tmp_path):
    from beit3core import io
    from beit3core.tokenizers import VisualTokenizer

    out = tmp_path / "visual"
    assert main(["visual", "--data", str(validated), "--out", str(out), "--epochs", "1", "--batch-size", "32",
                 "--codebook-size", "64", "--code-dim", "16", "--no-progress"]) == 0
    vt = VisualTokenizer.load(str(out))
    assert (vt.grid_size, vt.codebook_size, vt.img_size) == (8, 64, 64)
    cfg = json.loads((out / "tokenizer" / "config.json").read_text())
    assert cfg["dataset"]["fingerprint"] == io.fingerprint(str(validated))
    assert cfg["parameters"]["epochs"] == 1 and len(cfg["training"]["epochs"]) == 1
    assert 0 < cfg["codebook_usage"]["codes_used"] <= 64
    pairs = [json.loads(line) for line in (validated / "pairs" / "train.jsonl").read_text().splitlines()]
    z = np.load(out / "tokens" / "pairs" / "train.npz")
    assert z["ids"].dtype == np.uint16 and z["ids"].shape == (len(pairs), 64)
    assert sorted(z["keys"]) == sorted(str(r["id"]) for r in pairs)
    nl = np.load(out / "tokens" / "tasks" / "nlvr2" / "val.npz")
    assert set(nl.files) == {"keys", "ids_left", "ids_right"} and nl["ids_left"].shape[1] == 64
    assert not (out / "tokens" / "text").exists()
    # the written ids are the tokenizer's ids for that image (stable)
    from beit3core import data
    from beit3core.tokenizers.visual import image_to_uint8

    row = {str(r["id"]): r for r in pairs}[str(z["keys"][0])]
    img = image_to_uint8(data.load_image(str(validated / "pairs"), row["image"]), 64)
    assert vt.encode(img[None]).numpy().astype(np.uint16).tolist() == [z["ids"][0].tolist()]


def test_tokenize_visual_user_errors(validated, tmp_path, capsys):
    assert main(["visual", "--data", str(validated), "--out", str(tmp_path / "o"), "--teacher", "vit_tiny_patch16_224"]) == 2
    assert "teacher-checkpoint" in capsys.readouterr().err
    assert main(["visual", "--data", str(validated), "--out", str(tmp_path / "o"), "--img-size", "60"]) == 2
    assert main(["visual", "--data", str(validated), "--out", str(tmp_path / "o"),
                 "--import-checkpoint", str(tmp_path / "none.pth")]) == 2


# -- whole outputs and their consumers (issue 16) ----------------------------------------------------------------------
def _tree(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def text_tokens(validated, tmp_path_factory):
    out = tmp_path_factory.mktemp("tok") / "text"
    assert main(["text", "--data", str(validated), "--out", str(out), "--vocab-size", "48", "--no-progress"]) == 0
    return out


def test_tokenize_text_publishes_tokenizer_and_tokens_together(validated, text_tokens, tmp_path, monkeypatch,
                                                               capsys):
    """A stage dying while it writes tokens (here: the second split) leaves the previous output as it was: never
    a new tokenizer beside old tokens."""
    import shutil

    from beit3core.tokenizers import stages

    out = tmp_path / "text"
    shutil.copytree(text_tokens, out)
    before = _tree(out)
    real, calls = stages.encode_corpus, []

    def dies_on_second_split(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as a kill would, mid-stage
        return real(*args, **kwargs)

    monkeypatch.setattr(stages, "encode_corpus", dies_on_second_split)
    assert main(["text", "--data", str(validated), "--out", str(out), "--vocab-size", "40", "--no-progress"]) == 130
    assert _tree(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["text"]
    record = json.loads((out / ".beit3-output.json").read_text())
    assert record["stage"] == "tokenize text" and record["tokenizer_fingerprint"]


def test_tokenize_refuses_a_partial_collection_and_a_foreign_out(validated, tmp_path, capsys):
    import shutil

    partial = tmp_path / "partial"
    shutil.copytree(validated, partial)
    for gone in ("pairs", "tasks/vqa", "tasks/nlvr2", "tasks/retrieval", "text"):  # 3 of 8 datasets left
        shutil.rmtree(partial / gone)
    assert main(["text", "--data", str(partial), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    assert "incomplete or changed output of `beit3 data validate`" in _error_line(capsys)
    assert main(["text", "--data", str(validated), "--out", str(validated / "tok"), "--no-progress"]) == 2
    assert "must be outside --data" in _error_line(capsys)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("keep")
    assert main(["visual", "--data", str(validated), "--out", str(mine), "--no-progress"]) == 2
    assert "is not an output of `beit3 tokenize visual`" in _error_line(capsys)
    assert (mine / "keep.txt").read_text() == "keep" and not (tmp_path / "o").exists()


def test_pretraining_refuses_tokens_beside_another_tokenizer(validated, text_tokens, tmp_path):
    import shutil

    from beit3core import publish
    from beit3core.errors import UserError
    from beit3core.pretrain.data import check_inputs

    check_inputs(str(validated), str(text_tokens), None)  # whole and consistent
    changed = tmp_path / "changed"
    shutil.copytree(text_tokens, changed)
    meta = changed / "tokenizer" / "meta.json"
    text = meta.read_text()
    meta.write_text(text.replace('"kind": "sentencepiece-unigram"', '"kind": "sentencepiece-UNIGRAM"'))  # same size
    with pytest.raises(UserError, match="not the tokenizer its tokens were made with"):
        check_inputs(str(validated), str(changed), None)
    other = tmp_path / "other"
    shutil.copytree(text_tokens, other)
    (other / "tokens" / "pairs" / "train.npz").unlink()  # a token file lost
    publish._VERIFIED.clear()
    with pytest.raises(UserError, match=r"--text-tokenizer .*incomplete or changed output of `beit3 tokenize text`"):
        check_inputs(str(validated), str(other), None)
    with pytest.raises(UserError, match="is the output of `beit3 tokenize text`, expected `beit3 tokenize visual`"):
        check_inputs(str(validated), None, str(text_tokens))
