"""VQA answers as the release handles them: normalisation, the answer vocabulary, soft scores, answer2label.txt.

microsoft/unilm `beit3/glossary.py` `normalize_word` (taken from ViLT, itself the official VQA evaluation's
`processPunctuation` + `processDigitArticle`), `beit3/datasets.py` `VQAv2Dataset.get_score` and
`make_dataset_index` (the vocabulary: the normalised `multiple_choice_answer` of train + val seen at least 9
times, in first-seen order: 3129 answers on VQAv2), and its `answer2label.txt` ({"answer": ..., "label": i}
per line, label i on line i).
"""

from __future__ import annotations

import functools
import re
from collections import Counter

from beit3core import io
from beit3core.errors import UserError

# fmt: off
_CONTRACTIONS = {
    'aint': "ain't", 'arent': "aren't", 'cant': "can't", 'couldve': "could've", 'couldnt': "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", 'didnt': "didn't", 'doesnt': "doesn't",
    'dont': "don't", 'hadnt': "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", 'hasnt': "hasn't",
    'havent': "haven't", 'hed': "he'd", "hed've": "he'd've", "he'dve": "he'd've", 'hes': "he's", 'howd': "how'd",
    'howll': "how'll", 'hows': "how's", "Id've": "I'd've", "I'dve": "I'd've", 'Im': "I'm", 'Ive': "I've",
    'isnt': "isn't", 'itd': "it'd", "itd've": "it'd've", "it'dve": "it'd've", 'itll': "it'll", "let's": "let's",
    'maam': "ma'am", 'mightnt': "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    'mightve': "might've", 'mustnt': "mustn't", 'mustve': "must've", 'neednt': "needn't", 'notve': "not've",
    'oclock': "o'clock", 'oughtnt': "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at",
    'shant': "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", 'shouldve': "should've",
    'shouldnt': "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": 'somebodyd',
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've", 'somebodyll': "somebody'll",
    'somebodys': "somebody's", 'someoned': "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    'someonell': "someone'll", 'someones': "someone's", 'somethingd': "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", 'somethingll': "something'll",
    'thats': "that's", 'thered': "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    'therere': "there're", 'theres': "there's", 'theyd': "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    'theyll': "they'll", 'theyre': "they're", 'theyve': "they've", 'twas': "'twas", 'wasnt': "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", 'weve': "we've", 'werent': "weren't", 'whatll': "what'll",
    'whatre': "what're", 'whats': "what's", 'whatve': "what've", 'whens': "when's", 'whered': "where'd",
    'wheres': "where's", 'whereve': "where've", 'whod': "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    'wholl': "who'll", 'whos': "who's", 'whove': "who've", 'whyll': "why'll", 'whyre': "why're", 'whys': "why's",
    'wont': "won't", 'wouldve': "would've", 'wouldnt': "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", 'yall': "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", 'youd': "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", 'youll': "you'll", 'youre': "you're", 'youve': "you've",
}
# fmt: on
_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
            "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
_PUNCT = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")  # sic: a period not followed by a digit
_COMMA_NUMBER = re.compile(r"(\d)(,)(\d)")

# How many annotators gave an answer -> its soft target (released `get_score`; 4 or more -> 1.0).
_SCORES = (0.0, 0.3, 0.6, 0.9)
ANSWER2LABEL = "answer2label.txt"


def normalize_answer(answer):
    """The released `normalize_word`: a punctuation mark becomes a space unless a space stands beside one (or
    the answer has a digit,digit comma), then periods not before a digit go; lower case, number words to digits,
    articles dropped, contractions restored, commas removed (`T-shirt` -> `t shirt`, `the 10,000` -> `10000`).

    Non-strings are returned unchanged (validation reports them).
    """
    if not isinstance(answer, str):
        return answer
    return _normalize(answer)


@functools.lru_cache(maxsize=1 << 18)  # a vocabulary and its rows repeat the same few thousand answers
def _normalize(answer: str) -> str:
    out = answer
    numeric_comma = _COMMA_NUMBER.search(answer) is not None
    for p in _PUNCT:
        # the test looks at the original answer, as released
        out = out.replace(p, "" if (p + " " in answer or " " + p in answer or numeric_comma) else " ")
    out = _PERIOD.sub("", out, count=32)  # sic: the release passes re.UNICODE (32) as sub's count
    words = [_NUMBERS.get(w, w) for w in out.lower().split()]
    words = [_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES]
    return " ".join(words).replace(",", "")


def answer_score(count: int) -> float:
    """Soft target of an answer given by `count` of the ten annotators (0, 0.3, 0.6, 0.9, then 1.0)."""
    return _SCORES[count] if 0 <= count < len(_SCORES) else 1.0


def answer_vocabulary(major_answers, min_count: int) -> list[str]:
    """Normalised answers seen at least `min_count` times, in first-seen order (released: train then val
    `multiple_choice_answer`, min_count 9)."""
    counts = Counter(normalize_answer(a) for a in major_answers)
    return [a for a, c in counts.items() if c >= min_count and isinstance(a, str) and a]


def parse_answer2label(text: str, uri: str) -> list[str]:
    """The answers of a released `answer2label.txt` (the text of `uri`), in label order; any other content is
    one UserError."""
    answers: list[str] = []
    for n, item in io.parse_jsonl(text, uri, unit="line"):
        if not isinstance(item, dict) or not isinstance(item.get("answer"), str) or not item["answer"]:
            raise UserError(f"{uri}: line {n}: expected {{\"answer\": <non-empty string>, \"label\": <int>}}")
        label = item.get("label")
        if type(label) is not int or label != len(answers):
            raise UserError(f"{uri}: line {n}: field 'label': expected {len(answers)} (labels count up from 0 "
                            f"line by line), got {label!r}")
        answers.append(item["answer"])
    if not answers:
        raise UserError(f"{uri}: no answers")
    if len(set(answers)) != len(answers):
        dup = next(a for a, c in Counter(answers).items() if c > 1)
        raise UserError(f"{uri}: answer {dup!r} appears twice")
    return answers
