"""Fine-tuning augmentation per released recipe (issue 15, item 3): microsoft/unilm beit3/datasets.py
`build_transform` (RandomResizedCrop(0.5, 1) + flip, then `RandomAugment(2, 7, ...)` of beit3/randaug.py with
`--randaug`: VQA and captioning get_started commands) and `build_imagenet_transform` (timm `create_transform`
with run_beit3_finetuning.py's defaults: --aa rand-m9-mstd0.5-inc1, --color_jitter 0.4, --reprob 0.25,
--remode pixel, --recount 1, bicubic; RandomCrop(padding=4) at input_size <= 32)."""

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image, ImageEnhance
from timm.data import create_transform
from torchvision import transforms as T

from beit3core.errors import UserError
from beit3core.tasks import randaug, settings_for
from beit3core.tasks.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TrainAugment,
    image_transform,
)
from beit3core.tasks.randaug import RandomAugment, apply_op


def _train_transform(task, **overrides):
    s = settings_for(task, **overrides)
    return image_transform(task, s.img_size, True, TrainAugment.of(s))


def test_released_recipes_name_the_released_augmentation():
    cls = settings_for("classification")
    assert (cls.crop_scale_min, cls.auto_augment, cls.color_jitter, cls.reprob, cls.mixup, cls.cutmix) == \
        (0.08, "rand-m9-mstd0.5-inc1", 0.4, 0.25, 0.8, 1.0)
    for task in ("vqa", "captioning"):
        assert settings_for(task).randaug is True
    for task in ("nlvr2", "retrieval"):
        s = settings_for(task)
        assert (s.randaug, s.crop_scale_min, s.hflip) == (False, 0.5, True)


def test_classification_train_transform_is_timm_create_transform_with_the_released_arguments():
    ours = _train_transform("classification")
    released = create_transform(input_size=224, is_training=True, color_jitter=0.4, auto_augment="rand-m9-mstd0.5-inc1",
                                interpolation="bicubic", re_prob=0.25, re_mode="pixel", re_count=1,
                                mean=IMAGENET_MEAN, std=IMAGENET_STD)
    assert repr(ours) == repr(released)
    assert "ColorJitter" not in repr(ours)  # timm turns colour jitter off while RandAugment is on
    small = _train_transform("classification", img_size=32)
    assert isinstance(small.transforms[0], T.RandomCrop) and small.transforms[0].padding == 4


def test_a_bad_auto_augment_policy_is_one_user_error():
    with pytest.raises(UserError, match="--auto-augment"):
        _train_transform("classification", auto_augment="rand-q9-x")


def test_vqa_and_captioning_add_random_augment_2_7_after_crop_and_flip():
    for task in ("vqa", "captioning"):
        steps = _train_transform(task).transforms
        assert [type(t) for t in steps[:3]] == [T.RandomResizedCrop, T.RandomHorizontalFlip, RandomAugment]
        assert steps[0].scale == (0.5, 1.0) and (steps[2].n, steps[2].m) == (2, 7)
        assert steps[2].ops == ("Identity", "AutoContrast", "Equalize", "Brightness", "Sharpness", "ShearX", "ShearY",
                                "TranslateX", "TranslateY", "Rotate")
    assert not any(isinstance(t, RandomAugment) for t in _train_transform("retrieval").transforms)
    assert not any(isinstance(t, RandomAugment) for t in _train_transform("vqa", randaug=False).transforms)


def test_random_augment_draws_two_ops_with_replacement_each_applied_half_the_time(monkeypatch):
    """randaug.py RandomAugment: np.random.choice(augs, N) (with replacement), skip when random() > 0.5."""
    applied = Counter()
    monkeypatch.setattr(randaug, "apply_op", lambda img, name, level, negative=False: applied.update([name]) or img)
    torch.manual_seed(0)
    aug = RandomAugment(2, 7)
    img = Image.new("RGB", (8, 8))
    calls = 4000
    for _ in range(calls):
        aug(img)
    total = sum(applied.values())
    assert total / calls == pytest.approx(1.0, abs=0.05)  # 2 draws x 0.5
    assert set(applied) == set(randaug.OPS)
    assert all(c / total == pytest.approx(0.1, abs=0.02) for c in applied.values())


def _dot(x, y, size=41):
    a = np.zeros((size, size, 3), np.uint8)
    a[y, x] = 255
    return Image.fromarray(a)


