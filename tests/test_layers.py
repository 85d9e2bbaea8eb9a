"""Unit tests of the single-concept layers: routing, attention paths, stochastic depth, position resampling."""

import importlib

import pytest
import torch
from torch import nn

from beit3core.layers import (
    Attention, DropPath, Mlp, Multiway, PatchEmbed, Shared, drop_path_rates, resample_abs_pos_embed, set_fused_attn,
    use_fused_attn,
)
from beit3core.layers.attention import reference_attention


@pytest.mark.parametrize("split", [-1, 0, 3, 7])
def test_multiway_route_equals_running_each_expert_on_its_part(split):
    torch.manual_seed(0)
    mw = Multiway(lambda: nn.Linear(8, 5))
    x = torch.randn(2, 7, 8)
    got = mw.route(x, split)
    if split in (-1, 7):
        want = mw.vision(x)
    elif split == 0:
        want = mw.text(x)
    else:
        want = torch.cat([mw.vision(x[:, :split]), mw.text(x[:, split:])], dim=1)
    torch.testing.assert_close(got, want)
    assert not torch.allclose(mw.vision.weight, mw.text.weight)  # two independent experts
    # Parts form: the same routing with the split carried by the data.
    v, t = mw(x[:, :3], x[:, 3:])
    torch.testing.assert_close(torch.cat([v, t], 1), mw.route(x, 3))
    assert mw(None, x)[0] is None and mw(x, None)[1] is None


def test_shared_uses_one_module_for_both_parts():
    lin = nn.Linear(4, 4)
    sh = Shared(lin)
    x = torch.randn(1, 5, 4)
    v, t = sh(x[:, :2], x[:, 2:])
    torch.testing.assert_close(torch.cat([v, t], 1), lin(x))
    assert sum(p.numel() for p in sh.parameters()) == 20


@pytest.mark.parametrize("multiway", [True, False])
def test_attention_fused_equals_reference_with_masks(multiway):
    torch.manual_seed(0)
    previous = use_fused_attn()
    try:
        set_fused_attn(True)
        fused = Attention(32, 4, multiway=multiway)
        set_fused_attn(False)
        plain = Attention(32, 4, multiway=multiway)
    finally:
        set_fused_attn(previous)
    assert fused.fused_attn and not plain.fused_attn
    plain.load_state_dict(fused.state_dict())
    v, t = torch.randn(2, 5, 32), torch.randn(2, 4, 32)
    pad = torch.tensor([[False] * 9, [False] * 7 + [True] * 2])
    causal = torch.ones(9, 9, dtype=torch.bool).tril()
    for mask in (None, ~pad[:, None, None, :], causal[None, None] & ~pad[:, None, None, :]):
        a = fused(v, t, mask)
        b = plain(v, t, mask)
        torch.testing.assert_close(a[0], b[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(a[1], b[1], atol=1e-5, rtol=1e-5)
        assert a[2][0].shape == (2, 4, 9, 8)  # keys of the whole sequence, for a kv cache


def test_reference_attention_is_softmax_of_scaled_scores():
    q, k, v = torch.randn(3, 1, 2, 4, 8).unbind(0)
    mask = torch.tensor([True, True, False, True])
    scores = q @ k.transpose(-1, -2) / 8**0.5
    scores[..., 2] = float("-inf")
    torch.testing.assert_close(reference_attention(q, k, v, mask), scores.softmax(-1) @ v)


def test_fused_attn_env_switch(monkeypatch):
    import beit3core.layers.config as cfg

    monkeypatch.setenv("BEIT3_FUSED_ATTN", "0")
    importlib.reload(cfg)
    try:
        assert cfg.use_fused_attn() is False
    finally:
        monkeypatch.delenv("BEIT3_FUSED_ATTN")
        importlib.reload(cfg)
    assert cfg.use_fused_attn() is True


def test_drop_path_rates_and_shared_per_sample_mask():
    assert drop_path_rates(0.1, 3) == pytest.approx([0.0, 0.05, 0.1])
    assert drop_path_rates(0.3, 1) == [0.0]
    dp = DropPath(0.5).train()
    torch.manual_seed(1)
    a, b = torch.ones(64, 3, 2), torch.ones(64, 5, 2)
    da, db = dp(a, b)
    kept_a = da[:, 0, 0] != 0
    assert torch.equal(kept_a, db[:, 0, 0] != 0)  # one draw per sample for both parts
    assert 0 < kept_a.sum() < 64
    assert set(da.unique().tolist()) <= {0.0, 2.0}
    dp.eval()
    assert dp(a, None)[0] is a and dp(a, None)[1] is None


def test_mlp_shapes_and_gelu_erf():
    mlp = Mlp(4, 8)
    x = torch.randn(2, 3, 4)
    want = mlp.fc2(mlp.norm(0.5 * mlp.fc1(x) * (1 + torch.erf(mlp.fc1(x) / 2**0.5))))
    torch.testing.assert_close(mlp(x), want)


def test_patch_embed_row_major_and_size_check():
    pe = PatchEmbed(16, 8, 3, 6)
    img = torch.randn(1, 3, 16, 16)
    out = pe(img)
    assert out.shape == (1, 4, 6)
    # patch 1 is the top-right 8x8 block (row-major order)
    top_right = pe.proj(img[:, :, :8, 8:]).flatten(1)
    torch.testing.assert_close(out[0, 1], top_right[0])
    from beit3core.errors import UserError

    with pytest.raises(UserError, match="img_size"):
        pe(torch.randn(1, 3, 32, 32))


def test_resample_pos_embed_keeps_prefix_and_is_pure():
    torch.manual_seed(0)
    table = torch.randn(3 + 4 * 4, 5)
    before = table.clone()
    out = resample_abs_pos_embed(table, (6, 6), num_prefix=3)
    assert out.shape == (3 + 36, 5)
    torch.testing.assert_close(out[:3], table[:3])
    assert torch.equal(table, before)
    torch.testing.assert_close(resample_abs_pos_embed(table, (4, 4), num_prefix=3), table)
    # A constant grid stays constant under bicubic resampling.
    flat = torch.cat([table[:3], torch.ones(16, 5)])
    torch.testing.assert_close(resample_abs_pos_embed(flat, (7, 7), num_prefix=3)[3:], torch.ones(49, 5))
    with pytest.raises(ValueError, match="square"):
        resample_abs_pos_embed(torch.randn(3 + 5, 2), (2, 2), num_prefix=3)
