"""Training VQ-KD on the user's images, and the VisualTokenizer used by pretraining.

    vt = VisualTokenizer.load("artifacts/tokens_visual")      # folder with tokenizer/{model.safetensors,config.json}
    ids = vt.encode(images)                                   # (B, 3, H, W) in [0, 1] -> LongTensor (B, grid*grid)

The distillation target is a frozen timm model's patch features (a model name plus a local or s3://
checkpoint: nothing is downloaded) or, with no teacher, the image's own pixels per patch, so a tokenizer can
be trained anywhere. Training logs codebook usage (codes used, perplexity) per epoch.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from collections.abc import Callable

import numpy as np
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

from beit3core import io
from beit3core.errors import UserError
from beit3core.progress import progress_bar
from beit3core.tokenizers.vqkd import (
    VQKD,
    VQKDConfig,
    clip_patch_targets,
    is_clip_image_tower,
    load_official_checkpoint,
)

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


# -- images -------------------------------------------------------------------------------------------------------
def resized_rgb(img, img_size: int):
    """PIL image -> RGB PIL image of img_size x img_size, bicubic (aspect ratio not kept)."""
    img = img.convert("RGB") if img.mode != "RGB" else img
    return img.resize((img_size, img_size), Image.BICUBIC) if img.size != (img_size, img_size) else img


def put_chw(dst: np.ndarray, view) -> None:
    """Write an RGB PIL image into a uint8 (3, H, W) array (a batch row). PIL splits the bands (C), so each is
    one plain copy: 0.065 against 0.085 ms for a 224-px view copied through a transposed array (median of 7)."""
    for channel, band in zip(dst, view.split()):
        channel[...] = np.asarray(band)


def image_to_uint8(img, img_size: int) -> torch.Tensor:
    """PIL image -> uint8 tensor (3, img_size, img_size): RGB, bicubic resize (aspect ratio not kept)."""
    out = torch.empty((3, img_size, img_size), dtype=torch.uint8)
    put_chw(out.numpy(), resized_rgb(img, img_size))
    return out


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float in [0, 1]; float input is returned as float32."""
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()


def code_usage(counts: torch.Tensor) -> dict:
    """Codes used, their fraction of the codebook and the perplexity exp(H) of the usage distribution."""
    counts = counts.double()
    total = counts.sum().clamp(min=1)
    p = counts / total
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    used = int((counts > 0).sum())
    return {"codes_used": used, "usage": used / counts.numel(), "perplexity": float(entropy.exp())}


# -- distillation targets -----------------------------------------------------------------------------------------------
class PixelTarget(nn.Module):
    """No teacher: regress each patch's pixels in [-1, 1], flattened (B, N, 3 * p * p)."""

    def __init__(self, patch_size: int):
        super().__init__()
        self.patch_size = patch_size
        self.dim = 3 * patch_size**2

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        patches = F.unfold(images * 2.0 - 1.0, kernel_size=self.patch_size, stride=self.patch_size)
        return patches.transpose(1, 2)  # (B, N, 3*p*p), row-major patch order


class TimmTeacher(nn.Module):
    """A frozen timm model whose patch features (resampled to the tokenizer grid) are the targets. A CLIP image
    tower keeps its head: its targets are the projected features, as BEiT v2 distils (`vqkd.clip_patch_targets`)."""

    def __init__(self, name: str, checkpoint: str, grid_size: int):
        super().__init__()
        self.clip = is_clip_image_tower(name)
        try:
            # a CLIP tower's head is CLIP's visual projection (kept); any other head is a classifier (dropped)
            self.model = timm.create_model(name, pretrained=False, **({} if self.clip else {"num_classes": 0}))
        except RuntimeError as err:  # timm: "Unknown model (...)"
            raise UserError(f"teacher {name!r}: {err}") from None
        self.model.load_state_dict(_load_teacher_weights(checkpoint, self.model), strict=False)
        self.model.eval().requires_grad_(False)
        cfg = getattr(self.model, "pretrained_cfg", None) or {}
        self.input_size = int(cfg.get("input_size", (3, 224, 224))[-1])
        self.register_buffer("mean", torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406))).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(cfg.get("std", (0.229, 0.224, 0.225))).view(1, 3, 1, 1))
        self.prefix_tokens = int(getattr(self.model, "num_prefix_tokens", 0))
        self.grid_size = grid_size
        self.dim = int(self.model.head.out_features if self.clip else self.model.num_features)

    def train(self, mode: bool = True):  # the teacher stays in eval mode
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(images, size=(self.input_size, self.input_size), mode="bicubic", align_corners=False)
        pixels = (x.clamp(0, 1) - self.mean) / self.std
        feats = clip_patch_targets(self.model, pixels) if self.clip else self.model.forward_features(pixels)
        if feats.dim() == 3:  # ViT-like tokens (B, T, D): drop CLS/register tokens, make a map
            tokens = feats if self.clip else feats[:, self.prefix_tokens:]
            side = int(round(math.sqrt(tokens.shape[1])))
            if side * side != tokens.shape[1]:
                raise UserError(f"teacher gives {tokens.shape[1]} patch tokens, not a square grid")
            feats = tokens.transpose(1, 2).reshape(tokens.shape[0], -1, side, side)
        if feats.shape[-1] != self.grid_size:
            feats = F.interpolate(feats, size=(self.grid_size, self.grid_size), mode="bilinear", align_corners=False)
        return feats.flatten(2).transpose(1, 2)