def _where(img):
    a = np.asarray(img)[..., 0].astype(float)
    a[a == 128] = 0  # the grey fill
    y, x = np.unravel_index(a.argmax(), a.shape)
    return int(x), int(y)


def test_random_augment_levels_and_geometry_follow_the_released_opencv_matrices():
    """Level 7 of 10: brightness/sharpness 1.36, shear 0.21, translate 7 px, rotate 21 degrees; cv2.warpAffine's
    forward matrices [[1, s, 0], [0, 1, 0]] and [[1, 0, -t], [0, 1, 0]] move a pixel to x + s*y and x - t."""
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8))
    assert np.array_equal(np.asarray(apply_op(img, "Brightness", 7)),
                          np.asarray(ImageEnhance.Brightness(img).enhance(1.36)))
    assert np.array_equal(np.asarray(apply_op(img, "Sharpness", 7)),
                          np.asarray(ImageEnhance.Sharpness(img).enhance(1.36)))
    assert _where(apply_op(_dot(10, 30), "ShearX", 7)) == (round(10 + 0.21 * 30), 30)
    assert _where(apply_op(_dot(10, 30), "ShearY", 7)) == (10, round(30 + 0.21 * 10))
    assert _where(apply_op(_dot(20, 20), "TranslateX", 7)) == (13, 20)
    assert _where(apply_op(_dot(20, 20), "TranslateY", 7, negative=True)) == (20, 27)
    x, y = _where(apply_op(_dot(35, 20), "Rotate", 7))  # counter-clockwise by 21 degrees about the centre
    angle = np.degrees(np.arctan2(-(y - 20.5), x - 20.5))
    assert angle == pytest.approx(21, abs=3)
    grey = np.asarray(apply_op(Image.new("RGB", (16, 16), (255, 0, 0)), "Rotate", 7))
    assert tuple(grey[0, 0]) == (128, 128, 128)  # corners filled grey as released


def test_the_demo_keeps_its_light_augmentation_and_says_so():
    text = (Path(__file__).resolve().parents[1] / "params.yaml").read_text()
    tasks = yaml.safe_load(text)["finetune"]["tasks"]
    assert (tasks["classification"]["auto-augment"], tasks["classification"]["reprob"]) == ("none", 0.0)
    assert tasks["vqa"]["randaug"] is False and tasks["captioning"]["randaug"] is False
    assert "not the released recipe" in text
    steps = _train_transform("classification", img_size=64, hflip=False, crop_scale_min=1.0, auto_augment="none",
                             color_jitter=0.0, reprob=0.0).transforms
    assert [type(t).__name__ for t in steps] == ["RandomResizedCropAndInterpolation", "MaybeToTensor", "Normalize"]


def test_eval_transforms_are_the_released_ones():
    """build_transform(is_train=False): Resize((S, S), bicubic); build_imagenet_transform: Resize(int(S / 1.0))
    + CenterCrop(S), bicubic (crop_pct 1.0)."""
    vl = image_transform("vqa", 48, False).transforms
    assert isinstance(vl[0], T.Resize) and vl[0].size == (48, 48)
    assert vl[0].interpolation == T.InterpolationMode.BICUBIC
    cls = image_transform("classification", 48, False).transforms
    assert isinstance(cls[0], T.Resize) and cls[0].size == 48 and cls[0].interpolation == T.InterpolationMode.BICUBIC
    assert isinstance(cls[1], T.CenterCrop) and cls[1].size == (48, 48)
    assert tuple(cls[-1].mean) == IMAGENET_MEAN and tuple(vl[-1].mean) == (0.5, 0.5, 0.5)


def test_released_classification_recipe_survives_timms_zero_bit_posterize():
    """`rand-m9-mstd0.5-inc1` with magnitude noise reaches timm's strongest posterize level, which asks Pillow for
    0 bits; Pillow >= 11 raises on it (a worker crash seen in a pipeline run). Every posterize op is called at
    its extreme levels here."""
    from PIL import Image

    from beit3core.tasks.data import TrainAugment, classification_train_transform

    transform = classification_train_transform(64, TrainAugment(crop_scale=(0.08, 1.0),
                                                                auto_augment="rand-m9-mstd0.5-inc1"))
    ops = [op for step in transform.transforms for op in getattr(step, "ops", ()) if "Posterize" in op.name]
    assert ops
    img = Image.new("RGB", (64, 64), (200, 100, 50))
    for op in ops:
        for bits in (0, 4, 8):
            assert op.aug_fn(img, bits).size == (64, 64)
