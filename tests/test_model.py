"""The Multiway Transformer: config, registry, the five uses of the paper, cache, counts."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from beit3core.errors import UserError
from beit3core.layers import set_fused_attn, use_fused_attn
from beit3core.factory import create_model
from beit3core.models import Beit3Config, Beit3KVCache, list_models
from beit3core.models.counting import count_parameters

SMALL = dict(depth=2, embed_dim=64, num_heads=4, mlp_dim=128, img_size=32, patch_size=8, vocab_size=100)


def small(**kw):
    torch.manual_seed(0)
    model = create_model("beit3_tiny_patch16_224", **{**SMALL, **kw}).eval()
    with torch.no_grad():  # non-trivial LayerNorms, so a mixed-up expert would show
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def inputs(batch=2, length=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(batch, 3, 32, 32, generator=g)
    ids = torch.randint(4, 100, (batch, length), generator=g)
    pad = torch.zeros(batch, length, dtype=torch.bool)
    pad[-1, length - 2:] = True
    return image, ids, pad


# -- config and registry ----------------------------------------------------------------------------------
def test_config_is_frozen_and_validated():
    cfg = Beit3Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.depth = 3
    with pytest.raises(TypeError, match="unknown field.*depht"):
        Beit3Config.from_dict({"depht": 3})
    with pytest.raises(ValueError, match="divisible"):
        Beit3Config(embed_dim=100, num_heads=3)
    with pytest.raises(ValueError, match="layout"):
        Beit3Config(layout="nope")
    with pytest.raises(ValueError, match="num_vl_layers"):
        Beit3Config(num_vl_layers=2)  # unilm has no VL experts
    with pytest.raises(ValueError, match="img_size"):
        Beit3Config(img_size=100, patch_size=16)
    with pytest.raises(ValueError, match="expected int"):
        Beit3Config(depth=2.0)
    assert cfg.replace(depth=3).depth == 3 and cfg.depth == 12


def test_registry_and_overrides():
    names = list_models()
    for name in ("beit3_tiny_patch16_224", "beit3_tiny_patch8_64", "beit3_base_patch16_224",
                 "beit3_large_patch16_224", "beit3_giant_patch14_224"):
        assert name in names
    assert list_models("beit3_tiny*") == ["beit3_tiny_patch16_224", "beit3_tiny_patch8_64"]
    with pytest.raises(UserError, match="unknown"):
        create_model("beit3_huge")
    with pytest.raises(TypeError, match="unknown field"):
        create_model("beit3_tiny_patch8_64", depht=1)
    m = create_model("beit3_tiny_patch8_64", depth=1, drop_path_rate=0.1)
    c = m.config
    assert (c.depth, c.embed_dim, c.num_heads, c.mlp_dim, c.img_size, c.patch_size, c.layout) == (1, 192, 3, 768, 64, 8, "unilm")
    assert m.num_patches == 64 and m.grid_size == (8, 8)
    assert c.vocab_size == 64010 and c.normalize_output
    paper = create_model("beit3_tiny_patch8_64", layout="paper", device="meta").config
    assert paper.num_vl_layers == 3 and create_model("beit3_tiny_patch8_64", layout="paper", num_vl_layers=0,
                                                     device="meta").config.num_vl_layers == 0
    assert create_model("beit3_giant_patch14_224", layout="unilm", device="meta").config.num_vl_layers == 0
    giant = create_model("beit3_giant_patch14_224", device="meta").config
    assert (giant.depth, giant.embed_dim, giant.mlp_dim, giant.num_heads, giant.patch_size, giant.layout,
            giant.num_vl_layers) == (40, 1408, 6144, 16, 14, "paper", 3)


def test_unilm_layout_state_dict_shapes():
    m = small()
    sd = m.state_dict()
    assert sd["vision_pos_embed"].shape == (16 + 3, 64)  # N + 1 + 2 offset rows
    assert sd["text_pos_embed"].shape == (1024, 64)
    assert sd["blocks.0.attn.qkv.vision.weight"].shape == (192, 64)
    assert "blocks.0.attn.qkv.text.weight" in sd and "blocks.1.mlp.text.norm.weight" in sd
    assert "norm.vision.weight" in sd and not any("vl_" in k for k in sd)
    assert not any("norm.vision" in k for k in create_model("beit3_tiny_patch8_64", normalize_output=False).state_dict()
                   if k.startswith("norm."))


# -- the five uses --------------------------------------------------------------------------------------------
def test_vision_encoder():
    m = small()
    image, _, _ = inputs()
    out = m(image=image)
    assert out.hidden.shape == (2, 17, 64) and out.split == 17 and out.text_cls is None
    torch.testing.assert_close(out.vision_cls, out.hidden[:, 0])
    # Only vision experts are used: changing a text expert changes nothing.
    with torch.no_grad():
        m.blocks[0].mlp.text.fc1.weight.add_(1.0)
    torch.testing.assert_close(m(image=image).hidden, out.hidden)


def test_vision_encoder_with_image_mask_uses_mask_token():
    m = small()
    with torch.no_grad():
        m.mask_token.normal_()
    image, _, _ = inputs()
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[:, :5] = True
    masked = m(image=image, image_mask=mask).hidden
    assert not torch.allclose(masked, m(image=image).hidden)
    # Masked patches carry no image information: changing those pixels (patch 0 = top-left 8x8) changes nothing.
    other = image.clone()
    other[:, :, :8, :8] = 0
    torch.testing.assert_close(m(image=other, image_mask=mask).hidden, masked)
    with pytest.raises(UserError, match="image_mask"):
        m(image=image, image_mask=mask[:, :4])


def test_language_encoder_padding():
    m = small()
    _, ids, pad = inputs()
    out = m(text_ids=ids, text_padding_mask=pad)
    assert out.hidden.shape == (2, 6, 64) and out.split == 0 and out.vision_cls is None
    torch.testing.assert_close(out.text_cls, out.hidden[:, 0])
    # Padded tokens are invisible: changing their ids leaves the real tokens unchanged.
    ids2 = ids.clone()
    ids2[-1, -2:] = 7
    out2 = m(text_ids=ids2, text_padding_mask=pad)
    torch.testing.assert_close(out2.hidden[-1, :-2], out.hidden[-1, :-2])
    # And equals running the unpadded sequence alone.
    alone = m(text_ids=ids[-1:, :-2]).hidden
    torch.testing.assert_close(alone[0], out.hidden[-1, :-2], atol=1e-5, rtol=1e-5)


def test_fusion_encoder():
    m = small()
    image, ids, pad = inputs()
    out = m(image=image, text_ids=ids, text_padding_mask=pad)
    assert out.hidden.shape == (2, 23, 64) and out.split == 17
    torch.testing.assert_close(out.vision_cls, out.hidden[:, 0])
    torch.testing.assert_close(out.text_cls, out.hidden[:, 17])
    # Deep fusion: the text changes the image tokens and vice versa.
    assert not torch.allclose(out.hidden[:, :17], m(image=image).hidden)
    assert not torch.allclose(out.hidden[:, 17:], m(text_ids=ids, text_padding_mask=pad).hidden)


def test_dual_encoder_retrieval():
    m = small()
    image, ids, pad = inputs(batch=3)
    img = m(image=image).vision_cls
    txt = m(text_ids=ids, text_padding_mask=pad).text_cls
    vision_head, language_head = torch.nn.Linear(64, 32, bias=False), torch.nn.Linear(64, 32, bias=False)
    sim = F.normalize(vision_head(img), dim=-1) @ F.normalize(language_head(txt), dim=-1).T
    assert sim.shape == (3, 3) and sim.abs().max() <= 1 + 1e-6
    # Each pass is independent of the batch's other modality: the image pass is a function of the image alone.
    torch.testing.assert_close(m(image=image[:1]).vision_cls, img[:1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layout", ["unilm", "paper"])
def test_sequence_to_sequence(layout):
    m = small(layout=layout, **({"num_vl_layers": 1} if layout == "paper" else {}))
    image, ids, _ = inputs()
    out = m(image=image, text_ids=ids, text_causal=True)
    ids2 = ids.clone()
    ids2[:, 3:] = 5
    out2 = m(image=image, text_ids=ids2, text_causal=True)
    # Text token j sees the image and text tokens <= j only; image tokens never see the text.
    torch.testing.assert_close(out2.hidden[:, :17 + 3], out.hidden[:, :17 + 3])
    assert not torch.allclose(out2.hidden[:, 17 + 3:], out.hidden[:, 17 + 3:])
    bidirectional = m(image=image, text_ids=ids).hidden
    assert not torch.allclose(bidirectional[:, 17:20], out.hidden[:, 17:20])
    if layout == "unilm":  # image tokens see only image tokens through the vision experts
        torch.testing.assert_close(out.hidden[:, :17], m(image=image).hidden, atol=1e-5, rtol=1e-5)


def test_paper_layout_routes_fused_input_through_vl_expert():
    m = small(layout="paper", num_vl_layers=1)
    assert m.blocks[0].vl_mlp is None and m.blocks[1].vl_mlp is not None
    assert "blocks.0.attn.qkv.shared.weight" in m.state_dict()
    image, ids, pad = inputs()

    def grads(**kw):
        m.zero_grad()
        m(**kw).hidden.sum().backward()
        return {n: p.grad is not None and p.grad.abs().sum() > 0 for n, p in m.named_parameters()}

    fused = grads(image=image, text_ids=ids, text_padding_mask=pad)
    assert fused["blocks.1.vl_mlp.fc1.weight"] and not fused["blocks.1.mlp.vision.fc1.weight"]
    assert not fused["blocks.1.mlp.text.fc1.weight"] and fused["blocks.0.mlp.text.fc1.weight"]
    vision = grads(image=image)
    assert not vision["blocks.1.vl_mlp.fc1.weight"] and vision["blocks.1.mlp.vision.fc1.weight"]
    text = grads(text_ids=ids)
    assert not text["blocks.1.vl_mlp.fc1.weight"] and text["blocks.1.mlp.text.fc1.weight"]


# -- numerics and training options -----------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["unilm", "paper"])
def test_sdpa_equals_reference_path(layout):
    kw = {"layout": layout, **({"num_vl_layers": 1} if layout == "paper" else {})}
    fused = small(**kw)
    previous = use_fused_attn()
    set_fused_attn(False)
    try:
        plain = small(**kw)
    finally:
        set_fused_attn(previous)
    assert not plain.blocks[0].attn.fused_attn and fused.blocks[0].attn.fused_attn
    plain.load_state_dict(fused.state_dict())
    image, ids, pad = inputs()
    for kwargs in (dict(image=image), dict(text_ids=ids, text_padding_mask=pad),
                   dict(image=image, text_ids=ids, text_padding_mask=pad, text_causal=True)):
        torch.testing.assert_close(fused(**kwargs).hidden, plain(**kwargs).hidden, atol=1e-5, rtol=1e-5)


def test_checkpoint_activations_same_outputs_and_grads():
    image, ids, pad = inputs()
    results = []
    for ckpt in (False, True):
        m = small(checkpoint_activations=ckpt).train()
        out = m(image=image, text_ids=ids, text_padding_mask=pad).hidden
        out.pow(2).mean().backward()
        results.append((out.detach(), m.blocks[0].attn.qkv.text.weight.grad.clone()))
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1])


def test_drop_path_is_random_in_training_only():
    m = small(drop_path_rate=0.5)
    assert [b.drop_path.p for b in m.blocks] == [0.0, 0.5]
    image, _, _ = inputs(batch=8)
    ref = m(image=image).hidden
    torch.testing.assert_close(m(image=image).hidden, ref)
    m.train()
    torch.manual_seed(3)
    a = m(image=image).hidden
    torch.manual_seed(4)
    b = m(image=image).hidden
    assert not torch.allclose(a, b)


def test_init_follows_released_wrapper():
    m = create_model("beit3_tiny_patch16_224", **SMALL)
    w = m.blocks[0].attn.qkv.vision.weight
    assert w.abs().max() <= 0.02 + 1e-7 and 0.008 < w.std() < 0.014  # trunc normal(0.02) at ±1 std
    assert torch.all(m.blocks[0].attn.qkv.vision.bias == 0)
    assert torch.all(m.blocks[0].norm1.text.weight == 1)
    assert abs(m.text_embed.weight.std().item() - 64**-0.5) < 0.02
    assert torch.all(m.cls_token == 0) and torch.all(m.mask_token == 0)


def test_input_errors():
    m = small()
    with pytest.raises(UserError, match="image"):
        m()
    with pytest.raises(UserError, match="img_size"):
        m(image=torch.randn(1, 3, 64, 64))
    with pytest.raises(UserError, match="text positions"):
        m(text_ids=torch.zeros(1, 1023, dtype=torch.long))


# -- incremental decoding ---------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["unilm", "paper"])
def test_kv_cache_decoding_equals_full_causal_forward(layout):
    m = small(layout=layout, **({"num_vl_layers": 1} if layout == "paper" else {}))
    image, ids, _ = inputs(length=7)
    full = m(image=image, text_ids=ids, text_causal=True).hidden
    out = m(image=image, text_ids=ids[:, :3], text_causal=True, kv_cache=Beit3KVCache())
    assert out.kv_cache.length == 17 + 3 and out.kv_cache.num_vision == 17
    pieces = [out.hidden]
    cache = out.kv_cache
    for j in range(3, 7):  # one token at a time, text-only, positions continue after the cache
        step = m(text_ids=ids[:, j:j + 1], text_causal=True, kv_cache=cache)
        cache = step.kv_cache
        pieces.append(step.hidden)
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=1e-5, rtol=1e-5)
    # A two-token step with explicit positions, then crop the last slot (captioning's <mask> slot).
    step = m(text_ids=ids[:, 3:5], text_positions=torch.arange(3, 5), text_causal=True, kv_cache=out.kv_cache)
    torch.testing.assert_close(step.hidden, full[:, 20:22], atol=1e-5, rtol=1e-5)
    assert step.kv_cache.crop(21).length == 21
    # Beam reordering selects along the batch.
    picked = out.kv_cache.select(torch.tensor([1, 1, 0]))
    assert picked.layers[0][0].shape[0] == 3
    torch.testing.assert_close(picked.layers[0][0][0], out.kv_cache.layers[0][0][1])


def test_kv_cache_with_padded_prefix():
    m = small()
    image, ids, pad = inputs(length=5)
    first = m(image=image, text_ids=ids[:, :3], text_padding_mask=torch.tensor([[0, 0, 0], [0, 0, 1]]).bool(),
              text_causal=True, kv_cache=Beit3KVCache())
    step = m(text_ids=ids[:, 3:4], text_causal=True, kv_cache=first.kv_cache)
    assert step.kv_cache.padding.shape == (2, 17 + 4) and bool(step.kv_cache.padding[1, 19])
    assert torch.isfinite(step.hidden).all()
    with pytest.raises(UserError, match="cannot follow"):
        m(image=image, kv_cache=first.kv_cache)


# -- parameter counts -------------------------------------------------------------------------------------
def test_giant_counts_match_paper_without_allocating():
    counts = count_parameters("beit3_giant_patch14_224")
    paper = {"vision_ffn": 692e6, "language_ffn": 692e6, "vl_ffn": 52e6, "attention": 317e6}
    for part, want in paper.items():
        assert abs(counts[part] - want) / want < 0.01, (part, counts[part])
    assert 1.8e9 < counts["total"] < 1.95e9
    assert counts["total"] == sum(v for k, v in counts.items() if k != "total")
    meta = create_model("beit3_giant_patch14_224", device="meta")
    assert all(p.is_meta for p in meta.parameters())


def test_released_sizes_count_exactly():
    # microsoft/unilm README / reference: backbone + final LN at 224.
    assert count_parameters("beit3_base_patch16_224")["total"] == 220_987_392
    assert count_parameters("beit3_large_patch16_224")["total"] == 672_702_464
    small_counts = count_parameters(small())
    assert small_counts["vision_ffn"] == small_counts["language_ffn"] == 2 * (64 * 128 * 2 + 128 + 64)
    assert small_counts["vl_ffn"] == 0 and small_counts["other"] == 0


def test_models_cli_lists_counts(capsys):
    from beit3core.models.cli import main

    assert main(["beit3_giant*"]) == 0
    out = capsys.readouterr().out
    assert "beit3_giant_patch14_224" in out and "692.36M" in out and "51.93M" in out
    with pytest.raises(UserError):
        main(["nothing*"])


def test_all_padding_row_stays_finite():
    m = small()
    image, ids, _ = inputs()
    pad = torch.zeros_like(ids, dtype=torch.bool)
    pad[1] = True  # an empty caption must not turn into NaN (it would spread through the batch's gradients)
    for kw in (dict(text_ids=ids), dict(image=image, text_ids=ids, text_causal=True)):
        out = m(**kw, text_padding_mask=pad)
        assert torch.isfinite(out.hidden).all()