def _load_teacher_weights(uri: str, model: nn.Module) -> dict:
    with io.local_path(uri) as path:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise UserError(f"{uri}: cannot load teacher weights ({type(err).__name__})") from None
    for key in ("model", "state_dict", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict):
        raise UserError(f"{uri}: expected a state dict for the teacher")
    sd = {k.removeprefix("module."): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    missing = sorted(set(model.state_dict()) - set(sd))
    if missing:
        raise UserError(f"{uri}: teacher checkpoint does not fit the model ({len(missing)} missing keys, e.g. {missing[0]!r})")
    shapes = model.state_dict()
    bad = [k for k in shapes if sd[k].shape != shapes[k].shape]
    if bad:
        raise UserError(f"{uri}: teacher tensor {bad[0]!r} has shape {tuple(sd[bad[0]].shape)}, "
                        f"model expects {tuple(shapes[bad[0]].shape)}")
    return {k: sd[k] for k in shapes}


def make_teacher(name: str | None, checkpoint: str | None, grid_size: int, patch_size: int) -> nn.Module:
    if name and not checkpoint:
        raise UserError(f"teacher {name!r} needs --teacher-checkpoint (nothing is downloaded)")
    if checkpoint and not name:
        raise UserError("--teacher-checkpoint needs --teacher (a timm model name)")
    return TimmTeacher(name, checkpoint, grid_size) if name else PixelTarget(patch_size)


# -- training -------------------------------------------------------------------------------------------------------
def train_vqkd(
    model: VQKD,
    images: torch.Tensor,
    teacher: Callable[[torch.Tensor], torch.Tensor],
    *,
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 3e-4,
    weight_decay: float = 1e-4,
    warmup_epochs: float = 1.0,
    hflip: bool = True,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Train `model` on uint8 images (N, 3, S, S) at the model's img_size; returns the training report.

    AdamW (betas 0.9, 0.99, as released), linear warmup then cosine decay per step. The codebook is
    k-means-initialised on the first batch. Per epoch the report holds the mean losses and the codebook usage
    of the epoch's training assignments; `final` is the usage over all images in eval mode.
    """
    n = images.shape[0]
    if n == 0:
        raise UserError("no images to train the visual tokenizer on")
    if epochs < 1 or batch_size < 1:
        raise UserError(f"epochs={epochs} and batch_size={batch_size} must be >= 1")
    if images.shape[-1] != model.cfg.img_size or images.shape[-2] != model.cfg.img_size:
        raise UserError(f"images are {tuple(images.shape[-2:])}, the tokenizer expects {model.cfg.img_size}")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]  # biases, norms, cls/pos embeddings (released no_weight_decay)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.99))
    steps_per_epoch = math.ceil(n / batch_size)
    total, warmup = epochs * steps_per_epoch, max(1, int(warmup_epochs * steps_per_epoch))

    def lr_at(step: int) -> float:
        if step < warmup:
            return lr * (step + 1) / warmup
        return 0.5 * lr * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    history, step = [], 0
    for epoch in range(epochs):
        model.train()
        counts = torch.zeros(model.cfg.codebook_size, dtype=torch.long)
        sums = {"loss": 0.0, "rec_loss": 0.0, "commit_loss": 0.0}
        order = torch.randperm(n, generator=gen)
        bar = progress_bar(range(steps_per_epoch), desc=f"vq-kd epoch {epoch + 1}/{epochs}", disable=not progress, leave=False)
        for b in bar:
            batch = to_unit(images[order[b * batch_size : (b + 1) * batch_size]])
            if hflip:
                flip = torch.rand(batch.shape[0], generator=gen) < 0.5
                batch[flip] = batch[flip].flip(-1)
            with torch.no_grad():
                target = teacher(batch)
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
            out = model(batch, target)
            opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            opt.step()
            step += 1
            counts += torch.bincount(out["ids"].reshape(-1).cpu(), minlength=model.cfg.codebook_size)
            for k in sums:
                sums[k] += float(out[k].detach())
            bar.set_postfix(loss=f"{float(out['loss'].detach()):.4f}")
        usage = code_usage(counts)
        record = {"epoch": epoch + 1, **{k: v / steps_per_epoch for k, v in sums.items()}, **usage}
        history.append(record)
        log.info("epoch %d/%d: loss %.4f (rec %.4f, commit %.4f), codes used %d/%d (%.1f%%), perplexity %.1f",
                 epoch + 1, epochs, record["loss"], record["rec_loss"], record["commit_loss"], usage["codes_used"],
                 model.cfg.codebook_size, 100 * usage["usage"], usage["perplexity"])
    final = code_usage(eval_code_counts(model, images, batch_size=max(batch_size, 128)))
    log.info("final codebook usage (eval, %d images): %d/%d codes (%.1f%%), perplexity %.1f", n, final["codes_used"],
             model.cfg.codebook_size, 100 * final["usage"], final["perplexity"])
    return {"epochs": history, "final": final, "images": n, "steps": step, "batch_size": batch_size, "lr": lr,
            "weight_decay": weight_decay, "seed": seed}


@torch.no_grad()
def eval_code_counts(model: VQKD, images: torch.Tensor, batch_size: int = 128) -> torch.Tensor:
    """How often each code is picked over `images` (uint8 or [0, 1] float), in eval mode."""
    model.eval()
    counts = torch.zeros(model.cfg.codebook_size, dtype=torch.long)
    for i in range(0, images.shape[0], batch_size):
        ids = model.get_codebook_indices(to_unit(images[i : i + batch_size]))
        counts += torch.bincount(ids.reshape(-1).cpu(), minlength=model.cfg.codebook_size)
    return counts


# -- the tokenizer -----------------------------------------------------------------------------------------------------
class VisualTokenizer:
    """A trained VQ-KD in eval mode: images -> code ids (row-major patches)."""

    def __init__(self, model: VQKD, meta: dict | None = None):
        self.model = model.eval()
        self.meta = dict(meta or {})

    @property
    def config(self) -> VQKDConfig:
        return self.model.cfg

    @property
    def grid_size(self) -> int:
        return self.model.cfg.grid_size

    @property
    def codebook_size(self) -> int:
        return self.model.cfg.codebook_size

    @property
    def img_size(self) -> int:
        return self.model.cfg.img_size

    @property
    def device(self) -> torch.device:
        return self.model.quantize.embedding.weight.device

    def to(self, device) -> "VisualTokenizer":
        self.model.to(device)
        return self

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) in [0, 1] (or uint8) -> LongTensor (B, grid*grid); other sizes are resized (bicubic)."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise UserError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        x = to_unit(images).to(self.device)
        if x.shape[-2:] != (self.img_size, self.img_size):
            x = F.interpolate(x, size=(self.img_size, self.img_size), mode="bicubic", align_corners=False).clamp_(0, 1)
        self.model.eval()
        return self.model.get_codebook_indices(x).long()

    # -- persistence
    @staticmethod
    def _folder(uri: str) -> str:
        """The tokenizer folder: `uri` itself, or the `tokenize visual` output's tokenizer/."""
        for folder in (uri, io.join(uri, "tokenizer")):
            if io.exists(io.join(folder, CONFIG_FILE)) and io.exists(io.join(folder, WEIGHTS_FILE)):
                return folder
        raise UserError(f"{uri}: no visual tokenizer found (expected {CONFIG_FILE} and {WEIGHTS_FILE})")

    @classmethod
    def read_config(cls, uri: str) -> VQKDConfig:
        """The saved tokenizer's config (image size, grid, codebook) without loading its weights."""
        where = io.join(cls._folder(uri), CONFIG_FILE)
        meta = io.read_json(where)
        if not isinstance(meta, dict) or not isinstance(meta.get("model"), dict):
            raise UserError(f"{where}: missing field 'model'")
        try:
            return VQKDConfig.from_dict(meta["model"])
        except UserError as err:
            raise UserError(f"{where}: {err}") from None

    @classmethod
    def load(cls, uri: str, device: str | torch.device = "cpu") -> "VisualTokenizer":
        """Load a saved tokenizer: its folder, or the `tokenize visual` output folder holding tokenizer/."""
        folder = cls._folder(uri)
        model = VQKD(cls.read_config(folder))
        with io.local_path(io.join(folder, WEIGHTS_FILE)) as path:
            state = load_file(path)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise UserError(f"{io.join(folder, WEIGHTS_FILE)}: does not match its config ({str(err).splitlines()[0]})") from None
        return cls(model.to(device), io.read_json(io.join(folder, CONFIG_FILE)))

    @classmethod
    def from_official(cls, uri: str, **overrides) -> "VisualTokenizer":
        """Import a released BEiT v2 tokenizer `.pth` (e.g. vqkd_encoder_base_decoder_3x768x12_clip)."""
        return cls(load_official_checkpoint(uri, **overrides), {"source": {"import_checkpoint": uri}})

    def save(self, uri: str, **meta) -> None:
        """Write model.safetensors, then config.json ({"model": config, **meta}) into the folder `uri`."""
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        with tempfile.TemporaryDirectory(prefix="beit3-vt-") as tmp:
            local = os.path.join(tmp, WEIGHTS_FILE)
            save_file(state, local, metadata={"format": "pt", "kind": "beit3-vqkd"})
            with open(local, "rb") as f:
                io.write_bytes(io.join(uri, WEIGHTS_FILE), f.read())
        self.meta = {**self.meta, **meta, "model": self.config.to_dict()}
        io.write_text(io.join(uri, CONFIG_FILE), json.dumps(self.meta, indent=2, sort_keys=True) + "\n")

    def __repr__(self) -> str:
        return f"VisualTokenizer(img_size={self.img_size}, grid={self.grid_size}, codebook={self.codebook_size}x{self.config.code_dim})"
