"""VQ-KD: official key layout with strict loading, quantizer behaviour, training usage, stable ids."""

import numpy as np
import pytest
import torch

from beit3core.errors import UserError
from beit3core.tokenizers.visual import PixelTarget, VisualTokenizer, code_usage, train_vqkd
from beit3core.tokenizers.vqkd import (
    VQKD,
    NormEMAQuantizer,
    config_from_state_dict,
    convert_official_state_dict,
    load_official_checkpoint,
    vqkd_tiny_config,
)


def shapes_images(n, size=32, seed=0):
    """uint8 (n, 3, size, size): one or two coloured rectangles/discs on a light, slightly varying background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        img = np.empty((size, size, 3))
        img[:] = 230 + rng.integers(-10, 11, 3)
        for _ in range(rng.integers(1, 3)):
            colour = rng.integers(0, 256, 3)
            cx, cy, r = rng.uniform(0.2, 0.8) * size, rng.uniform(0.2, 0.8) * size, rng.uniform(0.1, 0.3) * size
            inside = ((xx - cx) ** 2 + (yy - cy) ** 2 < r**2) if rng.random() < 0.5 else \
                ((abs(xx - cx) < r) & (abs(yy - cy) < r * rng.uniform(0.5, 1.5)))
            img[inside] = colour
        out[i] = img
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def tiny_cfg(**kw):
    values = dict(img_size=32, patch_size=8, embed_dim=64, depth=1, num_heads=2, decoder_embed_dim=64, decoder_num_heads=2,
                  codebook_size=64, code_dim=16)
    values.update(kw)
    return vqkd_tiny_config(**values)


# -- the official checkpoint layout ---------------------------------------------------------------------------------------------
def official_keys(enc_depth, dec_depth):
    """Key names of microsoft/unilm beit2 VQKD (modeling_vqkd.py + modeling_finetune.VisionTransformer with
    use_mean_pooling=True, init_values=0, num_classes=0 + norm_ema_quantizer.NormEMAVectorQuantizer), written out."""
    keys = []
    for part, depth in (("encoder", enc_depth), ("decoder", dec_depth)):
        keys += [f"{part}.cls_token", f"{part}.pos_embed", f"{part}.patch_embed.proj.weight", f"{part}.patch_embed.proj.bias"]
        for i in range(depth):
            b = f"{part}.blocks.{i}"
            keys += [f"{b}.norm1.weight", f"{b}.norm1.bias", f"{b}.attn.q_bias", f"{b}.attn.v_bias", f"{b}.attn.qkv.weight",
                     f"{b}.attn.proj.weight", f"{b}.attn.proj.bias", f"{b}.norm2.weight", f"{b}.norm2.bias",
                     f"{b}.mlp.fc1.weight", f"{b}.mlp.fc1.bias", f"{b}.mlp.fc2.weight", f"{b}.mlp.fc2.bias"]
        keys += [f"{part}.fc_norm.weight", f"{part}.fc_norm.bias"]
    keys += ["quantize.cluster_size", "quantize.embedding.initted", "quantize.embedding.weight",
             "quantize.embedding.cluster_size", "quantize.embedding.embed_avg"]
    for layer in ("encode_task_layer", "decode_task_layer"):
        keys += [f"{layer}.0.weight", f"{layer}.0.bias", f"{layer}.2.weight", f"{layer}.2.bias"]
    return keys


def test_module_keys_match_the_official_layout():
    cfg = tiny_cfg(depth=2, decoder_depth=3)
    assert sorted(VQKD(cfg).state_dict()) == sorted(official_keys(2, 3))


def test_released_base_shapes():
    from beit3core.tokenizers.vqkd import vqkd_base_config

    sd = VQKD(vqkd_base_config(decoder_depth=3)).state_dict()
    assert sd["encoder.pos_embed"].shape == (1, 197, 768)
    assert sd["encoder.blocks.11.attn.qkv.weight"].shape == (2304, 768)
    assert sd["decoder.patch_embed.proj.weight"].shape == (768, 32, 1, 1)
    assert sd["decoder.pos_embed"].shape == (1, 197, 768)
    assert sd["quantize.embedding.weight"].shape == (8192, 32)
    assert sd["encode_task_layer.2.weight"].shape == (32, 768)
    assert sd["decode_task_layer.2.weight"].shape == (512, 768)


def test_official_checkpoint_loads_strictly(tmp_path):
    cfg = tiny_cfg(depth=2, decoder_depth=1, target_dim=24)
    g = torch.Generator().manual_seed(0)
    shapes = {k: v.shape for k, v in VQKD(cfg).state_dict().items()}
    assert set(shapes) == set(official_keys(2, 1))
    released = {k: torch.randn(shape, generator=g) for k, shape in shapes.items()}
    released["quantize.embedding.weight"] = torch.nn.functional.normalize(released["quantize.embedding.weight"], dim=-1)
    released["quantize.embedding.initted"] = torch.tensor([1.0])
    # what the released files also carry, and the loader must strip
    released.update({"teacher_model.visual.proj": torch.randn(4, 4), "scaling_layer.shift": torch.zeros(1, 3, 1, 1),
                     "loss.weight": torch.zeros(1)})
    path = tmp_path / "vqkd_official.pth"
    torch.save({"model": released, "epoch": 99}, path)

    sd = convert_official_state_dict(torch.load(path, weights_only=True))
    assert not any(k.startswith(("teacher_model.", "scaling_layer.", "loss")) for k in sd)
    model = VQKD(config_from_state_dict(sd, num_heads=2, decoder_num_heads=2))
    result = model.load_state_dict(sd, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    loaded = load_official_checkpoint(str(path), num_heads=2, decoder_num_heads=2)
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, released[k]), k
    assert loaded.cfg.img_size == 32 and loaded.cfg.patch_size == 8 and loaded.cfg.depth == 2
    assert loaded.cfg.codebook_size == 64 and loaded.cfg.code_dim == 16 and loaded.cfg.target_dim == 24
    vt = VisualTokenizer.from_official(str(path), num_heads=2, decoder_num_heads=2)
    ids = vt.encode(torch.rand(2, 3, 32, 32))
    assert ids.shape == (2, 16) and ids.dtype == torch.long and int(ids.max()) < 64

    del released["decoder.fc_norm.bias"]
    torch.save({"model": released}, path)
    with pytest.raises(UserError, match="missing"):
        load_official_checkpoint(str(path), num_heads=2, decoder_num_heads=2)


def test_official_checkpoint_from_s3(s3_store, tmp_path):
    from beit3core import io

    cfg = tiny_cfg()
    model = VQKD(cfg)
    model.quantize.embedding.initted.fill_(1)
    local = tmp_path / "t.pth"
    torch.save({"model": model.state_dict()}, local)
    uri = f"s3://{s3_store['bucket']}/tokenizers/vqkd.pth"
    io.write_bytes(uri, local.read_bytes())
    loaded = load_official_checkpoint(uri, num_heads=2, decoder_num_heads=2)
    x = torch.rand(3, 3, 32, 32)
    assert torch.equal(loaded.get_codebook_indices(x), model.eval().get_codebook_indices(x))


# -- the quantizer ---------------------------------------------------------------------------------------------------------
def test_quantizer_kmeans_init_ema_and_straight_through():
    torch.manual_seed(0)
    q = NormEMAQuantizer(num_codes=8, dim=4, decay=0.9, dead_code_steps=0).train()
    centres = torch.nn.functional.normalize(torch.randn(8, 4), dim=-1)
    z = (centres.repeat_interleave(50, 0) + 0.01 * torch.randn(400, 4)).view(4, 100, 4).requires_grad_(True)
    z_q, loss, ids = q(z)
    assert bool(q.embedding.initted.item())
    assert torch.allclose(q.embedding.weight.norm(dim=-1), torch.ones(8), atol=1e-5)
    assert len(ids.unique()) == 8  # k-means found the 8 clusters
    assert ids.shape == (4, 100) and loss.item() >= 0
    (z_q.sum()).backward()  # straight-through: z_q's gradient is that of l2norm(z), as if no lookup happened
    z_ref = z.detach().clone().requires_grad_(True)
    torch.nn.functional.normalize(z_ref, dim=-1).sum().backward()
    assert torch.allclose(z.grad, z_ref.grad, atol=1e-6)
    before = q.embedding.weight.clone()
    q(torch.nn.functional.normalize(torch.randn(4, 100, 4), dim=-1))
    assert not torch.equal(before, q.embedding.weight)
    assert torch.allclose(q.embedding.weight.norm(dim=-1), torch.ones(8), atol=1e-5)
    q.eval()
    frozen = q.embedding.weight.clone()
    q(torch.randn(2, 10, 4))
    assert torch.equal(frozen, q.embedding.weight)  # eval has no side effects


def test_dead_codes_are_restarted_on_encoder_outputs():
    torch.manual_seed(0)
    q = NormEMAQuantizer(num_codes=16, dim=4, decay=0.99, dead_code_steps=2).train()
    q.embedding.weight.copy_(torch.nn.functional.normalize(torch.randn(16, 4), dim=-1))
    q.embedding.initted.fill_(1)
    q.embedding.weight[5] = torch.tensor([0.0, 0.0, 0.0, -1.0])  # far from every input: never picked
    z = torch.nn.functional.normalize(torch.rand(1, 200, 4) + torch.tensor([0, 0, 0, 0.5]), dim=-1)
    for _ in range(2):
        q(z)
    row = q.embedding.weight[5]
    assert float(row[3]) > 0  # moved onto the data
    assert float((torch.nn.functional.normalize(z[0], dim=-1) @ row).max()) > 0.999


# -- training and the tokenizer --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained():
    images = shapes_images(256, seed=0)
    model = VQKD(tiny_cfg())
    report = train_vqkd(model, images, PixelTarget(8), epochs=4, batch_size=32, lr=1e-3, seed=0, progress=False)
    return model, report, images


def test_training_uses_more_than_half_the_codebook(trained):
    model, report, images = trained
    assert len(report["epochs"]) == 4
    for rec in report["epochs"]:
        assert {"loss", "rec_loss", "commit_loss", "codes_used", "usage", "perplexity"} <= set(rec)
    assert report["epochs"][-1]["rec_loss"] < report["epochs"][0]["rec_loss"]
    assert report["final"]["usage"] > 0.5, report["final"]
    assert report["final"]["perplexity"] > 10
    assert bool(model.quantize.embedding.initted.item())


def test_ids_are_stable_and_save_load_roundtrips(trained, tmp_path):
    model, _, images = trained
    vt = VisualTokenizer(model)
    x = images[:16].float() / 255
    a, b = vt.encode(x), vt.encode(x)
    assert torch.equal(a, b) and a.shape == (16, 16) and a.dtype == torch.long
    assert torch.equal(vt.encode(x[3:5]), a[3:5])  # independent of the batch it is in
    assert torch.equal(vt.encode(images[:16]), a)  # uint8 input is scaled the same way
    assert vt.encode(torch.nn.functional.interpolate(x, size=48)).shape == (16, 16)  # other sizes are resized
    vt.save(str(tmp_path / "tokenizer"), dataset={"fingerprint": "abc"})
    again = VisualTokenizer.load(str(tmp_path))  # a stage output folder holding tokenizer/
    assert torch.equal(again.encode(x), a)
    assert (again.grid_size, again.codebook_size, again.img_size) == (4, 64, 32)
    assert again.meta["dataset"]["fingerprint"] == "abc" and again.meta["model"]["codebook_size"] == 64
    with pytest.raises(UserError, match="no visual tokenizer"):
        VisualTokenizer.load(str(tmp_path / "nothing"))


def test_code_usage_figures():
    u = code_usage(torch.tensor([5, 5, 0, 0]))
    assert u["codes_used"] == 2 and u["usage"] == 0.5 and abs(u["perplexity"] - 2.0) < 1e-9


def test_timm_teacher_targets(tmp_path):
    import timm

    from beit3core.tokenizers.visual import make_teacher

    net = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0)
    path = tmp_path / "teacher.pth"
    torch.save({"model": net.state_dict()}, path)
    teacher = make_teacher("vit_tiny_patch16_224", str(path), grid_size=4, patch_size=8)
    target = teacher(torch.rand(2, 3, 32, 32))
    assert target.shape == (2, 16, teacher.dim) and teacher.dim == 192
    with pytest.raises(UserError, match="teacher-checkpoint"):
        make_teacher("vit_tiny_patch16_224", None, 4, 8)
    torch.save({"model": {"nope": torch.zeros(1)}}, path)
    with pytest.raises(UserError, match="missing keys"):
        make_teacher("vit_tiny_patch16_224", str(path), 4, 8)
