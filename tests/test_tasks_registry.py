"""The task table and each task module's interface, recipes (released table, the demo's params.yaml flags) and
settings validation."""

from pathlib import Path

import pytest
import torch
import yaml

from beit3core import create_model
from beit3core.errors import UserError
from beit3core.tasks import (TASK_DEFAULTS, TASK_NAMES, TASKS, TaskSettings, build_task_model, captioning,
                             classification, collator, nlvr2, retrieval, settings_for, vqa)

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"
INTERFACE = ("NAME", "SELECTION_METRIC", "METRICS", "build", "targets", "collator", "loss", "predict", "score")


def demo_recipes() -> dict[str, dict]:
    """params.yaml `finetune.tasks`: the demo's flags per task, as settings overrides."""
    tasks = yaml.safe_load(PARAMS.read_text())["finetune"]["tasks"]
    return {task: {k.replace("-", "_"): tuple(v) if isinstance(v, list) else v for k, v in flags.items()}
            for task, flags in tasks.items()}


def test_the_table_maps_each_name_to_its_module_and_each_module_has_the_interface():
    modules = (classification, vqa, nlvr2, retrieval, captioning)
    assert TASKS == {m.NAME: m for m in modules} and TASK_NAMES == tuple(m.NAME for m in modules)
    for module in modules:
        missing = [name for name in INTERFACE if not hasattr(module, name)]
        assert missing == [], f"{module.__name__} lacks {missing}"


def test_every_task_has_a_module_and_both_recipes():
    assert set(TASKS) == set(TASK_DEFAULTS) == set(demo_recipes()) == set(TASK_NAMES)
    for module in TASKS.values():
        assert module.SELECTION_METRIC in module.METRICS


def test_demo_recipes_in_params_yaml_are_settings():
    fields = set(TaskSettings.__dataclass_fields__)
    for task, overrides in demo_recipes().items():
        assert set(overrides) <= fields, f"params.yaml finetune.tasks.{task}: unknown {set(overrides) - fields}"
        settings = settings_for(task, **overrides)
        assert settings.steps > 0 and settings.img_size == 64 and settings.hflip is False


def test_released_recipe_values():
    vqa = settings_for("vqa")
    assert (vqa.img_size, vqa.lr, vqa.layer_decay, vqa.head_lr_scale, vqa.betas) == (480, 3e-5, 1.0, 20.0, (0.9, 0.98))
    assert vqa.normalize_output is False and settings_for("classification").normalize_output is False
    cap = settings_for("captioning")
    assert (cap.max_len, cap.mask_prob, cap.num_beams, cap.length_penalty, cap.drop_worst_after) == (32, 0.7, 3, 0.6, 12000)
    assert settings_for("retrieval").img_size == 384 and settings_for("nlvr2").weight_decay == 0.2
    assert settings_for("classification").layer_decay == 0.65


def test_overrides_and_validation():
    s = settings_for("nlvr2", lr=0.5, weight_decay=None)
    assert s.lr == 0.5 and s.weight_decay == TASK_DEFAULTS["nlvr2"]["weight_decay"]  # None keeps the recipe value
    with pytest.raises(UserError, match="--task"):
        settings_for("detection")
    with pytest.raises(UserError, match="--layer-decay"):
        settings_for("vqa", layer_decay=1.5)
    with pytest.raises(UserError, match="--steps / --epochs"):
        settings_for("vqa", steps=0, epochs=0)


def test_head_init_scale_setting_reaches_the_scaled_heads():
    assert settings_for("classification").head_init_scale == 0.001  # released
    with pytest.raises(UserError, match="--head-init-scale"):
        settings_for("nlvr2", head_init_scale=0)
    torch.manual_seed(0)
    backbone = create_model("beit3_tiny_patch16_224", vocab_size=16, depth=1)
    header = {"labels": ["a", "b", "c"]}
    released = build_task_model("classification", backbone, header, settings_for("classification"))
    unscaled = build_task_model("classification", backbone, header, settings_for("classification", head_init_scale=1.0))
    released, unscaled = released.head.weight.abs().max().item(), unscaled.head.weight.abs().max().item()
    assert released <= 0.02 * 0.001 + 1e-9 and 0.01 < unscaled <= 0.02
    nlvr2 = build_task_model("nlvr2", backbone, {}, settings_for("nlvr2", head_init_scale=1.0))
    assert nlvr2.head.dense2.weight.abs().max().item() > 0.01
    with pytest.raises(UserError, match="field 'answers'"):
        build_task_model("vqa", backbone, {}, settings_for("vqa"))


class _Tokenizer:
    def encode_batch(self, texts, max_len):
        return torch.zeros(len(texts), max_len, dtype=torch.long), torch.zeros(len(texts), max_len, dtype=torch.bool)


def test_each_task_collator_adds_its_targets():
    image = torch.zeros(3, 4, 4)
    header = {"labels": ["cat", "dog"], "answers": ["red", "blue", "2"]}
    rows = {
        "classification": [{"label": "dog"}, {"label": "cat"}],
        "vqa": [{"question": "q", "answers": ["red"] * 3 + ["Blue."] + ["green"]},
                {"question": "q", "answers": ["2"] * 4}],
        "nlvr2": [{"sentence": "s", "label": True}, {"sentence": "s", "label": False}],
        "retrieval": [{"caption": "a"}, {"caption": "b"}],
        "captioning": [{"caption": "a"}, {"caption": "b"}],
    }
    batches = {task: collator(task, _Tokenizer(), 5, header)([{"row": r, "image": image} for r in task_rows])
               for task, task_rows in rows.items()}
    assert batches["classification"]["labels"].tolist() == [1, 0] and "text_ids" not in batches["classification"]
    torch.testing.assert_close(batches["vqa"]["targets"], torch.tensor([[0.9, 0.3, 0.0], [0.0, 0.0, 1.0]]))
    assert batches["nlvr2"]["labels"].tolist() == [1, 0]
    for task in ("vqa", "nlvr2", "retrieval", "captioning"):
        assert batches[task]["text_ids"].shape == (2, 5) and batches[task]["image"].shape == (2, 3, 4, 4)
    assert set(batches["retrieval"]) == set(batches["captioning"]) == {"rows", "image", "text_ids", "text_padding_mask"}
