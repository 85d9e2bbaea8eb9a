"""RandomAugment(2, 7): the released vision-language training augmentation (`--randaug`: VQA, captioning).

microsoft/unilm `beit3/randaug.py` `RandomAugment(2, 7, isPIL=True, augs=[...])` as `beit3/datasets.py`
`build_transform` calls it after the random resized crop and the flip: two operations drawn with replacement from
the ten below, each applied with probability 0.5, all at level 7 of 10:
- Brightness, Sharpness: factor 7/10 * 1.8 + 0.1 = 1.36;
- ShearX/Y: 7/10 * 0.3 = 0.21, TranslateX/Y: 7/10 * 10 = 7 pixels, Rotate: 7/10 * 30 = 21 degrees, each with a
  random sign and grey (128, 128, 128) fill, bilinear;
- Identity, AutoContrast, Equalize.
The release implements them with OpenCV on arrays ("same output as PIL"); here they are PIL's own operations
with the same geometry (the inverse of cv2.warpAffine's forward matrix), so border pixels and rounding may
differ by one grey level. Random draws use torch's generator, like the torchvision transforms around it.
"""

from __future__ import annotations

import torch
from PIL import Image, ImageEnhance, ImageOps

OPS = ("Identity", "AutoContrast", "Equalize", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateX",
       "TranslateY", "Rotate")
MAX_LEVEL = 10
FILL = (128, 128, 128)
_BILINEAR = Image.Resampling.BILINEAR


def _signed(value: float, negative: bool) -> float:
    return -value if negative else value


def _affine(img: Image.Image, data: tuple) -> Image.Image:
    return img.transform(img.size, Image.Transform.AFFINE, data, resample=_BILINEAR, fillcolor=FILL)


def apply_op(img: Image.Image, name: str, level: float, negative: bool = False) -> Image.Image:
    """One operation at `level` (of MAX_LEVEL); `negative` flips the sign of the geometric ones."""
    frac = level / MAX_LEVEL
    if name == "Identity":
        return img
    if name == "AutoContrast":
        return ImageOps.autocontrast(img)
    if name == "Equalize":
        return ImageOps.equalize(img)
    if name in ("Brightness", "Sharpness"):
        enhancer = ImageEnhance.Brightness if name == "Brightness" else ImageEnhance.Sharpness
        return enhancer(img).enhance(frac * 1.8 + 0.1)
    if name in ("ShearX", "ShearY"):
        s = _signed(frac * 0.3, negative)
        # cv2 forward matrix [[1, s, 0], [0, 1, 0]] (X) or [[1, 0, 0], [s, 1, 0]] (Y); PIL takes its inverse
        return _affine(img, (1, -s, 0, 0, 1, 0) if name == "ShearX" else (1, 0, 0, -s, 1, 0))
    if name in ("TranslateX", "TranslateY"):
        t = _signed(frac * 10.0, negative)
        # cv2 forward matrix moves by -t; PIL samples the input at +t
        return _affine(img, (1, 0, t, 0, 1, 0) if name == "TranslateX" else (1, 0, 0, 0, 1, t))
    if name == "Rotate":
        # cv2.getRotationMatrix2D about (W/2, H/2): positive degrees turn counter-clockwise, as PIL's rotate
        return img.rotate(_signed(frac * 30.0, negative), resample=_BILINEAR, fillcolor=FILL)
    raise ValueError(f"RandomAugment: unknown operation {name!r}")


class RandomAugment:
    """N operations drawn with replacement from `OPS`, each applied with probability 0.5 at level M."""

    def __init__(self, n: int = 2, m: int = 7, ops: tuple[str, ...] = OPS):
        self.n, self.m, self.ops = n, m, ops

    def __call__(self, img: Image.Image) -> Image.Image:
        picks = torch.randint(len(self.ops), (self.n,)).tolist()
        for pick in picks:
            if torch.rand(()).item() > 0.5:  # released: skipped when random() > prob
                continue
            img = apply_op(img, self.ops[pick], self.m, negative=torch.rand(()).item() > 0.5)
        return img

    def __repr__(self) -> str:
        return f"RandomAugment(n={self.n}, m={self.m}, ops={list(self.ops)})"
