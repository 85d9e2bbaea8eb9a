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
