"""VQ-KD: the BEiT v2 vector-quantised knowledge-distillation visual tokenizer.

Peng et al., "BEiT v2: Masked Image Modeling with Vector-Quantized Visual Tokenizers" (arXiv 2208.06366);
released code microsoft/unilm `beit2/modeling_vqkd.py` and `norm_ema_quantizer.py`. BEiT-3's masked image
modeling predicts these codes.

    image [0, 1] -> x*2-1 -> ViT encoder -> patch tokens (B, N, D)
                 -> encode_task_layer (Linear-Tanh-Linear) -> z (B, N, code_dim), l2-normalised
                 -> nearest code by cosine in an l2-normalised codebook (K, code_dim) -> ids (B, N)
    training:    code map (B, code_dim, g, g) -> ViT decoder (patch 1) -> decode_task_layer
                 -> regress the teacher's patch features (cosine loss) + commitment loss

The codebook is not trained by gradients: it is initialised by cosine k-means on the first batch and then
follows an exponential moving average (decay 0.99) of the l2-normalised mean of the vectors assigned to each
code. Codes nobody picks for a while ("dead" codes) are restarted on random encoder outputs; the released
code leaves them in place, which is why its 8192-code tokenizers report 97-100% rather than guaranteed usage.

Module and parameter names follow the released checkpoints exactly (`encoder.*`, `decoder.*`,
`quantize.embedding.{weight,cluster_size,embed_avg,initted}`, `quantize.cluster_size`,
`encode_task_layer.{0,2}.*`, `decode_task_layer.{0,2}.*`), so those files load with strict=True after
`convert_official_state_dict` removes the teacher and loss entries.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from beit3core import io
from beit3core.errors import UserError

log = logging.getLogger(__name__)


# -- configuration ------------------------------------------------------------------------------------------
# Integer fields of a VQ-KD config: (lowest, highest) value accepted, generous for the released sizes.
_LIMITS = {"img_size": (1, 4096), "patch_size": (1, 256), "in_chans": (1, 64), "embed_dim": (1, 16384),
           "depth": (1, 256), "num_heads": (1, 1024), "decoder_embed_dim": (1, 16384), "decoder_depth": (1, 256),
           "decoder_num_heads": (1, 1024), "codebook_size": (2, 65536), "code_dim": (1, 4096),
           "target_dim": (1, 1 << 20), "dead_code_steps": (0, 1 << 30)}


@dataclass(frozen=True)
class VQKDConfig:
    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int = 768  # encoder width
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    decoder_embed_dim: int = 768
    decoder_depth: int = 1  # released: 1 (`..._1x768x12_...`) or 3 (`..._3x768x12_...`)
    decoder_num_heads: int = 12
    codebook_size: int = 8192
    code_dim: int = 32
    target_dim: int = 512  # decoder output: CLIP ViT-B/16 512, DINO ViT-B/16 768, pixels 3 * patch^2
    decay: float = 0.99  # codebook EMA
    commitment: float = 1.0  # beta of the commitment loss (released: 1.0)
    rec_loss: str = "cosine"  # "cosine" for teacher features (released), "mse" for pixel targets
    dead_code_steps: int = 3  # restart a code unused for this many training steps (0 = never)
    ln_eps: float = 1e-6  # released ViT LayerNorm eps

    def __post_init__(self):
        # A config.json from an untrusted folder is checked before any tensor is allocated (types, then sizes).
        for name, (low, high) in _LIMITS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise UserError(f"VQ-KD config: {name}={value!r} must be an integer in {low}..{high}")
        for name in ("mlp_ratio", "decay", "commitment", "ln_eps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise UserError(f"VQ-KD config: {name}={value!r} must be a finite number")
        if not 0 < self.mlp_ratio <= 64:
            raise UserError(f"VQ-KD config: mlp_ratio={self.mlp_ratio} must be within (0, 64]")
        d, dd = self.embed_dim, self.decoder_embed_dim
        estimate = (12 + 2 * self.mlp_ratio) * (self.depth * d * d + self.decoder_depth * dd * dd)
        if estimate > 4e9:  # the released base tokenizer has ~0.1B
            raise UserError(f"VQ-KD config: about {estimate / 1e9:.0f}B parameters (depth {self.depth}, embed_dim "
                            f"{d}, decoder {self.decoder_depth}x{dd}) is above the limit 4B")
        if self.img_size // self.patch_size > 256:
            raise UserError(f"VQ-KD config: {self.img_size // self.patch_size} patches per side is above 256")
        if self.img_size % self.patch_size:
            raise UserError(f"img_size={self.img_size} must be a multiple of patch_size={self.patch_size}")
        if self.embed_dim % self.num_heads or self.decoder_embed_dim % self.decoder_num_heads:
            raise UserError("embed_dim / decoder_embed_dim must be divisible by their number of heads")
        if self.codebook_size < 2 or self.codebook_size > 65536:
            raise UserError(f"codebook_size={self.codebook_size} must be within 2..65536 (ids are stored as uint16)")
        if self.code_dim < 1 or self.depth < 1 or self.decoder_depth < 1:
            raise UserError("code_dim, depth and decoder_depth must be >= 1")
        if not 0.0 < self.decay < 1.0:
            raise UserError(f"decay={self.decay} must be within (0, 1)")
        if self.rec_loss not in ("cosine", "mse"):
            raise UserError(f"rec_loss={self.rec_loss!r} must be 'cosine' or 'mse'")

    @property
    def grid_size(self) -> int:
        return self.img_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "VQKDConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UserError(f"VQ-KD config: unknown field(s) {', '.join(unknown)}")
        return cls(**values)


def vqkd_base_config(decoder_depth: int = 1, target_dim: int = 512, **overrides) -> VQKDConfig:
    """The released tokenizers: ViT-B/16 encoder at 224, 8192 x 32 codebook, 768-wide decoder."""
    return VQKDConfig(decoder_depth=decoder_depth, target_dim=target_dim, **overrides)


def vqkd_tiny_config(img_size: int = 64, patch_size: int = 8, **overrides) -> VQKDConfig:
    """The small tokenizer: (img_size / patch_size)^2 tokens per image, 512 x 32 codes; the demo runs it at 64 px
    with 16-px patches, the patch grid of its model `beit3_mini_patch16_64`."""
    values = dict(
        img_size=img_size, patch_size=patch_size, embed_dim=128, depth=2, num_heads=4, decoder_embed_dim=128,
        decoder_depth=1, decoder_num_heads=4, codebook_size=512, code_dim=32, target_dim=3 * patch_size**2,
        rec_loss="mse",
    )
    values.update(overrides)
    return VQKDConfig(**values)


# -- the BEiT v2 ViT (encoder and decoder) -----------------------------------------------------------------
class PatchEmbed(nn.Module):
    def __init__(self, in_chans: int, dim: int, patch_size: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, N, D), row-major patches


class Attention(nn.Module):
    """Multi-head self-attention with q and v biases and a fixed zero k bias (BEiT)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        bias = torch.cat((self.q_bias, torch.zeros_like(self.q_bias), self.v_bias))
        q, k, v = F.linear(x, self.qkv.weight, bias).reshape(B, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(B, N, D))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, eps: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """The BEiT v2 VisionTransformer as used inside VQ-KD: absolute positions, no layer-scale, no head,
    output `fc_norm` of the patch tokens (the CLS token only takes part in attention)."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, dim: int, depth: int, num_heads: int,
                 mlp_ratio: float, eps: float):
        super().__init__()
        num_patches = (img_size // patch_size) ** 2
        self.patch_embed = PatchEmbed(in_chans, dim, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, dim))
        self.blocks = nn.ModuleList(Block(dim, num_heads, mlp_ratio, eps) for _ in range(depth))
        self.fc_norm = nn.LayerNorm(dim, eps=eps)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for i, blk in enumerate(self.blocks, start=1):  # BEiT depth-scaled init of residual projections
            blk.attn.proj.weight.data.div_(math.sqrt(2.0 * i))
            blk.mlp.fc2.weight.data.div_(math.sqrt(2.0 * i))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.fc_norm(x[:, 1:])


def task_layer(dim: int, out_dim: int) -> nn.Sequential:
    """Linear -> Tanh -> Linear (keys `.0.*` and `.2.*`)."""
    layer = nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, out_dim))
    for m in (layer[0], layer[2]):
        nn.init.trunc_normal_(m.weight, std=0.02)
        nn.init.zeros_(m.bias)
    return layer


# -- the CLIP teacher's targets -----------------------------------------------------------------------------------
def is_clip_image_tower(name: str) -> bool:
    """A timm CLIP image tower (`vit_base_patch16_clip_224.openai`, ...): its head is CLIP's visual projection."""
    return "_clip_" in name


