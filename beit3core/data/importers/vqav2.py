"""vqav2: the VQA v2 question and annotation files with their COCO images, as the release indexes them.

    SRC/v2_OpenEnded_mscoco_train2014_questions.json  {"data_subtype": "train2014", "questions": [
                                                        {"image_id": 458752, "question": "...", "question_id": 458752000}]}
    SRC/v2_mscoco_train2014_annotations.json          {"annotations": [{"question_id": ..., "image_id": ...,
                                                        "multiple_choice_answer": "net",
                                                        "answers": [{"answer": "net", "answer_id": 1, ...}], ...}]}
    SRC/train2014/COCO_train2014_000000458752.jpg     (or under --images)
    SRC/answer2label.txt                              optional: a released answer vocabulary (used as it is)

Splits: train2014 -> train, val2014 -> val, test2015 -> test, test-dev2015 -> test-dev (a test split without
annotations gets empty answer lists). Rows keep the ten annotator answers, normalised as the VQA evaluation
normalises them (`vqa_answers.normalize_answer`). The answer vocabulary is `SRC/answer2label.txt` when present,
else the released rule: the normalised `multiple_choice_answer` of train then val, kept when seen at least
`--min-answer-count` times (default 9: the 3129 answers of VQAv2), in first-seen order.
A value of the wrong JSON type is never reshaped: an `answers` that is not a list, or an entry of it that is not
an object with a string `answer`, stays as it is for validation to quarantine; a file, question or annotation
that is not a JSON object, or a `multiple_choice_answer` that is not a string, is refused with one UserError.
"""

from __future__ import annotations

import posixpath
import re

from beit3core import io
from beit3core.data import formats
from beit3core.data.importers.common import (
    ImageCopier,
    decode,
    load_json,
    name_of,
    read_source,
    split_order,
    write_raw,
)
from beit3core.data.importers.vqa_answers import (
    ANSWER2LABEL,
    answer_vocabulary,
    normalize_answer,
    parse_answer2label,
)
from beit3core.errors import UserError

QUESTIONS = re.compile(r"v2_OpenEnded_mscoco_(.+)_questions\.json$")
SPLIT_NAMES = {"train2014": "train", "val2014": "val", "test2015": "test", "test-dev2015": "test-dev"}
VOCAB_SPLITS = ("train", "val")  # whose multiple_choice_answer builds the vocabulary, in this order


def _list_field(obj, key: str, where: str) -> list:
    if not isinstance(obj, dict) or not isinstance(obj.get(key), list):
        raise UserError(f"{where}: expected an object with a {key!r} list")
    return obj[key]


def _row_answers(answers) -> object:
    """Normalised annotator answers; a value of another shape is returned as it is (validation quarantines it)."""
    if not isinstance(answers, list) or not all(isinstance(x, dict) and isinstance(x.get("answer"), str)
                                                for x in answers):
        return answers
    return [normalize_answer(x["answer"]) for x in answers]


def read_annotations(src: str, afile: str) -> tuple[dict, list[str]]:
    """({question_id: row answers}, the multiple_choice_answer of each annotation in file order)."""
    answers, major = {}, []
    for n, a in enumerate(_list_field(load_json(afile, src), "annotations", afile)):
        where = f"{afile}: annotations[{n}]"
        if not isinstance(a, dict):
            raise UserError(f"{where}: expected an object, got {type(a).__name__}")
        if not isinstance(a.get("multiple_choice_answer"), str):
            raise UserError(f"{where}: field 'multiple_choice_answer': expected a string, got "
                            f"{type(a.get('multiple_choice_answer')).__name__}")
        if type(a.get("question_id")) not in (int, str):
            raise UserError(f"{where}: field 'question_id': expected an integer, got "
                            f"{type(a.get('question_id')).__name__}")
        major.append(a["multiple_choice_answer"])
        answers[a["question_id"]] = _row_answers(a.get("answers"))
    return answers, major


def convert(src: str, stage: str, opts: dict) -> dict:
    if not io.isdir(src):
        raise UserError(f"{src}: not a folder (expected v2_OpenEnded_mscoco_*_questions.json files)")
    question_files = {QUESTIONS.search(posixpath.basename(u)).group(1): u for u in io.ls(src)
                      if QUESTIONS.search(posixpath.basename(u))}
    if not question_files:
        raise UserError(f"{src}: no v2_OpenEnded_mscoco_<subtype>_questions.json file")
    copier = ImageCopier(opts.get("images") or src, stage, workers=opts.get("workers", 8))
    rows: dict[str, list[dict]] = {}
    major_answers: dict[str, list[str]] = {}
    for subtype, qfile in sorted(question_files.items()):
        split = SPLIT_NAMES.get(subtype, subtype)
        questions = _list_field(load_json(qfile, src), "questions", qfile)
        image_subtype = "test2015" if subtype == "test-dev2015" else subtype
        afile = io.join(src, f"v2_mscoco_{subtype}_annotations.json")
        answers = {}
        if io.exists(afile):
            answers, major_answers[split] = read_annotations(src, afile)
        out = rows.setdefault(split, [])
        for n, q in enumerate(questions):
            if not isinstance(q, dict):
                raise UserError(f"{qfile}: questions[{n}]: expected an object, got {type(q).__name__}")
            image_id = q.get("image_id")
            image = copier.ref(f"{image_subtype}/COCO_{image_subtype}_{image_id:012d}.jpg") \
                if type(image_id) is int else None
            qid = q.get("question_id", f"{split}-{n}")  # kept as it is: validation checks its type
            known = answers.get(qid, []) if type(qid) in (int, str) else []
            out.append({"id": qid, "image": image, "image_id": image_id, "question": q.get("question"),
                        "answers": known})
    copier.copy_all()
    min_count = int(opts.get("min_answer_count", 9))
    if min_count < 1:
        raise UserError(f"--min-answer-count: must be >= 1, got {min_count}")
    vocab_file = io.join(src, ANSWER2LABEL)
    if io.exists(vocab_file):
        vocab = parse_answer2label(decode(read_source(src, vocab_file)), vocab_file)
        source = {"answer_vocabulary": ANSWER2LABEL}
    else:
        vocab = answer_vocabulary([a for s in VOCAB_SPLITS for a in major_answers.get(s, [])], min_count)
        source = {"answer_vocabulary": "multiple_choice_answer of train + val", "min_answer_count": min_count}
        if not vocab:
            raise UserError(f"{src}: no multiple_choice_answer of train or val is seen {min_count} times or more "
                            f"(lower --min-answer-count, or give {ANSWER2LABEL})")
    order = split_order(rows)
    header = formats.make_header("vqa", name_of(src, opts, "vqav2"), order, {"format": "vqav2", **source},
                                 answers=vocab)
    return write_raw(stage, header, {s: rows[s] for s in order})
