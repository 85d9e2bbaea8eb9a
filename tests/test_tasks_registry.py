"""Task registry, recipes (released table, demo) and settings validation."""

import pytest

from beit3core.errors import UserError
from beit3core.tasks import DEMO_DEFAULTS, TASK_DEFAULTS, TASK_NAMES, TASKS, settings_for


def test_every_task_has_a_spec_and_both_recipes():
    assert set(TASKS) == set(TASK_DEFAULTS) == set(DEMO_DEFAULTS) == set(TASK_NAMES)
    for name, spec in TASKS.items():
        assert spec.selection_key in spec.metric_keys


def test_released_recipe_values():
    vqa = settings_for("vqa")
    assert (vqa.img_size, vqa.lr, vqa.layer_decay, vqa.head_lr_scale, vqa.betas) == (480, 3e-5, 1.0, 20.0, (0.9, 0.98))
    assert vqa.normalize_output is False and settings_for("classification").normalize_output is False
    cap = settings_for("captioning")
    assert (cap.max_len, cap.mask_prob, cap.num_beams, cap.length_penalty, cap.drop_worst_after) == (32, 0.7, 3, 0.6, 12000)
    assert settings_for("retrieval").img_size == 384 and settings_for("nlvr2").weight_decay == 0.2
    assert settings_for("classification").layer_decay == 0.65


def test_overrides_and_validation():
    s = settings_for("nlvr2", "demo", lr=0.5, steps=None)
    assert s.lr == 0.5 and s.steps == DEMO_DEFAULTS["nlvr2"]["steps"]  # None keeps the recipe value
    with pytest.raises(UserError, match="--task"):
        settings_for("detection")
    with pytest.raises(UserError, match="--recipe"):
        settings_for("vqa", "huge")
    with pytest.raises(UserError, match="--layer-decay"):
        settings_for("vqa", layer_decay=1.5)
    with pytest.raises(UserError, match="--steps / --epochs"):
        settings_for("vqa", steps=0, epochs=0)


def test_head_init_scale_setting_reaches_the_scaled_heads():
    import torch

    from beit3core import create_model
    from beit3core.tasks import build_task_model

    assert settings_for("classification").head_init_scale == 0.001  # released
    with pytest.raises(UserError, match="--head-init-scale"):
        settings_for("nlvr2", head_init_scale=0)
    torch.manual_seed(0)
    backbone = create_model("beit3_tiny_patch16_224", vocab_size=16, depth=1)
    header = {"labels": ["a", "b", "c"]}
    released = build_task_model("classification", backbone, header).head.weight.abs().max().item()
    unscaled = build_task_model("classification", backbone, header, head_init_scale=1.0).head.weight.abs().max().item()
    assert released <= 0.02 * 0.001 + 1e-9 and 0.01 < unscaled <= 0.02
    nlvr2 = build_task_model("nlvr2", backbone, {}, head_init_scale=1.0)
    assert nlvr2.head.dense2.weight.abs().max().item() > 0.01
