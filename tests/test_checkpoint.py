"""Checkpoint conversion (pure), official-file loading with resizing, native safetensors save/load."""

import pickle

import pytest
import torch

from beit3core import io
from beit3core.checkpoint import (
    convert_unilm_state_dict, load_model, load_pretrained, save_model, unwrap_state_dict,
)
from beit3core.errors import UserError
from beit3core.factory import create_model
from released_layout import released_backbone

D, FFN, DEPTH, VOCAB, GRID = 32, 64, 2, 50, 4  # img 32, patch 8


def unilm_state_dict(grid=GRID, seed=0, heads=True):
    """A synthetic file in the released layout (reference §5): `beit3.*` keys plus task heads."""
    g = torch.Generator().manual_seed(seed)
    sd = released_backbone(dim=D, ffn=FFN, depth=DEPTH, vocab=VOCAB, grid=grid, patch=8, final_norm=True, generator=g)
    if heads:
        sd.update({"vision_head.weight": torch.randn(D, D, generator=g),
                   "language_head.weight": torch.randn(D, D, generator=g), "logit_scale": torch.tensor(2.6),
                   "mim_head.weight": torch.randn(8192, D, generator=g), "mim_head.bias": torch.randn(8192, generator=g)})
    return sd


def model(**kw):
    fields = dict(depth=DEPTH, embed_dim=D, num_heads=4, mlp_dim=FFN, img_size=32, patch_size=8, vocab_size=VOCAB)
    return create_model("beit3_tiny_patch16_224", **{**fields, **kw})


class Retrieval(torch.nn.Module):
    """A task model as beit3core.tasks builds them: `.backbone` + released head names."""

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone
        self.vision_head = torch.nn.Linear(D, D, bias=False)
        self.language_head = torch.nn.Linear(D, D, bias=False)
        self.logit_scale = torch.nn.Parameter(torch.tensor(0.0))


def test_convert_is_pure_and_complete():
    sd = unilm_state_dict()
    before = {k: v.clone() for k, v in sd.items()}
    out = convert_unilm_state_dict({"model": sd})
    assert set(sd) == set(before) and all(torch.equal(sd[k], before[k]) for k in sd)
    # Every backbone tensor lands in a beit3core key; q/k/v are fused in that order.
    assert sum(k.startswith("backbone.") for k in out) == 7 + DEPTH * 32 + 4  # 40 per layer, 3 fused into 1 (x2 kinds)
    fused = out["backbone.blocks.1.attn.qkv.text.weight"]
    p = "beit3.encoder.layers.1.self_attn."
    torch.testing.assert_close(fused, torch.cat([sd[p + "q_proj.B.weight"], sd[p + "k_proj.B.weight"], sd[p + "v_proj.B.weight"]]))
    assert torch.equal(out["backbone.blocks.0.mlp.vision.norm.bias"], sd["beit3.encoder.layers.0.ffn.A.ffn_layernorm.bias"])
    assert torch.equal(out["backbone.norm.text.weight"], sd["beit3.encoder.layer_norm.B.weight"])
    assert torch.equal(out["backbone.vision_pos_embed"], sd["beit3.encoder.embed_positions.A.weight"])
    # Head keys pass through unchanged (including ones nobody uses).
    for key in ("vision_head.weight", "logit_scale", "mim_head.weight"):
        assert torch.equal(out[key], sd[key])
    # The backbone loads with nothing missing or unexpected.
    bare = {k[len("backbone."):]: v for k, v in out.items() if k.startswith("backbone.")}
    result = model().load_state_dict(bare, strict=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_unwrap_strips_wrappers():
    t = torch.zeros(1)
    assert unwrap_state_dict({"module": {"module._orig_mod.a.b": t}}) == {"a.b": t}
    assert list(unwrap_state_dict({"model": {"_orig_mod.x": t, "backbone._orig_mod.y": t}})) == ["x", "backbone.y"]
    with pytest.raises(UserError):
        unwrap_state_dict([1, 2])
    # A torchscale BEiT3 saved without the unilm wrapper converts too.
    bare = {k[len("beit3."):]: v for k, v in unilm_state_dict(heads=False).items()}
    assert set(convert_unilm_state_dict(bare)) == set(convert_unilm_state_dict(unilm_state_dict(heads=False)))


def test_convert_keeps_incomplete_qkv_and_unknown_keys():
    sd = unilm_state_dict(heads=False)
    del sd["beit3.encoder.layers.0.self_attn.k_proj.A.weight"]
    sd["beit3.encoder.output_projection.weight"] = torch.zeros(2)
    out = convert_unilm_state_dict(sd)
    assert "backbone.encoder.layers.0.self_attn.q_proj.A.weight" in out
    assert "backbone.encoder.output_projection.weight" in out


def test_load_pretrained_official_file_into_task_model_and_backbone(tmp_path):
    sd = unilm_state_dict()
    path = tmp_path / "beit3_itc.pth"
    torch.save({"model": sd, "args": {"lr": 1.0}}, path)
    task = Retrieval(model())
    report = load_pretrained(task, str(path))
    assert report.missing == [] and report.unexpected == ["mim_head.bias", "mim_head.weight"]
    assert torch.equal(task.vision_head.weight, sd["vision_head.weight"])
    assert torch.equal(task.backbone.text_embed.weight, sd["beit3.text_embed.weight"])
    bare = model()
    report = load_pretrained(bare, str(path))
    assert report.missing == []
    assert set(report.unexpected) == {"vision_head.weight", "language_head.weight", "logit_scale", "mim_head.weight", "mim_head.bias"}
    with pytest.raises(UserError, match="does not match"):
        load_pretrained(bare, str(path), strict=True)


def test_load_pretrained_resizes_positions(tmp_path):
    sd = unilm_state_dict()
    path = tmp_path / "ckpt.pth"
    torch.save({"model": sd}, path)
    big = model(img_size=48)  # grid 6x6
    report = load_pretrained(big, str(path))
    assert report.resized == ["vision_pos_embed"] and report.missing == []
    table = big.vision_pos_embed.detach()
    assert table.shape == (36 + 3, D)
    torch.testing.assert_close(table[:3], sd["beit3.encoder.embed_positions.A.weight"][:3])
    # The text table is never resampled.
    torch.testing.assert_close(big.text_pos_embed.detach(), sd["beit3.encoder.embed_positions.B.weight"])


def test_mismatched_head_is_reported_not_loaded(tmp_path):
    sd = unilm_state_dict()
    sd["vision_head.weight"] = torch.zeros(3, D)
    path = tmp_path / "c.pth"
    torch.save(sd, path)
    task = Retrieval(model())
    before = task.vision_head.weight.detach().clone()
    report = load_pretrained(task, str(path))
    assert report.mismatched and report.mismatched[0].startswith("vision_head.weight")
    assert "vision_head.weight" in report.missing and torch.equal(task.vision_head.weight, before)


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_checkpoint_never_runs_code(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"model": Evil()}, f)
    with pytest.raises(UserError, match="weights-only"):
        load_pretrained(model(), str(path))
    with pytest.raises(UserError, match="no such file"):
        load_pretrained(model(), str(tmp_path / "missing.pth"))


