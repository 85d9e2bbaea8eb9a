"""Released (microsoft/unilm) checkpoint layouts load strictly into the task models: every backbone key maps
to `backbone.*` and every head key (beit3.md section 5) matches a head parameter by name and shape."""

import pytest
import torch

from beit3core.checkpoint import load_pretrained
from beit3core.factory import create_model
from beit3core.tasks import build_task_model
from released_layout import released_backbone

D, FFN, DEPTH, VOCAB, GRID, PATCH = 32, 64, 2, 60, 4, 8


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """2 shared cores: one intra-op thread avoids spin contention and is several times faster here."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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
    backbone = create_model("beit3_tiny_patch16_224", depth=DEPTH, embed_dim=D, num_heads=4, mlp_dim=FFN,
                            img_size=GRID * PATCH, patch_size=PATCH, vocab_size=VOCAB, normalize_output=final_norm)
    model = build_task_model(task, backbone, header)
    report = load_pretrained(model, str(path), strict=True)  # raises on any missing / unexpected / mismatched key
    assert not report.missing and not report.unexpected
    state = model.state_dict()
    for key, value in heads.items():
        torch.testing.assert_close(state[key], value.reshape(state[key].shape), rtol=0, atol=0)
    # the head keys are exactly the task model's non-backbone keys
    assert set(heads) == {k for k in state if not k.startswith("backbone.")}
