"""Evaluation metrics of the five tasks, implemented here (no network, no pycocoevalcap).

- `topk_accuracy`: top-1 / top-5 accuracy in percent (ImageNet).
- VQA score: see `beit3core.tasks.vqa.vqa_scores` (mean soft score of the arg-max answer, in percent).
- `retrieval_recall`: recall@1/5/10 for image->text (`tr_r*`) and text->image (`ir_r*`) and their mean
  (`average_score`), in percent, as the released `evaluate` of the retrieval task.
- `bleu4`: corpus BLEU-4 as pycocoevalcap's `Bleu(4)` computes it (clipped n-gram counts summed over the corpus,
  closest reference length for the brevity penalty, the same 1e-15 / 1e-9 smoothing).
- `cider_d`: CIDEr-D as pycocoevalcap's `Cider` computes it (tf-idf n-grams 1..4 with document frequencies over
  the references of the evaluated set, clipped candidate weights, Gaussian length penalty sigma 6 on the bigram
  counts, x10, averaged over references and images).
Captions are tokenised by `tokenize_caption` (lower case, punctuation removed), a stand-in for the PTB tokenizer
(Java) that pycocoevalcap runs, so absolute values can differ slightly from COCO server numbers.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict

import numpy as np
import torch

_PUNCT = re.compile(r"[^\w\s']|_")


def tokenize_caption(text: str) -> list[str]:
    return _PUNCT.sub(" ", text.lower()).split()


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    result = {}
    for k in ks:
        kk = min(k, logits.shape[1])
        hit = (logits.topk(kk, dim=1).indices == labels[:, None]).any(dim=1)
        result[f"acc{k}"] = 100.0 * hit.float().mean().item()
    return result


def retrieval_recall(
    scores: torch.Tensor, text_to_image: torch.Tensor, ks: tuple[int, ...] = (1, 5, 10)
) -> dict[str, float]:
    """`scores` (num_images, num_texts); `text_to_image[j]` = the image row of text j.

    Image->text recall@k: an image is a hit when any of its texts is among its k best texts.
    Text->image recall@k: a text is a hit when its image is among its k best images.
    """
    num_images, num_texts = scores.shape
    result = {}
    for k in ks:
        top_texts = scores.topk(min(k, num_texts), dim=1).indices  # (I, k)
        owner = text_to_image[top_texts]  # image of each retrieved text
        tr = (owner == torch.arange(num_images)[:, None]).any(dim=1).float().mean().item()
        top_images = scores.t().topk(min(k, num_images), dim=1).indices  # (T, k)
        ir = (top_images == text_to_image[:, None]).any(dim=1).float().mean().item()
        result[f"tr_r{k}"] = 100.0 * tr
        result[f"ir_r{k}"] = 100.0 * ir
    result["average_score"] = sum(result.values()) / len(result)
    return result


def _ngrams(words: list[str], n: int) -> Counter:
    return Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))


def bleu4(candidates: list[str], references: list[list[str]]) -> float:
    """Corpus BLEU-4 in [0, 1]; candidates[i] is scored against references[i] (one or more strings)."""
    tiny, small = 1e-15, 1e-9
    correct = [0] * 4
    guess = [0] * 4
    cand_len = ref_len = 0
    for cand, refs in zip(candidates, references, strict=True):
        words = tokenize_caption(cand)
        ref_words = [tokenize_caption(r) for r in refs]
        cand_len += len(words)
        # closest reference length, ties to the shorter one (pycocoevalcap "closest")
        ref_len += min((abs(len(r) - len(words)), len(r)) for r in ref_words)[1]
        for n in range(1, 5):
            counts = _ngrams(words, n)
            max_ref = Counter()
            for r in ref_words:
                for gram, c in _ngrams(r, n).items():
                    max_ref[gram] = max(max_ref[gram], c)
            correct[n - 1] += sum(min(c, max_ref[g]) for g, c in counts.items())
            guess[n - 1] += max(len(words) - n + 1, 0)
    log_precision = sum(math.log((correct[n] + tiny) / (guess[n] + small)) for n in range(4)) / 4
    brevity = 1.0 if cand_len >= ref_len else math.exp(1 - ref_len / (cand_len + small))
    return brevity * math.exp(log_precision)


def cider_d(candidates: list[str], references: list[list[str]], sigma: float = 6.0) -> float:
    """Corpus CIDEr-D on pycocoevalcap's scale (1.336 for a reported COCO CIDEr of 133.6)."""
    cands = [tokenize_caption(c) for c in candidates]
    refs = [[tokenize_caption(r) for r in rs] for rs in references]
    if len(cands) != len(refs):
        raise ValueError("candidates and references differ in length")

    def counts(words):
        out = Counter()
        for n in range(1, 5):
            out.update(_ngrams(words, n))
        return out

    cand_counts = [counts(c) for c in cands]
    ref_counts = [[counts(r) for r in rs] for rs in refs]
    doc_freq: Counter = Counter()
    for rs in ref_counts:
        doc_freq.update(set(g for r in rs for g in r))
    log_num_docs = math.log(float(len(refs)))

    def vec(cnt):
        v = [defaultdict(float) for _ in range(4)]
        norm = [0.0] * 4
        length = 0
        for gram, tf in cnt.items():
            n = len(gram) - 1
            v[n][gram] = tf * (log_num_docs - math.log(max(1.0, doc_freq[gram])))
            norm[n] += v[n][gram] ** 2
            if n == 1:  # pycocoevalcap measures the length in bigrams
                length += tf
        return v, [math.sqrt(x) for x in norm], length

    def sim(vh, nh, lh, vr, nr, lr):
        delta = float(lh - lr)
        val = np.zeros(4)
        for n in range(4):
            for gram, w in vh[n].items():
                val[n] += min(w, vr[n][gram]) * vr[n][gram]
            if nh[n] != 0 and nr[n] != 0:
                val[n] /= nh[n] * nr[n]
            val[n] *= math.exp(-(delta**2) / (2 * sigma**2))
        return val

    scores = []
    for cc, rcs in zip(cand_counts, ref_counts):
        vh, nh, lh = vec(cc)
        total = np.zeros(4)
        for rc in rcs:
            vr, nr, lr = vec(rc)
            total += sim(vh, nh, lh, vr, nr, lr)
        scores.append(float(np.mean(total)) / len(rcs) * 10.0)
    return float(np.mean(scores))
