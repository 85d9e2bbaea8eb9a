"""Task heads, losses, caption masking and beam search against a tiny stand-in backbone.

The stand-in honours the model contract of docs/architecture.md (image / text / fusion passes, vision first,
`text_causal`), so the heads are tested independently of the real Multiway Transformer.
"""

import itertools
import math
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from beit3core.tasks.beam_search import beam_search
from beit3core.tasks.captioning import CaptioningModel, captioning_loss, mask_captions, smoothed_token_losses
from beit3core.tasks.classification import ClassificationModel, classification_loss
from beit3core.tasks.nlvr2 import NLVR2Model, nlvr2_loss
from beit3core.tasks.retrieval import RetrievalModel, contrastive_loss
from beit3core.tasks.vqa import VQAModel, soft_targets, vqa_loss, vqa_scores


pytestmark = pytest.mark.usefixtures("one_thread")


@dataclass(frozen=True)
class _Cfg:
    embed_dim: int = 16
    vocab_size: int = 30
    img_size: int = 16
    patch_size: int = 8


class TinyBackbone(nn.Module):
    """Vision tokens first ([cls, patches]), then text; one joint attention layer."""

    def __init__(self, cfg=_Cfg()):
        super().__init__()
        self.config = cfg
        d = cfg.embed_dim
        self.proj = nn.Conv2d(3, d, cfg.patch_size, cfg.patch_size)
        self.cls = nn.Parameter(torch.randn(1, 1, d))
        self.text_embed = nn.Embedding(cfg.vocab_size, d)
        self.text_pos = nn.Embedding(64, d)
        self.layer = nn.TransformerEncoderLayer(d, 2, 32, dropout=0.0, batch_first=True)
        self.calls = []

    def forward(self, image=None, text_ids=None, text_padding_mask=None, image_mask=None, text_causal=False):
        self.calls.append(dict(image=image is not None, text=text_ids is not None, causal=text_causal))
        parts, pads = [], []
        if image is not None:
            v = self.proj(image).flatten(2).transpose(1, 2)
            v = torch.cat([self.cls.expand(v.shape[0], -1, -1), v], 1)
            parts.append(v)
            pads.append(torch.zeros(v.shape[:2], dtype=torch.bool))
        split = parts[0].shape[1] if parts else 0
        if text_ids is not None:
            t = self.text_embed(text_ids) + self.text_pos(torch.arange(text_ids.shape[1]))
            parts.append(t)
            pads.append(text_padding_mask if text_padding_mask is not None else torch.zeros_like(text_ids, dtype=torch.bool))
        x = torch.cat(parts, 1)
        pad = torch.cat(pads, 1)
        mask = None
        if text_causal:
            n, t = x.shape[1], x.shape[1] - split
            mask = torch.zeros(n, n, dtype=torch.bool)
            mask[:split, split:] = True
            mask[split:, split:] = torch.triu(torch.ones(t, t, dtype=torch.bool), 1)
        h = self.layer(x, src_mask=mask, src_key_padding_mask=pad)
        return SimpleNamespace(hidden=h, split=split, vision_cls=h[:, 0] if image is not None else None,
                               text_cls=h[:, split] if text_ids is not None else None)


def _image(b):
    return torch.randn(b, 3, 16, 16)


def _text(b, length=6):
    ids = torch.randint(4, 29, (b, length))
    ids[:, 0] = 0
    pad = torch.zeros(b, length, dtype=torch.bool)
    pad[0, -2:] = True
    ids[pad] = 1
    return ids, pad


def _trains(model, loss_fn, steps=60, lr=3e-3):
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    first = None
    for _ in range(steps):
        loss = loss_fn()
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
    return first, loss.item()


def test_classification_head_shapes_init_and_loss():
    torch.manual_seed(0)
    model = ClassificationModel(TinyBackbone(), num_classes=5)
    assert model.head.weight.abs().max() < 0.02 * 0.001 + 1e-12  # x0.001 after trunc_normal(0.02)
    assert sorted(n for n, _ in model.named_parameters() if not n.startswith("backbone."))[:2] == [
        "fc_norm.bias", "fc_norm.weight"]
    images, labels = _image(4), torch.tensor([0, 1, 2, 3])
    logits = model(images)
    assert logits.shape == (4, 5)
    # near-zero logits at init: the smoothed CE is log(5)
    assert classification_loss(logits, labels).item() == pytest.approx(math.log(5), abs=1e-3)
    soft = torch.nn.functional.one_hot(labels, 5).float()
    assert classification_loss(logits, soft).item() == pytest.approx(math.log(5), abs=1e-3)
    first, last = _trains(model, lambda: classification_loss(model(images), labels, 0.0))
    assert last < first / 4


