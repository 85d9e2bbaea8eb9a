"""Numerical parity with the reference: torchscale 0.3.0 BEiT3 (the backbone of microsoft/unilm beit3).

A randomly initialised torchscale model, wrapped like the unilm task models (keys `beit3.*`), is converted
with `convert_unilm_state_dict` and loaded; `encoder_out` must match `out.hidden` within 1e-5 (fp32).
"""

import pytest
import torch
from torch import nn

from beit3core.checkpoint import convert_unilm_state_dict, fit_state_dict, load_pretrained
from beit3core.factory import create_model

torchscale = pytest.importorskip("torchscale")
pytest.importorskip("fairscale")
from torchscale.architecture.config import EncoderConfig  # noqa: E402
from torchscale.model.BEiT3 import BEiT3  # noqa: E402

TOL = 1e-5


class UnilmWrapper(nn.Module):
    """The unilm task models hold the backbone as `self.beit3`."""

    def __init__(self, **cfg):
        super().__init__()
        self.beit3 = BEiT3(EncoderConfig(multiway=True, layernorm_embedding=False, normalize_output=True,
                                         no_output_layer=True, **cfg))


def reference(depth, dim, heads, img_size, patch_size=16, vocab=64010, seed=0):
    torch.manual_seed(seed)
    ref = UnilmWrapper(vocab_size=vocab, img_size=img_size, patch_size=patch_size, encoder_embed_dim=dim,
                       encoder_attention_heads=heads, encoder_ffn_embed_dim=4 * dim, encoder_layers=depth).eval()
    with torch.no_grad():  # perturb every tensor so LayerNorms/biases are not the trivial 1/0 and experts differ
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return ref


def converted(ref, tmp_path, **fields):
    """Through a real file (torch.save -> load_pretrained) when tmp_path is given, else in memory."""
    model = create_model("beit3_base_patch16_224", **fields).eval()
    if tmp_path is None:
        fitted, report = fit_state_dict(model, convert_unilm_state_dict({"model": ref.state_dict()}))
        model.load_state_dict(fitted, strict=True)
    else:
        path = tmp_path / "ref.pth"
        torch.save({"model": ref.state_dict()}, path)
        report = load_pretrained(model, str(path), strict=False)
    assert report.missing == [] and report.unexpected == [] and report.mismatched == []
    return model, report


def batch(img_size, batch=2, length=9, vocab=64010, seed=1):
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(batch, 3, img_size, img_size, generator=g)
    ids = torch.randint(0, vocab, (batch, length), generator=g)
    pad = torch.zeros(batch, length, dtype=torch.bool)
    pad[0, length - 3:] = True
    return image, ids, pad


def assert_parity(ref, model, image, ids, pad):
    cases = [
        (dict(visual_tokens=image), dict(image=image)),
        (dict(textual_tokens=ids, text_padding_position=pad), dict(text_ids=ids, text_padding_mask=pad)),
        (dict(visual_tokens=image, textual_tokens=ids, text_padding_position=pad),
         dict(image=image, text_ids=ids, text_padding_mask=pad)),
    ]
    with torch.no_grad():
        for ref_kw, kw in cases:
            want = ref.beit3(**ref_kw)
            got = model(**kw)
            assert got.hidden.shape == want["encoder_out"].shape
            assert got.split == max(want["multiway_split_position"], 0) or (got.split == got.hidden.shape[1]
                                                                          and want["multiway_split_position"] == -1)
            err = (got.hidden - want["encoder_out"]).abs().max().item()
            assert err < TOL, (list(kw), err)


SMALL = dict(depth=2, embed_dim=64, num_heads=4, mlp_dim=256, img_size=32, patch_size=8, vocab_size=1000)


def test_parity_small(tmp_path):
    ref = reference(2, 64, 4, 32, patch_size=8, vocab=1000)
    model, _ = converted(ref, tmp_path, **SMALL)
    assert_parity(ref, model, *batch(32, vocab=1000))


def test_parity_seq2seq_mask(tmp_path):
    """The captioning mask (unilm BEiT3ForCaptioning) equals text_causal=True."""
    ref = reference(2, 64, 4, 32, patch_size=8, vocab=1000)
    model, _ = converted(ref, tmp_path, **SMALL)
    image, ids, _ = batch(32, vocab=1000)
    image_len, text_len = 17, ids.shape[1]
    allowed = torch.zeros(image_len + text_len, image_len + text_len, dtype=torch.long)
    allowed[image_len:, image_len:] = torch.tril(torch.ones(text_len, text_len, dtype=torch.long))
    allowed[image_len:, :image_len] = 1
    allowed[:image_len, :image_len] = 1
    with torch.no_grad():
        want = ref.beit3(visual_tokens=image, textual_tokens=ids, attn_mask=1 - allowed)["encoder_out"]
        got = model(image=image, text_ids=ids, text_causal=True).hidden
    assert (got - want).abs().max().item() < TOL


def test_parity_after_resize(tmp_path):
    """A checkpoint made at 32 px loaded at 48 px equals torchscale with the released interpolation."""
    from beit3core.layers.pos_embed import resample_abs_pos_embed

    ref = reference(2, 64, 4, 32, patch_size=8, vocab=1000)
    model, report = converted(ref, tmp_path, **{**SMALL, "img_size": 48})
    assert report.resized == ["vision_pos_embed"]
    ref48 = reference(2, 64, 4, 48, patch_size=8, vocab=1000, seed=5)
    sd = ref.state_dict()
    key = "beit3.encoder.embed_positions.A.weight"
    # The released loader (utils.load_model_and_may_interpolate): keep 3 rows, bicubic on the 4x4 grid -> 6x6.
    rows, grid = sd[key][:3], sd[key][3:].reshape(1, 4, 4, 64).permute(0, 3, 1, 2)
    grid = torch.nn.functional.interpolate(grid, size=(6, 6), mode="bicubic", align_corners=False)
    sd[key] = torch.cat([rows, grid.permute(0, 2, 3, 1).flatten(0, 2)])
    torch.testing.assert_close(sd[key], resample_abs_pos_embed(ref.state_dict()[key], (6, 6), num_prefix=3))
    ref48.load_state_dict(sd)
    assert_parity(ref48, model, *batch(48, vocab=1000))


@pytest.mark.slow
def test_parity_base():
    ref = reference(12, 768, 12, 224)
    model, _ = converted(ref, None)
    assert_parity(ref, model, *batch(224, batch=1, length=12))
