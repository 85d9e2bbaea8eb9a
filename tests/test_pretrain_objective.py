"""The pretraining objective: text masking, heads + summed loss (the loader: tests/test_pretrain_data.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from beit3core.pretrain import IGNORE, Beit3ForPretraining, accuracies, mask_text

MASK_ID = 50


def test_mask_text_never_masks_specials_and_counts():
    rng = np.random.default_rng(0)
    ids = np.array([0, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 2, 1, 1])
    for ratio, expect in ((0.15, 2), (0.5, 5), (1.0, 10), (0.01, 1)):
        inputs, labels = mask_text(ids, ratio, MASK_ID, rng)
        chosen = labels != IGNORE
        assert chosen.sum() == expect
        assert not chosen[[0, 11, 12, 13]].any()  # <s>, </s>, <pad> never chosen
        assert (inputs[[0, 11, 12, 13]] == ids[[0, 11, 12, 13]]).all()
        assert (labels[chosen] == ids[chosen]).all()
        assert (inputs[~chosen] == ids[~chosen]).all()
    inputs, labels = mask_text(np.array([0, 2, 1]), 0.5, MASK_ID, rng)  # nothing maskable
    assert (labels == IGNORE).all() and inputs.tolist() == [0, 2, 1]


def test_mask_text_80_10_10_and_determinism():
    ids = np.concatenate([[0], np.arange(4, 40), [2]])
    rng = np.random.default_rng(1)
    counts = {"mask": 0, "random": 0, "same": 0}
    for _ in range(400):
        inputs, labels = mask_text(ids, 0.5, MASK_ID, rng)
        chosen = labels != IGNORE
        counts["mask"] += int((inputs[chosen] == MASK_ID).sum())
        changed = chosen & (inputs != MASK_ID) & (inputs != ids)
        counts["random"] += int(changed.sum())
        counts["same"] += int((chosen & (inputs == ids)).sum())
        assert ((inputs[changed] >= 4) & (inputs[changed] < MASK_ID)).all()
    total = sum(counts.values())
    assert counts["mask"] / total == pytest.approx(0.8, abs=0.02)
    # a random replacement can hit the original id (1 in 46), hence the slightly lower random share
    assert counts["random"] / total == pytest.approx(0.1 * 45 / 46, abs=0.015)
    assert counts["same"] / total == pytest.approx(0.1 + 0.1 / 46, abs=0.015)
    a = mask_text(ids, 0.15, MASK_ID, np.random.default_rng([3, 1, 7]))
    b = mask_text(ids, 0.15, MASK_ID, np.random.default_rng([3, 1, 7]))
    assert all((x == y).all() for x, y in zip(a, b))


def _tiny_model(vocab=60, codebook=16):
    from beit3core.factory import create_model

    torch.manual_seed(0)
    backbone = create_model("beit3_tiny_patch8_64", depth=2, embed_dim=32, num_heads=2, mlp_dim=64, vocab_size=vocab)
    return Beit3ForPretraining(backbone, vocab, codebook)


def _batch(b=3, length=9, vocab=60, codebook=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, vocab - 1, (b, length), generator=g)
    ids[:, 0], ids[:, -1] = 0, 2
    labels = torch.full_like(ids, IGNORE)
    labels[:, 2:5] = ids[:, 2:5]
    inputs = ids.clone()
    inputs[:, 2:5] = vocab - 1
    padding = torch.zeros(b, length, dtype=torch.bool)
    padding[0, -2:] = True
    image = torch.randint(0, 256, (b, 3, 64, 64), dtype=torch.uint8, generator=g)
    mask = torch.zeros(b, 64, dtype=torch.bool)
    mask[:, 10:36] = True
    vis = torch.randint(0, codebook, (b, 64), generator=g)
    return {
        "images": {"image": image, "image_mask": mask, "image_labels": vis},
        "texts": {"text_ids": inputs, "text_padding_mask": padding, "text_labels": labels},
        "pairs": {"image": image, "image_mask": mask, "image_labels": vis, "text_ids": inputs,
                  "text_padding_mask": padding, "text_labels": labels},
    }


def test_pretraining_model_loss_stats_and_gradients():
    model = _tiny_model()
    out = model(_batch())
    parts = ("text_mlm", "pair_mlm", "image_mim", "pair_mim")
    assert float(out.loss.detach()) == pytest.approx(sum(float(out.stats[f"{p}_loss"]) for p in parts), rel=1e-5)
    # untrained: every part is close to the uniform-prediction loss log(classes)
    assert float(out.stats["text_mlm_loss"]) == pytest.approx(np.log(60), rel=0.1)
    assert float(out.stats["image_mim_loss"]) == pytest.approx(np.log(16), rel=0.1)
    assert out.stats["text_mlm_total"] == 9 and out.stats["pair_mlm_total"] == 9
    assert out.stats["image_mim_total"] == 3 * 26 and out.stats["pair_mim_total"] == 3 * 26
    out.loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    # mask_token is used (masked patches), cls and every expert of both modalities get gradient
    assert missing == [], missing
    acc = accuracies({k: float(v) for k, v in out.stats.items()})
    assert set(acc) >= {"mlm_acc", "mim_acc", "text_mlm_acc", "pair_mim_acc"}
    assert all(0 <= v <= 1 for v in acc.values())


def test_pretraining_model_streams_optional_and_learns():
    model = _tiny_model()
    batch = _batch()
    only_text = {"texts": batch["texts"]}
    out = model(only_text)
    assert set(out.stats) == {"text_mlm_loss", "text_mlm_correct", "text_mlm_total"}
    with pytest.raises(ValueError):
        model({})
    # a few steps on one fixed batch drive the summed loss down (the objective is trainable)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first = None
    for _ in range(6):
        loss = model(batch).loss
        first = first if first is not None else float(loss.detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.85 * first
