"""The pretraining objective: text masking, heads + summed loss, and the deterministic three-stream mixer."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from beit3core.data import formats
from beit3core.errors import UserError
from beit3core.pretrain import IGNORE, Beit3ForPretraining, MaskingConfig, MixedBatches, Stream, accuracies, mask_text
from beit3core.pretrain.data import load_stream

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


def _text_stream(n=23):
    seqs = [np.array([0] + list(range(4 + i % 5, 10 + i % 5)) + [2], dtype=np.int32) for i in range(n)]
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in seqs])]).astype(np.int64)
    return Stream("texts", datasets=["mem"], dataset_index=np.zeros(n, np.int32), image_refs=[""] * n,
                  text_ids=np.concatenate(seqs) if seqs else np.zeros(0, np.int32), text_offsets=offsets)


def _mixer(streams, sizes, **kw):
    masking = MaskingConfig(mask_id=MASK_ID, grid=8, img_size=64, max_text_len=6)
    kw.setdefault("start_step", 0)
    kw.setdefault("total_steps", 10)
    return MixedBatches(streams, sizes, masking, seed=5, **kw)


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].keys() == b[k].keys()
        for kk in a[k]:
            assert torch.equal(a[k][kk], b[k][kk]), (k, kk)


def test_mixer_order_epochs_ranks_and_truncation():
    stream = _text_stream()
    mix = _mixer({"texts": stream}, {"texts": 4, "images": 0})
    # 23 rows, 4 per step: positions 0..22 are a permutation (one epoch), then a new epoch starts
    rows = np.concatenate([mix.rows("texts", s) for s in range(6)])
    assert sorted(rows[:23].tolist()) == list(range(23))
    assert not np.array_equal(mix._permutation("texts", 0), mix._permutation("texts", 1))
    b = mix.batch_for_step(3)["texts"]
    assert b["text_ids"].shape[1] <= 6  # max_text_len, </s> kept
    lengths = (~b["text_padding_mask"]).sum(1)
    for j in range(4):
        assert b["text_ids"][j, lengths[j] - 1] == 2 and b["text_ids"][j, 0] == 0
    assert ((b["text_labels"] != IGNORE).sum(1) >= 1).all()
    # two ranks of 2 per step see exactly what one rank of 4 sees, split in halves
    r0 = _mixer({"texts": stream}, {"texts": 2}, rank=0, world_size=2)
    r1 = _mixer({"texts": stream}, {"texts": 2}, rank=1, world_size=2)
    whole = mix.batch_for_step(7)["texts"]
    for r, m in ((0, r0), (1, r1)):
        part = m.batch_for_step(7)["texts"]
        width = part["text_ids"].shape[1]
        assert torch.equal(part["text_labels"], whole["text_labels"][2 * r:2 * r + 2, :width])
        assert torch.equal(part["text_ids"], whole["text_ids"][2 * r:2 * r + 2, :width])


def test_mixer_workers_in_step_order_and_resume():
    from torch.utils.data import DataLoader

    stream = _text_stream()
    mix = _mixer({"texts": stream}, {"texts": 3})
    expected = {s: mix.batch_for_step(s) for s in range(10)}
    got = list(DataLoader(_mixer({"texts": stream}, {"texts": 3}), batch_size=None, num_workers=2))
    assert [s for s, _ in got] == list(range(10))
    for s, batch in got:
        _same(batch, expected[s])
    resumed = list(_mixer({"texts": stream}, {"texts": 3}, start_step=6))
    assert [s for s, _ in resumed] == [6, 7, 8, 9]
    for s, batch in resumed:
        _same(batch, expected[s])
    with pytest.raises(UserError):
        _mixer({"texts": _text_stream(0)}, {"texts": 3})


def _image_dataset(root, n=5):
    from PIL import Image

    os.makedirs(os.path.join(root, "img"))
    rows = []
    for i in range(n):
        Image.fromarray(np.full((40, 50, 3), 30 * i, np.uint8)).save(os.path.join(root, "img", f"{i}.png"))
        rows.append({"id": f"r{i}", "image": f"img/{i}.png"})
    with open(os.path.join(root, formats.HEADER), "w") as f:
        json.dump(formats.make_header("images", "imgs", ["train"]), f)
    with open(os.path.join(root, "train.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return rows


def test_image_stream_join_resize_and_block_masks(tmp_path):
    data, vdir = tmp_path / "data", tmp_path / "V"
    rows = _image_dataset(str(data / "images"))
    codes = np.arange(5 * 64, dtype=np.uint16).reshape(5, 64) % 16
    (vdir / "tokens" / "images").mkdir(parents=True)
    order = [3, 1, 4, 0, 2]  # token file in another order than the rows: joined by key
    np.savez(vdir / "tokens" / "images" / "train.npz", ids=codes[order],
             keys=np.array([rows[i]["id"] for i in order]))
    stream = load_stream("images", str(data), "unused", str(vdir), "train", ["images"])
    assert len(stream) == 5 and np.array_equal(stream.visual_ids, codes)
    mix = _mixer({"images": stream}, {"images": 4})
    batch = mix.batch_for_step(0)["images"]
    assert batch["image"].shape == (4, 3, 64, 64) and batch["image"].dtype == torch.uint8
    assert batch["image_mask"].shape == (4, 64) and (batch["image_mask"].sum(1) == 26).all()  # 40% of 64
    for j, r in enumerate(mix.rows("images", 0)):
        assert torch.equal(batch["image_labels"][j], torch.from_numpy(codes[r].astype(np.int64)))
        assert int(batch["image"][j, 0, 0, 0]) == 30 * r  # the right picture, resized to 64
    np.savez(vdir / "tokens" / "images" / "train.npz", ids=codes[:4], keys=np.array(["r0", "r1", "r2", "r3"]))
    with pytest.raises(UserError, match="r4"):
        load_stream("images", str(data), "unused", str(vdir), "train", ["images"])
