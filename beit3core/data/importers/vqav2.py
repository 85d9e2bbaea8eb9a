"""vqav2: the VQA v2 question and annotation files with their COCO images.

    SRC/v2_OpenEnded_mscoco_train2014_questions.json  {"data_subtype": "train2014", "questions": [
                                                        {"image_id": 458752, "question": "...", "question_id": 458752000}]}
    SRC/v2_mscoco_train2014_annotations.json          {"annotations": [{"question_id": ..., "image_id": ...,
                                                        "answers": [{"answer": "net", "answer_id": 1, ...}], ...}]}
    SRC/train2014/COCO_train2014_000000458752.jpg     (or under --images)

Splits: train2014 -> train, val2014 -> val, test2015 -> test, test-dev2015 -> test-dev (a test split without
annotations gets empty answer lists). Rows keep the ten annotator answers, normalised the way the VQA
evaluation normalises them; the answer vocabulary is every normalised training answer given at least
`--min-answer-count` times.
"""

from __future__ import annotations

import posixpath
import re
from collections import Counter

from beit3core import io
from beit3core.data import formats
from beit3core.data.importers.common import ImageCopier, load_json, name_of, split_order, write_raw
from beit3core.errors import UserError

QUESTIONS = re.compile(r"v2_OpenEnded_mscoco_(.+)_questions\.json$")
SPLIT_NAMES = {"train2014": "train", "val2014": "val", "test2015": "test", "test-dev2015": "test-dev"}

_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
            "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
_CONTRACTIONS = {"dont": "don't", "doesnt": "doesn't", "isnt": "isn't", "arent": "aren't", "cant": "can't",
                 "wont": "won't", "im": "i'm", "ive": "i've", "youre": "you're", "theyre": "they're", "whats": "what's",
                 "thats": "that's", "its": "it's", "hes": "he's", "shes": "she's", "wasnt": "wasn't"}
_PUNCT = re.compile(r"[;/\[\]\"{}()=+\\_\-><@`,?!*#%^&$~|]")
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_NUMBER = re.compile(r"(\d)(,)(\d)")


def normalize_answer(answer) -> object:
    """The VQA evaluation normalisation: lower case, punctuation, number words, articles, contractions.

    Non-strings are returned unchanged (validation reports them).
    """
    if not isinstance(answer, str):
        return answer
    a = " ".join(answer.replace("\n", " ").replace("\t", " ").lower().split())
    a = _COMMA_NUMBER.sub(r"\1\3", a)
    a = _PUNCT.sub("", a.replace("'", "") if "'" in a and not re.search(r"\w'\w", a) else a)
    a = _PERIOD.sub("", a)
    words = [_NUMBERS.get(w, w) for w in a.split() if w not in _ARTICLES]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words)


def answer_vocabulary(answer_lists, min_count: int) -> list[str]:
    counts = Counter(a for answers in answer_lists for a in answers if isinstance(a, str) and a)
    return sorted(a for a, c in counts.items() if c >= min_count)


def convert(src: str, stage: str, opts: dict) -> dict:
    if not io.isdir(src):
        raise UserError(f"{src}: not a folder (expected v2_OpenEnded_mscoco_*_questions.json files)")
    question_files = {QUESTIONS.search(posixpath.basename(u)).group(1): u for u in io.ls(src)
                      if QUESTIONS.search(posixpath.basename(u))}
    if not question_files:
        raise UserError(f"{src}: no v2_OpenEnded_mscoco_<subtype>_questions.json file")
    copier = ImageCopier(opts.get("images") or src, stage, workers=opts.get("workers", 8))
    rows: dict[str, list[dict]] = {}
    for subtype, qfile in sorted(question_files.items()):
        split = SPLIT_NAMES.get(subtype, subtype)
        questions = load_json(qfile)
        if not isinstance(questions, dict) or not isinstance(questions.get("questions"), list):
            raise UserError(f"{qfile}: expected an object with a 'questions' list")
        image_subtype = "test2015" if subtype == "test-dev2015" else subtype
        afile = io.join(src, f"v2_mscoco_{subtype}_annotations.json")
        answers = {}
        if io.exists(afile):
            ann = load_json(afile)
            if not isinstance(ann, dict) or not isinstance(ann.get("annotations"), list):
                raise UserError(f"{afile}: expected an object with an 'annotations' list")
            for a in ann["annotations"]:
                if isinstance(a, dict):
                    answers[a.get("question_id")] = [normalize_answer(x.get("answer") if isinstance(x, dict) else x)
                                                     for x in a.get("answers") or []]
        out = rows.setdefault(split, [])
        for n, q in enumerate(questions["questions"]):
            if not isinstance(q, dict):
                q = {"question": q}
            image_id = q.get("image_id")
            image = copier.ref(f"{image_subtype}/COCO_{image_subtype}_{image_id:012d}.jpg") \
                if isinstance(image_id, int) else None
            out.append({"id": q.get("question_id", f"{split}-{n}"), "image": image, "image_id": image_id,
                        "question": q.get("question"), "answers": answers.get(q.get("question_id"), [])})
    copier.copy_all()
    train_answers = [r["answers"] for s, rs in rows.items() if s in ("train",) for r in rs]
    vocab = answer_vocabulary(train_answers, max(1, int(opts.get("min_answer_count", 9))))
    order = split_order(rows)
    header = formats.make_header("vqa", name_of(src, opts, "vqav2"), order,
                                 {"format": "vqav2", "min_answer_count": opts.get("min_answer_count", 9)},
                                 answers=vocab)
    return write_raw(stage, header, {s: rows[s] for s in order})
