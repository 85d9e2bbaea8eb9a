"""The pretraining views (C5): one jittered, flipped random resized crop seen by the model and by the visual
tokenizer (BEiT v2 `beit2/datasets.py` DataAugmentationForBEiT with RandomResizedCropAndInterpolationWithTwoPic),
and the on-device labelling of the tokenizer's view (`beit2/engine_for_pretraining.py`)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from beit3core.errors import UserError
from beit3core.pretrain.augment import (
    PretrainAugment,
    crop_box,
    label_on_device,
    precomputed_view,
)


def coordinate_image(width: int = 96, height: int = 80) -> Image.Image:
    """Red encodes x, green encodes y: a view's pixels say where in the image they came from."""
    x = np.linspace(0, 255, width)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height)[:, None].repeat(width, 1)
    return Image.fromarray(np.stack([x, y, np.full_like(x, 128)], -1).round().astype(np.uint8))


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng([seed, 7])


def test_same_generator_state_gives_the_same_views():
    aug, img = PretrainAugment(32, 16), coordinate_image()
    a, b = aug(img, rng(3)), aug(img, rng(3))
    assert a[0].dtype == torch.uint8 and a[0].shape == (3, 32, 32) and a[1].shape == (3, 16, 16)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    others = [aug(img, rng(s))[0] for s in range(4, 12)]
    assert sum(not torch.equal(a[0], o) for o in others) >= 7  # another state, another view


def _downsized(view: torch.Tensor, size: int) -> np.ndarray:
    img = Image.fromarray(view.permute(1, 2, 0).numpy())
    return np.asarray(img.resize((size, size), Image.BICUBIC), dtype=np.float64)


def test_the_tokenizer_view_is_the_same_crop_and_flip_as_the_model_view():
    """Both views cover the same region of the image: the coordinates their pixels encode agree, and a flip
    (red decreasing left to right) shows in both."""
    aug, img = PretrainAugment(48, 16, color_jitter=0.0), coordinate_image()
    flips = 0
    for seed in range(12):
        model_view, tok_view = aug(img, rng(seed))
        tok = tok_view.permute(1, 2, 0).numpy().astype(np.float64)
        same = np.abs(_downsized(model_view, 16) - tok)[..., :2].mean()
        other = np.abs(_downsized(aug(img, rng(seed + 100))[0], 16) - tok)[..., :2].mean()
        assert same < 3 and (other > 3 * same or other > 10), (seed, same, other)
        red_model = model_view[0].double()
        red_tok = tok_view[0].double()
        flipped = red_model[:, -1].mean() < red_model[:, 0].mean()
        assert flipped == bool(red_tok[:, -1].mean() < red_tok[:, 0].mean())
        flips += flipped
    assert 2 <= flips <= 10  # p = 0.5 per image


def test_the_whole_image_unflipped_unjittered_is_the_precomputed_view():
    """scale (1, 1) on a square image leaves only the whole image (timm's fallback); with no flip and no jitter
    the model view is `precomputed_view`, the resize the precomputed tokens were made from."""
    img = coordinate_image(64, 64)
    aug = PretrainAugment(32, 32, scale=(1.0, 1.0), hflip=False, color_jitter=0.0)
    model_view, tok_view = aug(img, rng(0))
    assert torch.equal(model_view, precomputed_view(img, 32)) and torch.equal(tok_view, model_view)


def test_views_are_beits_flip_then_crop():
    """Flipping the resized view of the mirrored box gives BEiT's order (flip the image, then crop and resize),
    drawn from the same generator states."""
    img = coordinate_image(90, 70)
    aug = PretrainAugment(40, 24, color_jitter=0.0)
    for seed in range(8):
        g = rng(seed)
        flip = g.random() < 0.5
        src = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else img
        left, top, w, h = crop_box(src.width, src.height, aug.scale, g)
        box = (left, top, left + w, top + h)
        want = [np.asarray(src.resize((s, s), Image.BICUBIC, box=box), dtype=np.int16) for s in (40, 24)]
        got = [v.permute(1, 2, 0).numpy().astype(np.int16) for v in aug(img, rng(seed))]
        assert all(np.abs(a - b).max() <= 1 for a, b in zip(want, got)), seed


def test_crop_box_follows_the_random_resized_crop_rule():
    """timm / beit2 transforms.get_params: area share in scale, aspect ratio in [3/4, 4/3], inside the image."""
    g = np.random.default_rng(0)
    for _ in range(200):
        left, top, w, h = crop_box(120, 90, (0.2, 1.0), g)
        assert 0 <= left and left + w <= 120 and 0 <= top and top + h <= 90
        assert 0.2 * 120 * 90 * 0.9 <= w * h <= 120 * 90
        assert 3 / 4 - 0.05 <= w / h <= 4 / 3 + 0.05 or (w, h) == (120, 90)
    # a very wide image never fits a crop in ratio after 10 tries: the centre crop at the widest ratio
    left, top, w, h = crop_box(400, 20, (0.9, 1.0), np.random.default_rng(1))
    assert (w, h) == (round(20 * 4 / 3), 20) and left == (400 - w) // 2 and math.isclose(top, 0)


def test_colour_jitter_changes_colours_only():
    img = coordinate_image(64, 64)
    plain = PretrainAugment(32, 32, scale=(1.0, 1.0), hflip=False, color_jitter=0.0)(img, rng(5))[0]
    jittered = PretrainAugment(32, 32, scale=(1.0, 1.0), hflip=False)(img, rng(5))[0]
    assert not torch.equal(plain, jittered)
    # brightness/contrast/saturation keep where things are: red still grows left to right
    assert jittered[0, :, -1].double().mean() > jittered[0, :, 0].double().mean()


def test_bad_settings_are_user_errors():
    with pytest.raises(UserError, match="crop scale"):
        PretrainAugment(32, 32, scale=(0.0, 1.0))
    with pytest.raises(UserError, match="color jitter"):
        PretrainAugment(32, 32, color_jitter=-1)


def test_label_on_device_replaces_the_tokenizer_view_with_its_codes():
    from beit3core.tokenizers import VQKD, VisualTokenizer
    from beit3core.tokenizers.vqkd import vqkd_tiny_config

    torch.manual_seed(0)
    vt = VisualTokenizer(VQKD(vqkd_tiny_config(img_size=16, patch_size=8, codebook_size=8, code_dim=4)))
    views = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8)
    batch = {"images": {"image": torch.zeros(3, 3, 32, 32, dtype=torch.uint8), "tokenizer_image": views.clone()},
             "texts": {"text_ids": torch.ones(3, 5, dtype=torch.long)}}
    out = label_on_device(batch, vt)
    assert out is batch and set(batch["images"]) == {"image", "image_labels"}
    assert torch.equal(batch["images"]["image_labels"], vt.encode(views)) and batch["images"]["image_labels"].shape == (3, 4)
    assert set(batch["texts"]) == {"text_ids"}


def test_put_chw_writes_what_image_to_uint8_makes():
    """The loader writes each view into its batch row band by band; the row is the (3, H, W) tensor the
    tokenize stage makes of the same image (both go through put_chw), which is the image's HWC array transposed."""
    from PIL import Image

    from beit3core.tokenizers.visual import image_to_uint8, put_chw

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
    img = Image.fromarray(pixels)
    rows = np.zeros((2, 3, 24, 24), dtype=np.uint8)
    put_chw(rows[1], img)
    assert np.array_equal(rows[1], pixels.transpose(2, 0, 1))
    assert np.array_equal(rows[1], image_to_uint8(img, 24).numpy())
    assert not rows[0].any()
