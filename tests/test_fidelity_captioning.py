"""Captioning training details as released (issue 15, audit point 9): microsoft/unilm beit3/datasets.py
CaptioningDataset._get_mask_token (`random.randint(3, vocab_size - 1)`, both ends included) and beit3/utils.py
BertCaptioningLoss (`if drop_worst_ratio > 0 and iter > drop_worst_after`, iter counted from 0 by
engine_for_finetuning.py `global_step = start_steps + step`)."""

from types import SimpleNamespace

import numpy as np
import torch

from beit3core.tasks import captioning, settings_for
from beit3core.tasks.captioning import mask_captions


def test_random_replacement_ids_cover_3_to_vocab_size_minus_1():
    ids = torch.full((400, 12), 5)
    padding = torch.zeros_like(ids, dtype=torch.bool)
    masked, positions = mask_captions(ids, padding, mask_id=100, vocab_size=8, mask_prob=0.9,
                                      rng=np.random.default_rng(0))
    drawn = set(masked[positions].tolist()) - {100, 5}
    assert drawn == {3, 4, 6, 7}  # 7 = vocab_size - 1 is drawn too


def _drop_fraction_at(step: int, monkeypatch) -> float:
    seen = {}

    def record(logits, labels, smoothing, drop_worst_fraction=0.0):
        seen["drop"] = drop_worst_fraction
        return logits.sum()

    monkeypatch.setattr(captioning, "captioning_loss", record)
    ids = torch.tensor([[0, 5, 6, 7, 2]])
    batch = {"image": torch.zeros(1, 3, 8, 8), "text_ids": ids, "text_padding_mask": torch.zeros_like(ids).bool()}
    ctx = SimpleNamespace(settings=settings_for("captioning"), mask_id=9, vocab_size=10,
                          rng=np.random.default_rng(0), step=step)
    captioning.loss(lambda image, text, pad, positions: torch.zeros(int(positions.sum()), 10), batch, ctx)
    return seen["drop"]


def test_the_worst_tokens_are_dropped_only_after_step_12000(monkeypatch):
    assert settings_for("captioning").drop_worst_after == 12000
    assert _drop_fraction_at(12000, monkeypatch) == 0.0
    assert _drop_fraction_at(12001, monkeypatch) == 0.2
