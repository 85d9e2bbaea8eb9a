"""The VQ-KD CLIP teacher's target (issue 15, item 4): microsoft/unilm beit2/modeling_vqkd.py
`get_regress_target` takes `teacher.encode_image(x, return_all_tokens=True) @ teacher.visual.proj`, i.e. the
patch tokens after CLIP's final LayerNorm `ln_post` (beit2/vqkd_teacher/clip/model.py VisionTransformer.forward),
through the visual projection: 512-d for ViT-B/16, not the 768-d width. A tiny random CLIP-like tower stands in
for the real one (nothing is downloaded)."""

import timm
import torch

from beit3core.tokenizers.vqkd import clip_patch_targets, is_clip_image_tower


def tiny_clip_tower(width=32, output_dim=16):
    torch.manual_seed(0)
    tower = timm.models.VisionTransformer(img_size=32, patch_size=8, embed_dim=width, depth=2, num_heads=2,
                                          pre_norm=True, num_classes=output_dim, global_pool="token")
    with torch.no_grad():  # non-trivial final LayerNorm and a bias-free projection (timm's conversion: zero bias)
        tower.norm.weight.uniform_(0.5, 1.5)
        tower.norm.bias.normal_(std=0.1)
        tower.head.bias.zero_()
    return tower.eval()


def released_clip_target(tower, pixels):
    """beit2 CLIP VisionTransformer.forward(return_all_tokens=True) @ visual.proj, on the tower's weights."""
    x = tower.patch_embed.proj(pixels).flatten(2).transpose(1, 2)  # conv1
    x = torch.cat([tower.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + tower.pos_embed
    x = tower.norm_pre(x)  # ln_pre
    for block in tower.blocks:
        x = block(x)
    x = tower.norm(x)[:, 1:, :]  # ln_post on all tokens, CLS dropped
    return x @ tower.head.weight.T  # visual.proj (width, output_dim) == head.weight.T


@torch.no_grad()
def test_clip_target_is_the_final_norm_then_the_projection():
    tower = tiny_clip_tower()
    pixels = torch.randn(2, 3, 32, 32)
    got = clip_patch_targets(tower, pixels)
    assert got.shape == (2, 16, 16)  # (B, patches, output_dim): the projected size, not the width (32)
    torch.testing.assert_close(got, released_clip_target(tower, pixels), rtol=1e-5, atol=1e-5)


def test_clip_image_towers_are_told_by_their_timm_name():
    assert is_clip_image_tower("vit_base_patch16_clip_224.openai")
    assert is_clip_image_tower("vit_base_patch16_clip_quickgelu_224.openai")
    assert not is_clip_image_tower("vit_base_patch16_224.dino")


@torch.no_grad()
def test_the_tokenizer_teacher_of_a_clip_tower_targets_the_projected_features(tmp_path):
    """`tokenize visual --teacher vit_base_patch16_clip_224...`: the teacher keeps the tower's head (CLIP's
    projection) and gives 512-d targets on the tokenizer grid, equal to `clip_patch_targets` (before: the
    768-d features before the projection)."""
    from beit3core.tokenizers.visual import TimmTeacher

    name = "vit_base_patch16_clip_224.openai"  # the tag names the CLIP tower (its head: the 512-d projection)
    torch.manual_seed(0)
    tower = timm.create_model(name, pretrained=False)
    torch.save(tower.state_dict(), tmp_path / "clip.pth")
    teacher = TimmTeacher(name, str(tmp_path / "clip.pth"), grid_size=14)
    assert teacher.dim == 512
    images = torch.rand(1, 3, 224, 224)
    got = teacher(images)
    assert got.shape == (1, 196, 512)
    expected = clip_patch_targets(tower.eval(), (images - teacher.mean) / teacher.std)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