def test_save_and_load_model_roundtrip(tmp_path):
    m = model(layout="paper", num_vl_layers=1).eval()
    out_dir = str(tmp_path / "run" / "model")
    save_model(m, out_dir)
    assert sorted(p.name for p in (tmp_path / "run" / "model").iterdir()) == ["config.json", "model.safetensors"]
    meta = io.read_json(io.join(out_dir, "config.json"))
    assert meta["config"]["layout"] == "paper" and meta["config"]["num_vl_layers"] == 1
    again = load_model(out_dir).eval()
    assert again.config == m.config
    image = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(again(image=image).hidden, m(image=image).hidden)
    # load_pretrained also reads native folders (and resizes them).
    other = model(layout="paper", num_vl_layers=1, img_size=48)
    report = load_pretrained(other, out_dir)
    assert report.missing == [] and report.unexpected == [] and report.resized == ["vision_pos_embed"]
    with pytest.raises(UserError, match="architecture"):
        io.write_json(io.join(out_dir, "config.json"), {"architecture": "Other", "config": {}})
        load_model(out_dir)


def test_s3_roundtrip(s3_prefix, tmp_path):
    m = model()
    save_model(m, f"{s3_prefix}/model")
    again = load_model(f"{s3_prefix}/model")
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), again.state_dict().values()))
    local = tmp_path / "official.pth"
    torch.save({"model": unilm_state_dict()}, local)
    io.write_bytes(f"{s3_prefix}/official.pth", local.read_bytes())
    report = load_pretrained(model(), f"{s3_prefix}/official.pth")
    assert report.missing == [] and "mim_head.weight" in report.unexpected


def test_task_model_takes_a_native_backbone_folder(tmp_path):
    backbone = model()
    save_model(backbone, str(tmp_path / "m"))
    task = Retrieval(model())
    report = load_pretrained(task, str(tmp_path / "m"))
    assert report.unexpected == [] and set(report.missing) == {"vision_head.weight", "language_head.weight", "logit_scale"}
    assert torch.equal(task.backbone.text_embed.weight, backbone.text_embed.weight)