def test_classification_pools_patches_without_cls():
    model = ClassificationModel(TinyBackbone(), num_classes=3).eval()
    images = _image(2)
    out = model.backbone(image=images)
    expected = model.head(model.fc_norm(out.hidden[:, 1:].mean(1)))
    torch.testing.assert_close(model(images), expected)


def test_vqa_head_keys_soft_targets_and_loss():
    torch.manual_seed(0)
    model = VQAModel(TinyBackbone(), num_answers=7)
    keys = {k for k in model.state_dict() if not k.startswith("backbone.")}
    assert keys == {"pooler.norm.weight", "pooler.norm.bias", "pooler.dense.weight", "pooler.dense.bias",
                    "head.0.weight", "head.0.bias", "head.1.weight", "head.1.bias", "head.3.weight", "head.3.bias"}
    vocab = {"red": 0, "blue": 1, "2": 2}
    t = soft_targets(["red", "red", "Red", "blue", "green", "2", "2", "2", "2", "2"], vocab)
    assert t == {0: pytest.approx(0.9), 1: pytest.approx(0.3), 2: 1.0}
    ids, pad = _text(3)
    targets = torch.zeros(3, 7)
    targets[0, 1], targets[1, 3], targets[2, 5] = 1.0, 0.6, 0.3
    logits = model(_image(3), ids, pad)
    assert logits.shape == (3, 7)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="sum") / 3
    torch.testing.assert_close(vqa_loss(logits, targets), expected)
    scores = vqa_scores(torch.tensor([[0.0, 5, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 9.0]]), targets[:2])
    assert scores.tolist() == [1.0, 0.0]


def test_nlvr2_pools_both_passes_and_learns():
    torch.manual_seed(0)
    backbone = TinyBackbone()
    model = NLVR2Model(backbone)
    assert model.head.dense1.weight.shape == (32, 64) and model.head.dense2.weight.shape == (2, 32)
    assert model.head.dense2.weight.abs().max() < 1e-4
    left, right = _image(3), _image(3)
    ids, pad = _text(3)
    model.eval()
    logits = model(left, right, ids, pad)
    assert logits.shape == (3, 2)
    out_l = backbone(image=left, text_ids=ids, text_padding_mask=pad)
    out_r = backbone(image=right, text_ids=ids, text_padding_mask=pad)
    pooled = torch.cat([out_l.hidden[:, 0], out_l.hidden[:, out_l.split], out_r.hidden[:, 0],
                        out_r.hidden[:, out_r.split]], -1)
    torch.testing.assert_close(logits, model.head(pooled), atol=1e-5, rtol=1e-4)
    model.train()
    labels = torch.tensor([0, 1, 1])
    first, last = _trains(model, lambda: nlvr2_loss(model(left, right, ids, pad), labels))
    assert last < first / 4


def test_retrieval_dual_encoder_and_contrastive_loss():
    torch.manual_seed(0)
    backbone = TinyBackbone()
    model = RetrievalModel(backbone)
    assert model.vision_head.bias is None and model.language_head.bias is None
    assert model.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    images, (ids, pad) = _image(4), _text(4)
    backbone.calls.clear()
    img, txt, scale_param = model(images, ids, pad)
    assert scale_param is model.logit_scale
    assert [(c["image"], c["text"]) for c in backbone.calls] == [(True, False), (False, True)]  # two passes
    torch.testing.assert_close(img.norm(dim=-1), torch.ones(4))
    torch.testing.assert_close(txt.norm(dim=-1), torch.ones(4))
    scale = model.logit_scale.exp()
    logits = scale * img @ txt.t()
    labels = torch.arange(4)
    expected = (torch.nn.functional.cross_entropy(logits, labels)
                + torch.nn.functional.cross_entropy(logits.t(), labels)) / 2
    torch.testing.assert_close(contrastive_loss(img, txt, model.logit_scale), expected)
    # a gathered batch: rank 1 of 2 sees the other rank's rows as extra negatives, labels offset by N
    other_img, other_txt = torch.nn.functional.normalize(torch.randn(2, 4, 16), dim=-1)
    gather = {id(img): torch.cat([other_img, img]), id(txt): torch.cat([other_txt, txt])}
    loss = contrastive_loss(img, txt, model.logit_scale, gather=lambda x: gather[id(x)], rank=1)
    i2t = scale * img @ torch.cat([other_txt, txt]).t()
    t2i = scale * txt @ torch.cat([other_img, img]).t()
    expected = (torch.nn.functional.cross_entropy(i2t, labels + 4)
                + torch.nn.functional.cross_entropy(t2i, labels + 4)) / 2
    torch.testing.assert_close(loss, expected)
    first, last = _trains(model, lambda: contrastive_loss(*model(images, ids, pad)))
    assert last < first / 2


