"""VQA as released (issue 15, item 1): the answer normalisation, vocabulary, soft targets and answer2label.txt
of microsoft/unilm `beit3/glossary.py` and `beit3/datasets.py` (VQAv2Dataset), type-safe VQAv2 sources
(issue 16), and a released-layout VQA checkpoint with its 3129-answer head fine-tuned and evaluated as it is."""

from __future__ import annotations

import io as pyio
import json
import re
from pathlib import Path

import pytest
import torch
from PIL import Image
from released_layout import released_backbone

from beit3core import data
from beit3core.data.importers import import_dataset
from beit3core.data.importers.vqa_answers import (
    _CONTRACTIONS,
    answer_score,
    normalize_answer,
)
from beit3core.data.validation import validate
from beit3core.errors import UserError
from beit3core.tasks.vqa import soft_targets

pytestmark = pytest.mark.usefixtures("one_thread")


# -- microsoft/unilm beit3/glossary.py normalize_word, verbatim (its contraction table is ours, checked below) --
_manual_map = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
               "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_articles = ["a", "an", "the"]
_period_strip = re.compile(r"(?!<=\d)(\.)(?!\d)")
_comma_strip = re.compile(r"(\d)(\,)(\d)")
_punct = [";", r"/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]


def released_normalize_word(token):
    _token = token
    for p in _punct:
        if (p + " " in token or " " + p in token) or (re.search(_comma_strip, token) is not None):
            _token = _token.replace(p, "")
        else:
            _token = _token.replace(p, " ")
    token = _period_strip.sub("", _token, re.UNICODE)
    _token = []
    temp = token.lower().split()
    for word in temp:
        word = _manual_map.setdefault(word, word)
        if word not in _articles:
            _token.append(word)
    for i, word in enumerate(_token):
        if word in _CONTRACTIONS:
            _token[i] = _CONTRACTIONS[word]
    token = " ".join(_token)
    token = token.replace(",", "")
    return token


CASES = ["t-shirt", "T-Shirt.", "the 10,000", "yes, sir", "Two dogs", "dont", "isnt", "a", "an apple", "1.5",
         "left/right", "(red)", "red (dark)", "u.s.a.", "mr. t", "what's up?", "NONE", "wasnt it", "ten 10",
         "a-b c-d", "x ,y", "3,5 and 7", "hi!!", "  spaced   out  ", "Id've", "somebody'd", "\"quoted\"", "a_b",
         "snow-board's", "e-mail@home", "1,2", "tv.", "10.5.", "it's"]


def test_normalize_answer_is_the_released_normalize_word():
    """glossary.normalize_word: punctuation beside no space -> space, else removed; ... commas removed."""
    for case in CASES:
        assert normalize_answer(case) == released_normalize_word(case), case
    assert normalize_answer("t-shirt") == "t shirt" and normalize_answer("the 10,000") == "10000"
    assert normalize_answer("Two") == "2" and normalize_answer("dont") == "don't"
    assert len(_CONTRACTIONS) == 120 and _CONTRACTIONS["youre"] == "you're"  # the full released table
    assert normalize_answer(["yes"]) == ["yes"]  # not a string: returned as it is


def test_normalize_answer_is_idempotent_on_answers_it_produced():
    """Rows hold normalised answers and the task normalises again before matching (VQA evaluation)."""
    for case in CASES:
        once = normalize_answer(case)
        assert normalize_answer(once) == once, case


def test_soft_targets_follow_the_released_score_table():
    """datasets.py VQAv2Dataset.get_score: 0, 0.3, 0.6, 0.9, then 1.0, per answer given by that many."""
    assert [answer_score(n) for n in range(7)] == [0.0, 0.3, 0.6, 0.9, 1.0, 1.0, 1.0]
    index = {"t shirt": 0, "2": 1, "yes": 2}
    raw = ["T-shirt", "t shirt", "t-shirt.", "two", "2", "zebra", "yes", "yes", "yes", "yes"]
    assert soft_targets(raw, index) == {0: 0.9, 1: 0.6, 2: 1.0}
    # a vocabulary not yet normalised (another importer) matches as validation matches it
    assert soft_targets(["two", "2", "Two"], {"Two": 0, "three": 1}) == {0: 0.9}


# -- a VQAv2 source fixture ---------------------------------------------------------------------------------
def _jpeg(i: int, size: int = 32) -> bytes:
    buf = pyio.BytesIO()
    Image.new("RGB", (size, size), (40 * (i % 6), 90, 255 - 30 * (i % 8))).save(buf, format="JPEG")
    return buf.getvalue()


def write_vqav2(src: Path, subtype: str, questions: list[tuple], *, images: int = 3) -> None:
    """questions: (multiple_choice_answer, annotator answers) per question, or None for a test split."""
    src.mkdir(parents=True, exist_ok=True)
    base = {"train2014": 1000, "val2014": 2000, "test2015": 3000}[subtype]
    for k in range(images):
        path = src / subtype / f"COCO_{subtype}_{base + k:012d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_jpeg(base + k))
    qs, anns = [], []
    for n, q in enumerate(questions):
        image_id, qid = base + n % images, (base + n) * 10
        qs.append({"image_id": image_id, "question": f"what is on the left {n}?", "question_id": qid})
        if q is not None:
            major, answers = q
            anns.append({"image_id": image_id, "question_id": qid, "multiple_choice_answer": major,
                         "answers": [{"answer": a, "answer_id": j + 1} for j, a in enumerate(answers)]})
    (src / f"v2_OpenEnded_mscoco_{subtype}_questions.json").write_text(json.dumps({"questions": qs}))
    if anns:
        (src / f"v2_mscoco_{subtype}_annotations.json").write_text(json.dumps({"annotations": anns}))


def _import(tmp_path: Path, src: Path, **opts) -> tuple[str, dict]:
    raw = str(tmp_path / "raw")
    import_dataset("vqav2", str(src), raw, **opts)
    summary = validate(raw, str(tmp_path / "validated"), max_reject_fraction=1.0, workers=2, data_docs=False)
    return raw, summary["datasets"]["."]


def _quarantined(tmp_path: Path) -> list[dict]:
    return [json.loads(x) for x in (tmp_path / "validated" / "quarantine.jsonl").read_text().splitlines()]


def test_vocabulary_is_the_multiple_choice_answers_of_train_then_val_seen_9_times_in_first_seen_order(tmp_path):
    """datasets.py make_dataset_index: normalize_word(multiple_choice_answer) of train + val, count >= 9, in
    first-seen order; annotator answers do not enter the vocabulary; train and val questions without an answer
    in it are left out of training (here: quarantined)."""
    many = ["zebra"] * 10  # annotator answers alone never make the vocabulary
    train = ([("no", ["no"] * 10)] * 4 + [("T-shirt", ["t-shirt"] * 10)] * 5 + [("Yes", ["yes"] * 10)] * 9
             + [("rare", many)] * 4)
    val = [("no", ["no"] * 10)] * 5 + [("t shirt", ["T-shirt"] * 10)] * 4 + [("two", ["2"] * 10)] * 9 \
        + [("rare", many)] * 4
    write_vqav2(tmp_path / "src", "train2014", train)
    write_vqav2(tmp_path / "src", "val2014", val)
    write_vqav2(tmp_path / "src", "test2015", [None] * 2)
    raw, _ = _import(tmp_path, tmp_path / "src")
    header = data.read_header(raw)
    assert header["answers"] == ["no", "t shirt", "yes", "2"]  # "rare": 8 < 9; first seen, not sorted
    assert header["source"]["min_answer_count"] == 9
    rows = data.read_rows(raw, "train")
    assert rows[4]["answers"] == ["t shirt"] * 10  # annotator answers normalised, never deleted into "tshirt"
    assert data.read_rows(raw, "test")[0]["answers"] == []
    reasons = [q["reason"] for q in _quarantined(tmp_path)]
    assert reasons == [f"train.jsonl:row {n}: field 'answers': no answer in the answer vocabulary"
                       for n in range(19, 23)]  # the "rare" training questions; val keeps its own
    import_dataset("vqav2", str(tmp_path / "src"), str(tmp_path / "b" / "raw"), min_answer_count=8)
    assert data.read_header(str(tmp_path / "b" / "raw"))["answers"] == ["no", "t shirt", "yes", "rare", "2"]


def test_an_imported_answer2label_txt_is_the_vocabulary_as_given(tmp_path):
    """datasets.py VQAv2Dataset.__init__: answer2label.txt, one {"answer", "label"} per line, label = line."""
    src = tmp_path / "src"
    write_vqav2(src, "train2014", [("yes", ["yes"] * 10), ("no", ["no"] * 10)])
    released = ["no", "net", "yes"]
    (src / "answer2label.txt").write_text("".join(json.dumps({"answer": a, "label": i}) + "\n"
                                                  for i, a in enumerate(released)))
    raw, _ = _import(tmp_path, src)
    assert data.read_header(raw)["answers"] == released
    assert data.read_header(raw)["source"]["answer_vocabulary"] == "answer2label.txt"


@pytest.mark.parametrize("lines,message", [
    (['{"answer": "no", "label": 1}'], "line 1: field 'label': expected 0"),
    (['{"answer": "no", "label": 0}', "not json"], "line 2: malformed JSON"),
    (['{"answer": 3, "label": 0}'], "line 1: expected"),
    (['{"answer": "no", "label": 0}', '{"answer": "no", "label": 1}'], "answer 'no' appears twice"),
    (['{"answer": "no", "label": "0"}'], "field 'label'"),
])
def test_a_bad_answer2label_txt_is_one_user_error(tmp_path, lines, message):
    src = tmp_path / "src"
    write_vqav2(src, "train2014", [("yes", ["yes"] * 10)])
    (src / "answer2label.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=re.escape(message)):
        import_dataset("vqav2", str(src), str(tmp_path / "raw"))


def _annotations(src: Path) -> tuple[Path, dict]:
    path = src / "v2_mscoco_train2014_annotations.json"
    return path, json.loads(path.read_text())


def test_answers_of_the_wrong_json_type_are_quarantined_never_reshaped(tmp_path):
    """issue 16: `"answers": "yes"` must not become ["y", "e", "s"], nor a bare string entry an answer."""
    src = tmp_path / "src"
    write_vqav2(src, "train2014", [("yes", ["yes"] * 10)] * 12)
    path, ann = _annotations(src)
    ann["annotations"][0]["answers"] = "yes"
    ann["annotations"][1]["answers"] = [["yes"]] * 10
    ann["annotations"][2]["answers"] = None
    ann["annotations"][3]["answers"] = [{"answer": 1}]
    ann["annotations"][4]["answers"] = ["Yes"] * 10  # plain strings: kept as given, valid answers
    path.write_text(json.dumps(ann))
    raw, _ = _import(tmp_path, src)
    rows = data.read_rows(raw, "train")
    assert [r["answers"] for r in rows[:5]] == ["yes", [["yes"]] * 10, None, [{"answer": 1}], ["Yes"] * 10]
    assert [q["reason"].split(":")[1] for q in _quarantined(tmp_path)] == ["row 1", "row 2", "row 3", "row 4"]


@pytest.mark.parametrize("edit,message", [
    (lambda ann: ann["annotations"][0].update(multiple_choice_answer=["yes"]),
     "annotations[0]: field 'multiple_choice_answer': expected a string, got list"),
    (lambda ann: ann["annotations"][1].pop("multiple_choice_answer"),
     "annotations[1]: field 'multiple_choice_answer': expected a string, got NoneType"),
    (lambda ann: ann["annotations"].__setitem__(0, "yes"), "annotations[0]: expected an object, got str"),
    (lambda ann: ann["annotations"][0].update(question_id=[1]), "annotations[0]: field 'question_id'"),
    (lambda ann: ann.update(annotations={"a": 1}), "expected an object with a 'annotations' list"),
])
def test_annotations_of_the_wrong_json_type_are_one_user_error(tmp_path, edit, message):
    src = tmp_path / "src"
    write_vqav2(src, "train2014", [("yes", ["yes"] * 10)] * 2)
    path, ann = _annotations(src)
    edit(ann)
    path.write_text(json.dumps(ann))
    with pytest.raises(UserError, match=re.escape(message)):
        import_dataset("vqav2", str(src), str(tmp_path / "raw"))


def test_a_question_that_is_not_an_object_is_one_user_error(tmp_path):
    src = tmp_path / "src"
    write_vqav2(src, "train2014", [("yes", ["yes"] * 10)])
    qfile = src / "v2_OpenEnded_mscoco_train2014_questions.json"
    qfile.write_text(json.dumps({"questions": ["what is it?"]}))
    with pytest.raises(UserError, match=re.escape("questions[0]: expected an object, got str")):
        import_dataset("vqav2", str(src), str(tmp_path / "raw"))


# -- a released VQA checkpoint (3129 answers) fine-tunes and evaluates from its file ------------------------
NUM_ANSWERS, OFFICIAL_VOCAB = 3129, 64010
TINY = {"dim": 192, "ffn": 768, "depth": 4, "grid": 4, "patch": 8}  # beit3_tiny_patch8_64 at 32 px


def _released_vqa_checkpoint(path: Path) -> dict:
    g = torch.Generator().manual_seed(0)
    d = TINY["dim"]
    sd = released_backbone(dim=d, ffn=TINY["ffn"], depth=TINY["depth"], vocab=OFFICIAL_VOCAB, grid=TINY["grid"],
                           patch=TINY["patch"], final_norm=False, generator=g)
    heads = {"pooler.norm.weight": torch.ones(d), "pooler.norm.bias": torch.zeros(d),
             "pooler.dense.weight": torch.randn(d, d, generator=g) * 0.02, "pooler.dense.bias": torch.zeros(d),
             "head.0.weight": torch.randn(2 * d, d, generator=g) * 0.02, "head.0.bias": torch.zeros(2 * d),
             "head.1.weight": torch.ones(2 * d), "head.1.bias": torch.zeros(2 * d),
             "head.3.weight": torch.randn(NUM_ANSWERS, 2 * d, generator=g) * 0.02,
             "head.3.bias": torch.zeros(NUM_ANSWERS)}
    torch.save({"model": {**sd, **heads}}, path)
    return heads


def test_a_released_layout_vqa_checkpoint_finetunes_and_evaluates_with_nothing_mismatched(tmp_path):
    """A 3129-answer released VQA model (BEiT3ForVisualQuestionAnswering keys) over a dataset whose vocabulary
    is the imported answer2label.txt: every key loads (nothing missing, unexpected, resized or mismatched),
    the head keeps its 3129 rows, and the saved model evaluates to the same score."""
    from beit3core.tokenizers import TextTokenizer
    from beit3train.evaluate import main as evaluate_main
    from beit3train.finetune import main as finetune_main

    src = tmp_path / "src"
    answers = [f"w{i}" for i in range(NUM_ANSWERS)]
    write_vqav2(src, "train2014", [(answers[i % 5], [answers[i % 5]] * 10) for i in range(8)])
    write_vqav2(src, "val2014", [(answers[i % 5], [answers[i % 5]] * 10) for i in range(4)])
    (src / "answer2label.txt").write_text("".join(json.dumps({"answer": a, "label": i}) + "\n"
                                                  for i, a in enumerate(answers)))
    _import(tmp_path, src)
    dataset = str(tmp_path / "validated")
    assert len(data.read_header(dataset)["answers"]) == NUM_ANSWERS
    TextTokenizer.train([f"what is on the left {n}?" for n in range(200)], vocab_size=40).save(str(tmp_path / "tok"))
    pth = tmp_path / "beit3_base_patch16_480_vqa.pth"
    heads = _released_vqa_checkpoint(pth)

    run = tmp_path / "run"
    common = ["--task", "vqa", "--data", dataset, "--text-tokenizer", str(tmp_path / "tok"), "--no-progress"]
    assert finetune_main([*common, "--init", str(pth), "--out", str(run), "--arch", "beit3_tiny_patch8_64",
                          "--img-size", "32", "--max-len", "12", "--steps", "2", "--warmup-steps", "1",
                          "--batch-size", "4", "--eval-batch-size", "8", "--lr", "1e-6"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    train = metrics["train"]
    assert train["init_kind"] == "official"
    assert (train["missing"], train["unexpected"], train["resized"], train["mismatched"]) == (0, 0, [], [])
    from safetensors.torch import load_file

    saved = load_file(str(run / "model" / "model.safetensors"))
    assert saved["head.3.weight"].shape == heads["head.3.weight"].shape == (NUM_ANSWERS, 2 * TINY["dim"])
    ev = tmp_path / "eval"
    assert evaluate_main([*common, "--model-dir", str(run / "model"), "--out", str(ev), "--split", "val"]) == 0
    assert json.loads((ev / "metrics.json").read_text())["vqa_score"] == pytest.approx(metrics["vqa_score"], abs=1e-3)
