"""Initialisation for pretraining from scratch (issue 15, item 2): paper §2.3 (as BEiT) and the released
`BEiT3Wrapper.fix_init_weight` (microsoft/unilm beit3/modeling_utils.py: `param.div_(math.sqrt(2.0 * layer_id))`
on `attn.proj` and `mlp.fc2` of layer layer_id, 1-based), with every weight and the position tables in a small
range; models that load a checkpoint keep the released wrapper's init."""

import math

import pytest
import torch

from beit3core.factory import create_model
from beit3core.pretrain import Beit3ForPretraining

SMALL = {"depth": 3, "embed_dim": 32, "num_heads": 2, "mlp_dim": 64, "vocab_size": 50}


def _model(layout: str):
    torch.manual_seed(1)  # the patch embedding's conv keeps its construction-time init (as released)
    vl = {"num_vl_layers": 1} if layout == "paper" else {}
    return create_model("beit3_tiny_patch8_64", layout=layout, **vl, **SMALL)


def _output_projection_names(model) -> set[str]:
    names = set()
    for i, _ in enumerate(model.blocks):
        for name, _ in model.named_parameters():
            if name.startswith(f"blocks.{i}.") and name.endswith(".weight") and (
                    ".attn.proj." in name or ".fc2." in name):
                names.add(name)
    return names


@pytest.mark.parametrize("layout", ["unilm", "paper"])
def test_output_projections_of_layer_l_are_divided_by_sqrt_2l(layout):
    base, scratch = _model(layout), _model(layout)
    torch.manual_seed(3)
    base.init_weights()
    torch.manual_seed(3)
    scratch.init_for_pretraining()  # draws the same weights first, then rescales
    projections = _output_projection_names(base)
    # unilm: attention proj and fc2 of both experts; paper: one shared proj, two fc2, and the top VL expert's fc2
    assert len(projections) == (4 * 3 if layout == "unilm" else 3 * 3 + 1)
    expected, got = dict(base.named_parameters()), dict(scratch.named_parameters())
    for name in projections:
        layer = int(name.split(".")[1]) + 1
        torch.testing.assert_close(got[name], expected[name] / math.sqrt(2.0 * layer), rtol=0, atol=0)
    for name, value in expected.items():
        if name not in projections and "pos_embed" not in name:
            torch.testing.assert_close(got[name], value, rtol=0, atol=0, msg=name)


def test_every_linear_weight_and_the_position_tables_start_in_a_small_range():
    model = _model("unilm")
    torch.manual_seed(0)
    model.init_for_pretraining()
    for table in (model.vision_pos_embed, model.text_pos_embed):
        assert table.abs().max() <= 0.02 and table.std() > 0.005  # ±0.02 truncated normal, not N(0, 1)
    for name, p in model.named_parameters():
        if name.endswith(".weight") and p.dim() == 2 and name != "text_embed.weight":
            assert p.abs().max() <= 0.02, name


def test_pretraining_model_uses_it_and_fine_tuning_keeps_the_released_init():
    torch.manual_seed(0)
    backbone = create_model("beit3_tiny_patch8_64", **SMALL)
    assert backbone.vision_pos_embed.std() > 0.5  # released: nn.Embedding's N(0, 1), overwritten by a checkpoint
    first_attn = backbone.blocks[0].attn.proj.vision.weight
    assert first_attn.abs().max() > 0.02 / math.sqrt(2) + 1e-4
    Beit3ForPretraining(backbone, 50, 16)
    assert backbone.vision_pos_embed.abs().max() <= 0.02
    assert backbone.blocks[0].attn.proj.vision.weight.abs().max() <= 0.02 / math.sqrt(2) + 1e-7
    assert backbone.blocks[2].mlp.text.fc2.weight.abs().max() <= 0.02 / math.sqrt(6) + 1e-7


def test_normal_position_init_keeps_the_released_tables_and_the_paper_scaling():
    """`--position-init normal` (the demo's choice, params.yaml): the position tables stay at nn.Embedding's
    N(0, 1), everything else is the paper's init (small range, 1/sqrt(2l) output projections)."""
    torch.manual_seed(0)
    backbone = create_model("beit3_tiny_patch8_64", **SMALL)
    Beit3ForPretraining(backbone, 50, 16, position_init="normal")
    assert backbone.vision_pos_embed.std() > 0.5 and backbone.text_pos_embed.std() > 0.5
    assert backbone.blocks[0].attn.proj.vision.weight.abs().max() <= 0.02 / math.sqrt(2) + 1e-7
    with pytest.raises(ValueError, match="position_init"):
        backbone.init_for_pretraining(position_init="zeros")