def test_caption_masking_rules():
    rng = np.random.default_rng(0)
    ids = torch.tensor([[0, 5, 6, 7, 8, 2, 1, 1], [0, 9, 2, 1, 1, 1, 1, 1], [0, 2, 1, 1, 1, 1, 1, 1]])
    pad = ids == 1
    seen_first = False
    for _ in range(50):
        masked, pos = mask_captions(ids, pad, mask_id=29, vocab_size=30, mask_prob=0.6, rng=rng)
        assert pos[0].sum() == 4  # n=6: int(6*0.6+0.5) = 4
        assert pos[1].sum() == 2  # n=3: min(int(2.3), n - 1) = 2
        assert pos[2].sum() == 1  # n=2: min(int(1.7), n - 1) = 1, the </s>
        assert not pos[:, 0].any() and not (pos & pad).any()  # <s> and pads never masked
        assert torch.equal(masked[~pos], ids[~pos])
        seen_first |= bool((masked[pos] == 29).any())
    assert seen_first


def test_caption_loss_label_smoothing_and_worst_drop():
    logits = torch.randn(5, 11)
    labels = torch.tensor([0, 3, 4, 10, 2])
    per_token = smoothed_token_losses(logits, labels, 0.1)
    logp = torch.log_softmax(logits, -1)
    target = torch.full((5, 11), 0.01)
    target[torch.arange(5), labels] = 0.9
    expected = (target * (target.log() - logp)).sum(-1)
    torch.testing.assert_close(per_token, expected)
    torch.testing.assert_close(captioning_loss(logits, labels), expected.mean())
    kept = torch.sort(expected).values[:4]
    torch.testing.assert_close(captioning_loss(logits, labels, drop_worst_fraction=0.2), kept.mean())


def test_captioning_model_uses_causal_mask():
    torch.manual_seed(0)
    backbone = TinyBackbone()
    model = CaptioningModel(backbone).eval()
    assert model.mlm_head.weight.shape == (30, 16)
    images, (ids, pad) = _image(2), _text(2)
    pos = torch.zeros_like(pad)
    pos[:, 2] = True
    logits = model(images, ids, pad, pos)
    assert logits.shape == (2, 30) and backbone.calls[-1]["causal"]
    # causal: changing a later token leaves the logits at position 2 unchanged
    ids2 = ids.clone()
    ids2[:, 3] = 7
    torch.testing.assert_close(model(images, ids2, pad, pos), logits)


# ---------------------------------------------------------------- beam search

def _markov(table: dict[int, dict[int, float]], vocab: int):
    """A toy 'model': the next-token distribution depends on the last token only."""
    def step(prefixes, origin):
        out = torch.full((prefixes.shape[0], vocab), float("-inf"))
        for row, last in enumerate(prefixes[:, -1].tolist()):
            for tok, p in table.get(last, {}).items():
                out[row, tok] = math.log(p)
        return out
    return step


def test_beam_search_beats_greedy_on_a_known_case():
    # bos=0, eos=2, tokens 3..5. Greedy takes 3 (0.6) then is stuck with 0.3-probability tokens;
    # the best sequence is 4 (0.4) -> eos (1.0).
    table = {0: {3: 0.6, 4: 0.4}, 3: {5: 0.3, 2: 0.3, 4: 0.4}, 4: {2: 1.0}, 5: {2: 1.0}}
    step = _markov(table, 6)
    assert beam_search(step, 1, bos_id=0, eos_id=2, num_beams=1, max_len=5, length_penalty=0.0) == [[3, 4]]
    assert beam_search(step, 1, bos_id=0, eos_id=2, num_beams=3, max_len=5, length_penalty=0.0) == [[4]]
    # batched: two identical items give identical answers
    assert beam_search(step, 2, bos_id=0, eos_id=2, num_beams=3, max_len=5, length_penalty=0.0) == [[4], [4]]


