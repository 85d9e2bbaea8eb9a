"""Released (microsoft/unilm) checkpoint layouts load strictly into the task models: every backbone key maps
to `backbone.*` and every head key (beit3.md section 5) matches a head parameter by name and shape. The
task-model folder (beit3core.task_checkpoint) round-trips, and each kind of `--init` is told apart."""

import pytest
import torch

from beit3core.checkpoint import load_pretrained, save_model
from beit3core.errors import UserError
from beit3core.factory import create_model
from beit3core.task_checkpoint import build_task_model_for_init, init_kind, load_task_model, save_task_model, task_meta
from beit3core.tasks import build_task_model, settings_for
from released_layout import released_backbone

D, FFN, DEPTH, VOCAB, GRID, PATCH = 32, 64, 2, 60, 4, 8


pytestmark = pytest.mark.usefixtures("one_thread")


def released_heads(task: str, n: int, g: torch.Generator) -> dict:
    def t(*shape):
        return torch.randn(*shape, generator=g)

    return {
        "classification": {"fc_norm.weight": t(D), "fc_norm.bias": t(D), "head.weight": t(n, D), "head.bias": t(n)},
        "nlvr2": {"head.norm1.weight": t(4 * D), "head.norm1.bias": t(4 * D), "head.dense1.weight": t(2 * D, 4 * D),
                  "head.dense1.bias": t(2 * D), "head.norm2.weight": t(2 * D), "head.norm2.bias": t(2 * D),
                  "head.dense2.weight": t(2, 2 * D), "head.dense2.bias": t(2)},
        "vqa": {"pooler.norm.weight": t(D), "pooler.norm.bias": t(D), "pooler.dense.weight": t(D, D),
                "pooler.dense.bias": t(D), "head.0.weight": t(2 * D, D), "head.0.bias": t(2 * D),
                "head.1.weight": t(2 * D), "head.1.bias": t(2 * D), "head.3.weight": t(n, 2 * D), "head.3.bias": t(n)},
        "captioning": {"mlm_head.weight": t(VOCAB, D), "mlm_head.bias": t(VOCAB)},
        "retrieval": {"vision_head.weight": t(D, D), "language_head.weight": t(D, D), "logit_scale": t(())},
    }[task]


def tiny_backbone(**overrides):
    return create_model("beit3_tiny_patch16_224", depth=DEPTH, embed_dim=D, num_heads=4, mlp_dim=FFN,
                        img_size=GRID * PATCH, patch_size=PATCH, vocab_size=VOCAB, **overrides)


# released normalize_output: False for the in1k and VQA models, True for the others
CASES = [("classification", False, 7), ("vqa", False, 11), ("nlvr2", True, 2), ("captioning", True, 0),
         ("retrieval", True, 0)]


@pytest.mark.parametrize("task,final_norm,n", CASES)
def test_released_layout_loads_strictly(tmp_path, task, final_norm, n):
    g = torch.Generator().manual_seed(0)
    heads = released_heads(task, n, g)
    sd = {**released_backbone(dim=D, ffn=FFN, depth=DEPTH, vocab=VOCAB, grid=GRID, patch=PATCH,
                               final_norm=final_norm, generator=g), **heads}
    path = tmp_path / f"{task}.pth"
    torch.save({"model": sd}, path)
    header = {"labels": [f"c{i}" for i in range(n)], "answers": [f"a{i}" for i in range(n)]}
    model = build_task_model(task, tiny_backbone(normalize_output=final_norm), header, settings_for(task))
    report = load_pretrained(model, str(path), strict=True)  # raises on any missing / unexpected / mismatched key
    assert not report.missing and not report.unexpected
    state = model.state_dict()
    for key, value in heads.items():
        torch.testing.assert_close(state[key], value.reshape(state[key].shape), rtol=0, atol=0)
    # the head keys are exactly the task model's non-backbone keys
    assert set(heads) == {k for k in state if not k.startswith("backbone.")}


def test_task_model_folder_round_trips_and_init_kinds_are_told_apart(tmp_path):
    torch.manual_seed(0)
    settings = settings_for("vqa", arch="beit3_tiny_patch16_224", img_size=GRID * PATCH)
    header = {"name": "toy", "answers": ["a0", "a1", "a2"]}
    model = build_task_model("vqa", tiny_backbone(normalize_output=False), header, settings)
    folder, backbone, official = str(tmp_path / "ft"), str(tmp_path / "bb"), tmp_path / "x.pth"
    save_task_model(model, folder, task_meta("vqa", settings, header))
    save_model(model.backbone, backbone)
    torch.save({"model": {}}, official)

    loaded, meta = load_task_model(folder, "vqa")
    assert meta["settings"] == settings and meta["answers"] == header["answers"] and meta["dataset"] == "toy"
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0)
    with pytest.raises(UserError, match="field 'task'"):
        load_task_model(folder, "nlvr2")
    with pytest.raises(UserError, match="not a `beit3 finetune` model folder"):
        load_task_model(backbone)

    kinds = [init_kind(u) for u in ("random", folder, backbone, str(official))]
    assert kinds == ["random", "task_model", "backbone", "official"]
    with pytest.raises(UserError, match="--init"):
        init_kind(str(tmp_path / "missing"))
    # a fine-tuned folder as --init brings its heads along
    again, info = build_task_model_for_init("vqa", settings, header, folder, vocab_size=VOCAB)
    assert info["init_kind"] == "native" and info["missing"] == 0
    torch.testing.assert_close(again.state_dict()["head.3.weight"], model.state_dict()["head.3.weight"])
