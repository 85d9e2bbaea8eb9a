"""Metrics against values worked out by hand (formulas written out in the comments)."""

import math

import pytest
import torch

from beit3core.tasks.metrics import bleu4, cider_d, retrieval_recall, tokenize_caption, topk_accuracy


def test_tokenize_caption():
    assert tokenize_caption("A red, Circle.") == ["a", "red", "circle"]


def test_topk_accuracy():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.3], [0.2, 0.3, 0.5], [0.5, 0.4, 0.1]])
    labels = torch.tensor([1, 2, 2, 2])
    # top-1 hits: rows 0 and 2 -> 50 %; top-2 hits add row 1 (0.3 is 2nd) -> 75 %
    assert topk_accuracy(logits, labels, ks=(1, 2)) == {"acc1": 50.0, "acc2": 75.0}
    assert topk_accuracy(logits, labels, ks=(5,)) == {"acc5": 100.0}  # k capped at the class count


def test_retrieval_recall_both_directions():
    # 3 images, 4 texts; texts 0,1 belong to image 0, text 2 to image 1, text 3 to image 2
    text_to_image = torch.tensor([0, 0, 1, 2])
    scores = torch.tensor([
        [0.1, 0.9, 0.2, 0.3],   # image 0: best text 1 (own) -> TR@1 hit
        [0.8, 0.1, 0.5, 0.2],   # image 1: ranking 0, 2, ... -> own text 2 at rank 2
        [0.7, 0.6, 0.45, 0.4],  # image 2: own text 3 at rank 4
    ])
    r = retrieval_recall(scores, text_to_image, ks=(1, 2, 4))
    assert r["tr_r1"] == pytest.approx(100 / 3)
    assert r["tr_r2"] == pytest.approx(200 / 3)
    assert r["tr_r4"] == pytest.approx(100.0)
    # text->image, per text column: t0 [.1, .8, .7] -> its image 0 ranks 3rd (miss @1, @2);
    # t1 [.9, .1, .6] -> image 0 first; t2 [.2, .5, .45] -> image 1 first; t3 [.3, .2, .4] -> image 2 first
    assert r["ir_r1"] == pytest.approx(75.0)
    assert r["ir_r2"] == pytest.approx(75.0)
    assert r["ir_r4"] == pytest.approx(100.0)
    assert r["average_score"] == pytest.approx(sum(v for k, v in r.items() if k != "average_score") / 6)


def test_bleu4_hand_computed():
    # "a b c d e" vs "a b c d f": p1 = 4/5, p2 = 3/4, p3 = 2/3, p4 = 1/2, same length -> BP = 1
    expected = (4 / 5 * 3 / 4 * 2 / 3 * 1 / 2) ** 0.25
    assert bleu4(["a b c d e"], [["a b c d f"]]) == pytest.approx(expected, rel=1e-6)
    assert bleu4(["the cat sat down"], [["the cat sat down"]]) == pytest.approx(1.0, rel=1e-6)
    # fewer than 4 words: no 4-gram at all, p4 = 1e-15 / 1e-9 (pycocoevalcap's smoothing) -> (1e-6) ** 0.25
    assert bleu4(["the cat sat"], [["the cat sat"]]) == pytest.approx(1e-6 ** 0.25, rel=1e-6)
    # clipping and the closest reference: "the the the the" vs refs "the cat is here" / "the"
    # closest ref length to 4 is 4; p1 = clipped 1/4; no bigram matches -> ~0
    assert bleu4(["the the the the"], [["the cat is here", "the"]]) < 1e-3
    # brevity: "a b c d" vs "a b c d e f g h": precisions 1, BP = exp(1 - 8/4)
    assert bleu4(["a b c d"], [["a b c d e f g h"]]) == pytest.approx(math.exp(1 - 2), rel=1e-6)
    # corpus level: counts add up over sentences before the ratios are taken
    corpus = bleu4(["a b c d e", "a b c d"], [["a b c d f"], ["a b c d"]])
    expected = ((8 / 9) * (6 / 7) * (4 / 5) * (2 / 3)) ** 0.25
    assert corpus == pytest.approx(expected, rel=1e-6)


def test_cider_d_hand_computed():
    # Two images with disjoint words, so every n-gram has document frequency 1 and tf-idf weight
    # w = log(2) - log(1) = log 2 for each occurrence.
    cands = ["a b", "x y z"]
    refs = [["a b c"], ["x y z"]]
    # image 1, n=1: cand (w, w) vs ref (w, w, w): sum min*ref = 2w^2, norms sqrt2 w, sqrt3 w -> 2/sqrt6
    #          n=2: cand {ab} vs ref {ab, bc}: w^2 / (w * sqrt2 w) = 1/sqrt2; n=3,4: 0
    #          length in bigrams: 1 vs 2 -> gaussian exp(-1/72)
    s1 = 10 * (2 / math.sqrt(6) + 1 / math.sqrt(2)) / 4 * math.exp(-1 / 72)
    # image 2: exact match with 3 words: n = 1, 2, 3 give 1, n = 4 gives 0 (no 4-grams) -> 10 * 3/4
    s2 = 10 * 3 / 4
    assert cider_d(cands, refs) == pytest.approx((s1 + s2) / 2, rel=1e-9)


def test_cider_d_common_words_weigh_nothing():
    # a word in every image's references has idf log(2) - log(2) = 0; here every n-gram of the candidate
    # is such a word, so the score is 0 even though the word matches
    assert cider_d(["the", "the"], [["the cat"], ["the dog"]]) == 0.0
    # averaged over references: the same candidate scores half as much with one useless extra reference
    one = cider_d(["a b", "x y"], [["a b"], ["x y"]])
    two = cider_d(["a b", "x y"], [["a b", "q r"], ["x y", "s t"]])
    assert one == pytest.approx(10 * 2 / 4) and two < one
