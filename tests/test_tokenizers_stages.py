"""`beit3 tokenize text|visual` end to end on `beit3 data synth` + `beit3 data validate` output."""

import json

import numpy as np
import pytest

from beit3core.errors import run_main
from beit3core.tokenizers import cli, stages


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


def _fingerprint(validated) -> str:
    return stages.collection_fingerprint(str(validated), stages._collection(str(validated)))


def _texts(path) -> list[str]:
    field = {"text": "text", "pairs": "caption", "nlvr2": "sentence", "vqa": "question"}
    kind = json.loads((path.parent / "dataset.json").read_text())["kind"]
    name = field.get(kind, "caption")
    return [json.loads(line)[name] for line in path.read_text().splitlines() if line.strip()]


def test_tokenize_text_stage(validated, tmp_path, capsys):
    """C3: the stage writes the tokenizer, its meta and the corpus's token counts; no corpus arrays."""
    from beit3core.tokenizers import TextTokenizer

    out = tmp_path / "text"
    assert main(["text", "--data", str(validated), "--out", str(out), "--vocab-size", "48", "--workers", "2",
                 "--max-len", "8", "--no-progress"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["vocab_size"] == 50
    tok = TextTokenizer.load(str(out))
    assert tok.vocab_size == 50 and tok.mask_id == 49
    meta = json.loads((out / "tokenizer" / "meta.json").read_text())
    assert meta["dataset"]["fingerprint"] == _fingerprint(validated)
    assert meta["parameters"]["vocab_size"] == 48 and meta["special_ids"]["mask"] == 49
    assert not (out / "tokens").exists()
    # the counts are those of every text split, each sequence [<s>] + pieces + [</s>] cut at --max-len
    lengths = []
    per_split = {}
    for path in sorted(validated.rglob("*.jsonl")):
        rel = str(path.parent.relative_to(validated))
        if rel.split("/")[-1] in ("images", "classification") or "quarantine" in path.name:
            continue
        texts = _texts(path)
        per_split[f"{rel}/{path.stem}"] = len(texts)
        lengths += [len(tok.tokenize(t)) + 2 for t in texts]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["per_split"] == per_split and summary["lines"] == len(lengths)
    assert summary["tokens"] == sum(min(n, 8) for n in lengths)
    assert summary["truncated"] == sum(n > 8 for n in lengths) > 0
    assert summary["length"]["max"] == max(lengths) and summary["length"]["p50"] == int(np.percentile(lengths, 50,
                                                                                                   method="lower"))
    assert meta["counts"]["tokens"] == summary["tokens"]
    assert (out / "quarantine.jsonl").read_text() == ""


def test_tokenize_text_fits_on_a_bounded_sample(validated):
    """The fit holds at most --max-fit-lines texts (a uniform reservoir sample), however large the corpus."""

    splits = stages._text_splits(str(validated))
    sample, seen = stages.sample_fit_texts(splits, 10)
    assert len(sample) == 10 and seen > 100
    every, _ = stages.sample_fit_texts(splits, 10**6)
    assert len(every) == seen and set(sample) <= set(every)
    assert stages.sample_fit_texts(splits, 10) == (sample, seen)  # deterministic


def test_tokenize_text_quarantines_non_utf8_and_imports_a_model(validated, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(validated / "text", data / "text")
    clean = len(_texts(data / "text" / "train.jsonl"))
    with open(data / "text" / "train.jsonl", "ab") as f:
        f.write(b'{"id": "bad-bytes", "text": "caf\xe9"}\n')
        f.write(b'{"id": "bad-escape", "text": "lone \\udcff"}\n')
    out = tmp_path / "out"
    assert main(["text", "--data", str(data), "--out", str(out), "--vocab-size", "40", "--no-progress"]) == 0
    quarantined = [json.loads(line) for line in (out / "quarantine.jsonl").read_text().splitlines()]
    assert len(quarantined) == 2 and all("UTF-8" in q["reason"] for q in quarantined)
    assert {q.get("id") for q in quarantined} == {None, "bad-escape"}
    assert json.loads((out / "summary.json").read_text())["per_split"]["text/train"] == clean
    # importing an existing model skips training and keeps its pieces
    out2 = tmp_path / "imported"
    assert main(["text", "--data", str(data), "--out", str(out2), "--import-model",
                 str(out / "tokenizer" / "spm.model"), "--no-progress"]) == 0
    assert (out2 / "tokenizer" / "spm.model").read_bytes() == (out / "tokenizer" / "spm.model").read_bytes()
    s1, s2 = (json.loads((o / "summary.json").read_text()) for o in (out, out2))
    assert s1["tokens"] == s2["tokens"] and s2["quarantined"] == 2


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
    """On `beit3 data validate` output: one token file per image shard of every image dataset (task datasets
    included), holding the shard's sample keys and the tokenizer's ids of each sample's image."""
    from beit3core.data.shards import group_samples, iter_tar
    from beit3core.pretrain.augment import precomputed_view
    from beit3core.tokenizers import VisualTokenizer

    out = tmp_path / "visual"
    assert main(["visual", "--data", str(validated), "--out", str(out), "--epochs", "1", "--batch-size", "32",
                 "--codebook-size", "64", "--code-dim", "16", "--max-train-images", "128", "--no-progress"]) == 0
    vt = VisualTokenizer.load(str(out))
    assert (vt.grid_size, vt.codebook_size, vt.img_size) == (8, 64, 64)
    cfg = json.loads((out / "tokenizer" / "config.json").read_text())
    assert cfg["dataset"]["fingerprint"] == _fingerprint(validated)
    assert cfg["parameters"]["epochs"] == 1 and len(cfg["training"]["epochs"]) == 1
    assert 0 < cfg["codebook_usage"]["codes_used"] <= 64
    header = json.loads((validated / "pairs" / "dataset.json").read_text())
    shards = [s["name"] for split in header["splits"] for s in header["validation"]["shards"][split]]
    files = sorted((out / "tokens" / "pairs").glob("*.npz"))
    assert [f.stem for f in files] == sorted(n.removeprefix("shards/").removesuffix(".tar") for n in shards)
    z = np.load(files[0])
    samples = list(group_samples(iter_tar(str(validated / "pairs" / "shards" / f"{files[0].stem}.tar"))))
    assert z["ids"].dtype == np.uint16 and z["ids"].shape == (len(samples), 64)
    assert z["keys"].tolist() == [k for k, _ in samples]
    members = samples[0][1]
    image = next(v for ext, v in members.items() if ext not in ("txt", "json"))
    import io as _pyio

    from PIL import Image

    view = precomputed_view(Image.open(_pyio.BytesIO(image)), 64)
    assert vt.encode(view[None]).numpy().astype(np.uint16).tolist() == [z["ids"][0].tolist()]
    assert list((out / "tokens" / "tasks" / "nlvr2").glob("*.npz")) and not (out / "tokens" / "text").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == sum(len(np.load(f)["keys"]) for f in (out / "tokens").rglob("*.npz"))


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


def test_tokenize_text_publishes_its_output_at_once(validated, text_tokens, tmp_path, monkeypatch, capsys):
    """A stage dying while it writes its output (here: the quarantine, after the tokenizer) leaves the previous
    output as it was: never a new tokenizer beside an old summary."""
    import shutil


    out = tmp_path / "text"
    shutil.copytree(text_tokens, out)
    before = _tree(out)

    def dies(*args, **kwargs):
        raise KeyboardInterrupt  # as a kill would, mid-stage

    monkeypatch.setattr(stages, "_write_quarantine", dies)
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
    (other / "quarantine.jsonl").unlink()  # a file of the output lost
    publish._VERIFIED.clear()
    with pytest.raises(UserError, match=r"--text-tokenizer .*incomplete or changed output of `beit3 tokenize text`"):
        check_inputs(str(validated), str(other), None)
    with pytest.raises(UserError, match="is the output of `beit3 tokenize text`, expected `beit3 tokenize visual`"):
        check_inputs(str(validated), None, str(text_tokens))
