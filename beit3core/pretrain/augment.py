"""The pretraining image views: one augmented crop seen twice (by the model and by the visual tokenizer).

BEiT v2 (microsoft/unilm `beit2/datasets.py` DataAugmentationForBEiT, "original beit data augmentation")
computes its visual-token targets on the fly from a second view of the SAME crop the model sees:

    ColorJitter(0.4, 0.4, 0.4) -> RandomHorizontalFlip(0.5) ->
    RandomResizedCropAndInterpolationWithTwoPic(size, second_size, scale=(min_crop_scale, 1.0), ratio=(3/4, 4/3))

with `--min_crop_scale 0.2`, `--second_interpolation bicubic` in `beit2/PRETRAINING.md` (the code default is
0.08, BEiT v1's; `beit2/transforms.py` draws the crop as timm does: 10 tries of a log-uniform aspect ratio,
then a centre crop). BEiT-3 says its pretraining augmentation is "the same as BEiT". `PretrainAugment` does
that with a numpy Generator, so a view is a pure function of (image, rng state) and does not depend on which
process draws it. One difference, for speed: the colour jitter is applied to the resized views, not to the
whole image before the crop (the same for brightness and saturation, rounding and clipping aside; contrast
blends towards the crop's mean grey instead of the image's), and equal view sizes share one resize. `precomputed_view` is the plain resize the precomputed visual tokens were made from.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageEnhance

from beit3core.errors import UserError
from beit3core.tokenizers.visual import image_to_uint8, resized_rgb

RATIO = (3.0 / 4.0, 4.0 / 3.0)  # timm / BEiT RandomResizedCrop aspect-ratio range
MIN_CROP_SCALE = 0.2  # beit2/PRETRAINING.md --min_crop_scale 0.2
COLOR_JITTER = 0.4  # beit2 run_beitv2_pretraining.py --color_jitter 0.4 (brightness, contrast, saturation; no hue)


def precomputed_view(img: Image.Image, img_size: int) -> torch.Tensor:
    """The un-augmented view (bicubic resize to img_size, aspect ratio not kept): what `tokenize visual` encodes."""
    return image_to_uint8(img, img_size)


def precomputed_pil(img: Image.Image, img_size: int) -> Image.Image:
    """`precomputed_view` before its conversion to a tensor: the RGB PIL image."""
    return resized_rgb(img, img_size)


def crop_box(width: int, height: int, scale: tuple[float, float], rng: np.random.Generator,
             ratio: tuple[float, float] = RATIO) -> tuple[int, int, int, int]:
    """(left, top, w, h) of a random resized crop: timm's get_params (10 tries, then the centre crop)."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = rng.uniform(*scale) * area
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        w, h = round(height * max(ratio)), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def jitter_params(strength: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """torchvision ColorJitter(s, s, s): brightness, contrast and saturation factors from [1 - s, 1 + s], applied in
    a random order: (order, factors)."""
    return rng.permutation(3), rng.uniform(max(0.0, 1 - strength), 1 + strength, size=3)


_ENHANCE = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)  # torchvision's PIL path


def color_jitter(img: Image.Image, order: np.ndarray, factors: np.ndarray) -> Image.Image:
    for k in order:
        img = _ENHANCE[k](img).enhance(float(factors[k]))
    return img


class PretrainAugment:
    """`(model view uint8 (3, S, S), tokenizer view uint8 (3, S_t, S_t))` of one colour-jittered, flipped random
    resized crop, resized (bicubic) to each size. Deterministic given the Generator's state."""

    def __init__(self, img_size: int, tokenizer_img_size: int, *, scale: tuple[float, float] = (MIN_CROP_SCALE, 1.0),
                 hflip: bool = True, color_jitter: float = COLOR_JITTER):
        if img_size < 1 or tokenizer_img_size < 1:
            raise UserError(f"image sizes must be >= 1, got {img_size} and {tokenizer_img_size}")
        if not 0 < scale[0] <= scale[1] <= 1:
            raise UserError(f"crop scale {scale}: expected 0 < min <= max <= 1")
        if color_jitter < 0:
            raise UserError(f"color jitter {color_jitter} must be >= 0")
        self.img_size, self.tokenizer_img_size = img_size, tokenizer_img_size
        self.scale, self.hflip, self.color_jitter = (float(scale[0]), float(scale[1])), hflip, color_jitter

    def __call__(self, img: Image.Image, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        model_view, tokenizer_view = self.views(img, rng)  # already at their sizes: no resize, one copy each
        return image_to_uint8(model_view, self.img_size), image_to_uint8(tokenizer_view, self.tokenizer_img_size)

    def views(self, img: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, Image.Image]:
        """The two views as RGB PIL images (the model's, the tokenizer's: one object when the sizes are equal)."""
        img = img.convert("RGB") if img.mode != "RGB" else img
        # the draws come in BEiT's order (jitter, flip, crop), so the rng state alone fixes the views
        jitter = jitter_params(self.color_jitter, rng) if self.color_jitter > 0 else None
        flip = self.hflip and rng.random() < 0.5
        left, top, w, h = crop_box(img.width, img.height, self.scale, rng)  # in the (possibly flipped) image
        if flip:  # the same region of the unflipped image, mirrored; the views are flipped after the resize
            left = img.width - left - w
        box = (left, top, left + w, top + h)
        views = {size: img.resize((size, size), Image.BICUBIC, box=box)
                 for size in {self.img_size, self.tokenizer_img_size}}
        for size, view in views.items():
            # jitter after the crop: the same pixels for brightness and saturation, ~1/4 of the work at
            # BEiT sizes; contrast pulls towards the crop's mean grey rather than the whole image's
            view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else view
            views[size] = color_jitter(view, *jitter) if jitter else view
        return views[self.img_size], views[self.tokenizer_img_size]

    def __repr__(self) -> str:
        return (f"PretrainAugment(img_size={self.img_size}, tokenizer_img_size={self.tokenizer_img_size}, "
                f"scale={self.scale}, hflip={self.hflip}, color_jitter={self.color_jitter})")


@torch.no_grad()
def label_on_device(batch: dict[str, dict[str, torch.Tensor]], tokenizer) -> dict[str, dict[str, torch.Tensor]]:
    """On-the-fly visual targets: every stream batch holding `tokenizer_image` (uint8 (B, 3, S_t, S_t), already on
    the training device) gets `image_labels` = the VQ-KD ids of that view (eval mode, no grad), as BEiT v2's
    engine_for_pretraining does with `vqkd.get_codebook_indices(images)`; the view is dropped. In place."""
    for part in batch.values():
        if isinstance(part, dict) and "tokenizer_image" in part:
            part["image_labels"] = tokenizer.encode(part.pop("tokenizer_image"))
    return batch
