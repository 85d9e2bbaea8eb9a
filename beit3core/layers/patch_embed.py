"""Image to patch tokens: a strided convolution, flattened row-major (the order of VQ-KD codes)."""

import torch
from torch import nn

from beit3core.errors import UserError


class PatchEmbed(nn.Module):
    def __init__(self, img_size: int, patch_size: int, in_chans: int, dim: int):
        super().__init__()
        self.img_size = img_size
        self.patch_size = patch_size
        self.grid_size = (img_size // patch_size, img_size // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if image.ndim != 4 or tuple(image.shape[-2:]) != (self.img_size, self.img_size):
            raise UserError(
                f"image: shape {tuple(image.shape)} does not match the model (B, C, {self.img_size}, {self.img_size}); "
                "build the model with img_size set to the input size"
            )
        return self.proj(image).flatten(2).transpose(1, 2)  # (B, N, D)