def clip_patch_targets(tower: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """BEiT v2's CLIP distillation target (modeling_vqkd.py `get_regress_target`: `encode_image(x,
    return_all_tokens=True) @ visual.proj`): every patch token after the tower's final LayerNorm (CLIP `ln_post`),
    CLS dropped, through the visual projection: (B, N, 512) for ViT-B/16.

    `tower` is a timm CLIP image tower built with its head: timm keeps `ln_post` as `norm` (applied to all tokens
    in `forward_features`) and the projection as `head` (weight proj.T, zero bias). `pixels` are normalised with
    the CLIP mean and std.
    """
    tokens = tower.forward_features(pixels)
    return tower.head(tokens[:, int(getattr(tower, "num_prefix_tokens", 1)):])


# -- the quantizer ----------------------------------------------------------------------------------------------
def l2norm(t: torch.Tensor) -> torch.Tensor:
    return F.normalize(t, p=2, dim=-1)


def _all_reduce(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t


def _sample_rows(samples: torch.Tensor, num: int, generator: torch.Generator | None = None) -> torch.Tensor:
    n = samples.shape[0]
    if n >= num:
        idx = torch.randperm(n, generator=generator, device="cpu")[:num]
    else:
        idx = torch.randint(0, n, (num,), generator=generator, device="cpu")
    return samples[idx.to(samples.device)]


def cosine_kmeans(samples: torch.Tensor, num_clusters: int, iters: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Spherical k-means on l2-normalised rows: (means (K, D) l2-normalised, counts (K,)).
    A cluster that ends up empty keeps its previous centre."""
    means = _sample_rows(samples, num_clusters)
    counts = torch.zeros(num_clusters, device=samples.device)
    for _ in range(iters):
        assign = (samples @ means.t()).argmax(dim=-1)
        counts = torch.bincount(assign, minlength=num_clusters).to(samples.dtype)
        sums = torch.zeros_like(means).index_add_(0, assign, samples)
        means = torch.where((counts == 0)[:, None], means, l2norm(sums))
    return means, counts


class CodebookEMA(nn.Module):
    """The codebook (`quantize.embedding.*`): weight (K, D), l2-normalised rows, updated by EMA not by
    gradients; cluster_size / embed_avg are EMA statistics of assignment counts and vector sums."""

    def __init__(self, num_codes: int, dim: int):
        super().__init__()
        self.register_buffer("initted", torch.zeros(1))
        self.register_buffer("weight", torch.zeros(num_codes, dim))
        self.register_buffer("cluster_size", torch.zeros(num_codes))
        self.register_buffer("embed_avg", torch.zeros(num_codes, dim))


class NormEMAQuantizer(nn.Module):
    """Nearest-code lookup by cosine with EMA codebook updates, k-means init and dead-code restarts."""

    def __init__(self, num_codes: int, dim: int, decay: float = 0.99, beta: float = 1.0, dead_code_steps: int = 3):
        super().__init__()
        self.num_codes, self.dim, self.decay, self.beta = num_codes, dim, decay, beta
        self.dead_code_steps = dead_code_steps
        self.embedding = CodebookEMA(num_codes, dim)
        self.register_buffer("cluster_size", torch.zeros(num_codes))  # EMA of per-batch code usage
        # steps since each code was last picked; training state only, not part of the checkpoint layout
        self.register_buffer("idle_steps", torch.zeros(num_codes, dtype=torch.long), persistent=False)

    @torch.no_grad()
    def init_codebook(self, z: torch.Tensor) -> None:
        means, counts = cosine_kmeans(z, self.num_codes)
        if dist.is_available() and dist.is_initialized():
            dist.broadcast(means, 0)
            dist.broadcast(counts, 0)
        self.embedding.weight.copy_(means)
        self.embedding.embed_avg.copy_(means)
        self.embedding.cluster_size.copy_(counts)
        self.cluster_size.copy_(counts)
        self.embedding.initted.fill_(1.0)
        log.info("codebook initialised by k-means on %d vectors: %d of %d codes non-empty",
                 z.shape[0], int((counts > 0).sum()), self.num_codes)

    def lookup(self, z: torch.Tensor) -> torch.Tensor:
        """Ids of the nearest codes (by cosine) for l2-normalised rows z (M, D)."""
        return (z @ self.embedding.weight.t()).argmax(dim=-1)

    @torch.no_grad()
    def _ema_update(self, z: torch.Tensor, ids: torch.Tensor) -> None:
        counts = _all_reduce(torch.bincount(ids, minlength=self.num_codes).to(z.dtype))
        sums = _all_reduce(torch.zeros(self.num_codes, self.dim, dtype=z.dtype, device=z.device).index_add_(0, ids, z))
        d = self.decay
        self.cluster_size.mul_(d).add_(counts, alpha=1 - d)
        self.embedding.cluster_size.mul_(d).add_(counts, alpha=1 - d)
        self.embedding.embed_avg.mul_(d).add_(sums, alpha=1 - d)
        used = counts > 0
        means = l2norm(sums / counts.clamp(min=1)[:, None])
        moved = l2norm(d * self.embedding.weight + (1 - d) * means)
        self.embedding.weight.copy_(torch.where(used[:, None], moved, self.embedding.weight))
        self.idle_steps.add_(1).masked_fill_(used, 0)
        if self.dead_code_steps > 0:
            self._restart_dead(z)

    @torch.no_grad()
    def _restart_dead(self, z: torch.Tensor) -> None:
        dead = self.idle_steps >= self.dead_code_steps
        n = int(dead.sum())
        if n == 0:
            return
        fresh = _sample_rows(z, n)
        if dist.is_available() and dist.is_initialized():
            dist.broadcast(fresh, 0)
        self.embedding.weight[dead] = fresh
        self.embedding.embed_avg[dead] = fresh
        mean_usage = self.cluster_size.mean()
        self.cluster_size[dead] = mean_usage  # give restarted codes a fair usage estimate
        self.embedding.cluster_size[dead] = mean_usage
        self.idle_steps[dead] = 0
        log.debug("restarted %d dead codes", n)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """z (B, N, D) -> (z_q straight-through (B, N, D), commitment loss, ids (B, N))."""
        z = l2norm(z)
        flat = z.reshape(-1, self.dim)
        if self.training and not bool(self.embedding.initted.item()):
            self.init_codebook(flat.detach())
        ids = self.lookup(flat)
        z_q = F.embedding(ids, self.embedding.weight).view_as(z)
        if self.training:
            self._ema_update(flat.detach(), ids)
        loss = self.beta * F.mse_loss(z_q.detach(), z)
        z_q = z + (z_q - z).detach()
        return z_q, loss, ids.view(z.shape[:-1])


# -- the tokenizer model -----------------------------------------------------------------------------------------
class VQKD(nn.Module):
    def __init__(self, cfg: VQKDConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = ViT(cfg.img_size, cfg.patch_size, cfg.in_chans, cfg.embed_dim, cfg.depth, cfg.num_heads,
                           cfg.mlp_ratio, cfg.ln_eps)
        self.quantize = NormEMAQuantizer(cfg.codebook_size, cfg.code_dim, cfg.decay, cfg.commitment,
                                         cfg.dead_code_steps)
        self.decoder = ViT(cfg.grid_size, 1, cfg.code_dim, cfg.decoder_embed_dim, cfg.decoder_depth,
                           cfg.decoder_num_heads, cfg.mlp_ratio, cfg.ln_eps)
        self.encode_task_layer = task_layer(cfg.embed_dim, cfg.code_dim)
        self.decode_task_layer = task_layer(cfg.decoder_embed_dim, cfg.target_dim)

    @staticmethod
    def preprocess(images: torch.Tensor) -> torch.Tensor:
        """[0, 1] -> [-1, 1] (the released `x * 255 / 127.5 - 1`)."""
        return images * 2.0 - 1.0

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Encoder output projected to code space, not yet normalised: (B, N, code_dim), in fp32."""
        h = self.encoder(self.preprocess(images))
        with torch.autocast(device_type=h.device.type, enabled=False):
            return self.encode_task_layer(h.float())

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """images (B, 3, H, W) in [0, 1] -> (z_q (B, N, code_dim), commitment loss, ids (B, N))."""
        return self.quantize(self.features(images))

    def decode(self, z_q: torch.Tensor) -> torch.Tensor:
        """Code vectors (B, N, code_dim) -> predicted targets (B, N, target_dim)."""
        g = self.cfg.grid_size
        code_map = z_q.transpose(1, 2).reshape(z_q.shape[0], self.cfg.code_dim, g, g)
        return self.decode_task_layer(self.decoder(code_map))

    @torch.no_grad()
    def get_codebook_indices(self, images: torch.Tensor) -> torch.Tensor:
        """(B, N) code ids in row-major patch order; no codebook side effects."""
        z = l2norm(self.features(images)).reshape(-1, self.cfg.code_dim)
        return self.quantize.lookup(z).view(images.shape[0], -1)

    def reconstruction_loss(self, rec: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.cfg.rec_loss == "cosine":
            return (1.0 - F.cosine_similarity(rec.float(), target.float(), dim=-1)).mean()
        return F.mse_loss(rec.float(), target.float())

    def forward(self, images: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """One training forward: images in [0, 1], target (B, N, target_dim) -> losses and ids."""
        z_q, commit, ids = self.encode(images)
        rec = self.decode(z_q)
        rec_loss = self.reconstruction_loss(rec, target)
        return {"loss": rec_loss + commit, "rec_loss": rec_loss.detach(), "commit_loss": commit.detach(), "ids": ids}


# -- official checkpoints ----------------------------------------------------------------------------------------
_DROPPED_PREFIXES = ("teacher_model.", "scaling_layer.", "loss")


def convert_official_state_dict(obj: dict) -> dict[str, torch.Tensor]:
    """A released BEiT v2 tokenizer file (or its state dict) -> this module's state dict.

    Unwraps `model` / `state_dict` / `module`, strips `module.` and `_orig_mod.` prefixes, and removes the
    teacher, scaling-layer and loss entries (as the released loader does). Key names are otherwise kept.
    """
    for key in ("model", "state_dict", "module"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    out = {}
    for k, v in obj.items():
        for prefix in ("module.", "_orig_mod."):
            if k.startswith(prefix):
                k = k[len(prefix):]
        if k.startswith(_DROPPED_PREFIXES) or not isinstance(v, torch.Tensor):
            continue
        out[k] = v
    return out


def config_from_state_dict(sd: dict[str, torch.Tensor], **overrides) -> VQKDConfig:
    """Infer the sizes of a VQ-KD state dict (head counts cannot be read off shapes: width // 64 assumed)."""
    try:
        embed_dim, in_chans, patch, _ = sd["encoder.patch_embed.proj.weight"].shape
        num_patches = sd["encoder.pos_embed"].shape[1] - 1
        dec_dim = sd["decoder.cls_token"].shape[-1]
        codebook_size, code_dim = sd["quantize.embedding.weight"].shape
        target_dim = sd["decode_task_layer.2.weight"].shape[0]
        mlp_hidden = sd["encoder.blocks.0.mlp.fc1.weight"].shape[0]
    except KeyError as err:
        raise UserError(f"not a VQ-KD tokenizer checkpoint: missing key {err.args[0]!r}") from None
    grid = int(round(math.sqrt(num_patches)))
    if grid * grid != num_patches:
        raise UserError(f"VQ-KD checkpoint: {num_patches} positions do not form a square grid")

    def depth(prefix: str) -> int:
        return len({k.split(".")[2] for k in sd if k.startswith(prefix + ".blocks.")})

    values = dict(
        img_size=grid * patch, patch_size=patch, in_chans=in_chans, embed_dim=embed_dim, depth=depth("encoder"),
        num_heads=max(1, embed_dim // 64), mlp_ratio=mlp_hidden / embed_dim, decoder_embed_dim=dec_dim,
        decoder_depth=depth("decoder"), decoder_num_heads=max(1, dec_dim // 64), codebook_size=codebook_size,
        code_dim=code_dim, target_dim=target_dim,
    )
    values.update(overrides)
    return VQKDConfig(**values)


def load_official_checkpoint(uri: str, **overrides) -> VQKD:
    """Build a VQKD from a released BEiT v2 tokenizer `.pth` (path or s3:// URI) and load it strictly."""
    with io.local_path(uri) as path:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # pickle errors, non-tensor payloads refused by weights_only
            raise UserError(f"{uri}: cannot load as a weights-only checkpoint ({type(err).__name__}: "
                            f"{str(err).splitlines()[0] if str(err) else ''})") from None
    if not isinstance(obj, dict):
        raise UserError(f"{uri}: expected a state dict, got {type(obj).__name__}")
    sd = convert_official_state_dict(obj)
    model = VQKD(config_from_state_dict(sd, **overrides))
    result = model.load_state_dict(sd, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise UserError(f"{uri}: VQ-KD key mismatch: missing {result.missing_keys[:5]}, "
                        f"unexpected {result.unexpected_keys[:5]}")
    if not bool(model.quantize.embedding.initted.item()):
        model.quantize.embedding.initted.fill_(1.0)  # a trained codebook is initialised whatever the flag says
    return model.eval()