def test_beam_search_length_penalty():
    # released lengths count <s> and </s>: [3] scores log(0.5)/3**lp, [4, 5] scores log(0.5*0.9*0.95)/4**lp
    table = {0: {3: 0.5, 4: 0.5}, 3: {2: 1.0}, 4: {5: 0.9, 2: 0.1}, 5: {2: 0.95, 5: 0.05}}
    step = _markov(table, 6)
    short = math.log(0.5)
    long = math.log(0.5 * 0.9 * 0.95)
    assert [3] == beam_search(step, 1, bos_id=0, eos_id=2, num_beams=3, max_len=8, length_penalty=0.6)[0]
    for lp in (0.0, 0.6, 3.0):
        best = [3] if short / 3**lp >= long / 4**lp else [4, 5]
        assert beam_search(step, 1, bos_id=0, eos_id=2, num_beams=3, max_len=8, length_penalty=lp) == [best]
    assert [4, 5] == beam_search(step, 1, bos_id=0, eos_id=2, num_beams=3, max_len=8, length_penalty=3.0)[0]


def test_beam_search_exhaustive_matches_brute_force():
    rng = np.random.default_rng(1)
    vocab, max_len = 5, 5  # ids 3, 4 are words; 2 is eos
    table = {}
    for last in (0, 3, 4):
        p = rng.dirichlet(np.ones(3))
        table[last] = {2: p[0], 3: p[1], 4: p[2]}
    step = _markov(table, vocab)
    best, best_seq = -1e9, None
    for length in range(0, max_len - 2):  # at most max_len - 3 words (released)
        for words in itertools.product((3, 4), repeat=length):
            seq = [0, *words]
            # the released last step finishes the prefix with its likeliest next token, </s> or not
            end = max(table[seq[-1]].values()) if length == max_len - 3 else table[seq[-1]][2]
            score = sum(math.log(table[a][b]) for a, b in zip(seq, seq[1:])) + math.log(end)
            if score > best:
                best, best_seq = score, list(words)
    got = beam_search(step, 1, bos_id=0, eos_id=2, num_beams=16, max_len=max_len, length_penalty=0.0)
    assert got == [best_seq]


def test_beam_search_passes_origin_rows():
    seen = []
    table = {0: {3: 0.5, 4: 0.5}, 3: {3: 0.5, 2: 0.5}, 4: {4: 0.5, 2: 0.5}}
    inner = _markov(table, 5)

    def step(prefixes, origin):
        seen.append((prefixes.clone(), origin.clone()))
        return inner(prefixes, origin)

    beam_search(step, 2, bos_id=0, eos_id=2, num_beams=2, max_len=4)
    for (prev, _), (cur, origin) in zip(seen, seen[1:]):
        torch.testing.assert_close(cur[:, :-1], prev[origin])


def test_caption_generation_kv_cache_matches_full_recompute():
    """The cached decoder ([prev, <mask>] against the cache) picks the same tokens as recomputing everything."""
    from beit3core.factory import create_model
    from beit3core.tasks.captioning import generate

    torch.manual_seed(0)
    backbone = create_model("beit3_tiny_patch16_224", depth=2, embed_dim=32, num_heads=4, mlp_dim=64, img_size=32,
                            patch_size=8, vocab_size=40)
    model = CaptioningModel(backbone).eval()
    nn.init.normal_(model.mlm_head.weight, std=0.5)  # a peaked, non-trivial next-token distribution
    images = torch.randn(3, 3, 32, 32)
    kw = dict(bos_id=0, eos_id=2, mask_id=39, banned=(1,), num_beams=3, max_len=10)
    full = generate(model, images, use_cache=False, **kw)
    cached = generate(model, images, use_cache=True, **kw)
    assert cached == full
    assert all(0 < len(c) <= 7 for c in full)  # at most max_len - 3 words
    assert all(t not in (0, 1, 39) for c in full for t in c)
