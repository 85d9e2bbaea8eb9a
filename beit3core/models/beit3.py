"""BEiT-3: the Multiway Transformer of "Image as a Foreign Language" (Wang et al., arXiv 2208.10442).

All of the model family is in this file, in reading order: config -> block -> KV cache -> model ->
registered variants (sizes in configs.py). Parameter counts are in `counting.py`. The reusable pieces live in `beit3core.layers`.

Two layouts share one code path (`Beit3Config.layout`):
- "unilm": the released microsoft/unilm `beit3/` + torchscale model. Every projection and LayerNorm has a
  vision expert (released name A) and a language expert (B); official checkpoints load through
  `beit3core.checkpoint.convert_unilm_state_dict`.
- "paper": shared self-attention, vision and language FFN experts in every layer, and a vision-language
  FFN expert in the top `num_vl_layers` layers that all tokens of an image+text input go through.

A sequence travels through the blocks as its two parts, (vision, text), so each expert only ever sees its
own tokens and nothing is split or concatenated per layer; only attention joins them (one concatenation of
q/k/v). The output joins them once: vision tokens first ([cls, patches...]), then text.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from beit3core.errors import UserError
from beit3core.layers.attention import Attention
from beit3core.layers.drop import DropPath, drop_path_rates
from beit3core.layers.mlp import Mlp
from beit3core.layers.multiway import Multiway
from beit3core.layers.patch_embed import PatchEmbed
from beit3core.models.configs import MODEL_CONFIGS, limit_error
from beit3core.models.registry import register_model


class ConfigError(UserError, ValueError):
    """An inconsistent config value (also a ValueError)."""


class UnknownConfigField(UserError, TypeError):
    """A config field that does not exist (also a TypeError)."""


@dataclass(frozen=True)
class Beit3Config:
    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    vocab_size: int = 64010  # 64002 used ids + 8 never-used rows, kept for the released checkpoint shape
    text_positions: int = 1024  # rows of the text position table (unilm: 1022 usable after the +2 offset)
    layout: str = "unilm"  # "unilm" (released, per-modality attention) | "paper" (shared attention + VL-FFN)
    num_vl_layers: int = 0  # paper layout: top layers with a vision-language FFN expert (paper: 3)
    drop_path_rate: float = 0.0  # stochastic depth, linear from 0 at the first layer to this at the last
    layer_norm_eps: float = 1e-5
    normalize_output: bool = True  # final per-modality LayerNorm (released: False for in1k and VQA models)
    checkpoint_activations: bool = False  # recompute each block in backward (torch.utils.checkpoint)

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            kind = {"int": int, "float": (int, float), "bool": bool, "str": str}[f.type]
            if not isinstance(value, kind) or (f.type in ("int", "float") and isinstance(value, bool)):
                raise ConfigError(f"Beit3Config.{f.name}: expected {f.type}, got {value!r}")
        if too_large := limit_error(self):  # before anything is allocated: config.json may be untrusted
            raise ConfigError(too_large)
        for name in ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads", "mlp_dim",
                     "vocab_size", "text_positions"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"Beit3Config.{name}: must be positive, got {getattr(self, name)}")
        if self.layout not in ("unilm", "paper"):
            raise ConfigError(f"Beit3Config.layout: {self.layout!r} is not 'unilm' or 'paper'")
        if self.embed_dim % self.num_heads:
            raise ConfigError(f"Beit3Config.embed_dim: {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.img_size % self.patch_size:
            raise ConfigError(f"Beit3Config.img_size: {self.img_size} is not a multiple of patch_size {self.patch_size}")
        if not 0 <= self.num_vl_layers <= self.depth:
            raise ConfigError(f"Beit3Config.num_vl_layers: {self.num_vl_layers} not in [0, depth={self.depth}]")
        if self.layout == "unilm" and self.num_vl_layers:
            raise ConfigError("Beit3Config.num_vl_layers: the unilm layout has no vision-language experts; use layout='paper'")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ConfigError(f"Beit3Config.drop_path_rate: {self.drop_path_rate} not in [0, 1)")
        if self.text_positions <= self.pos_offset:
            raise ConfigError(f"Beit3Config.text_positions: {self.text_positions} leaves no usable text position")

    @property
    def pos_offset(self) -> int:
        """Position-table rows before the first used one: fairseq's 2 in the released layout."""
        return 2 if self.layout == "unilm" else 0

    @property
    def grid_size(self) -> tuple[int, int]:
        return (self.img_size // self.patch_size,) * 2

    @property
    def num_patches(self) -> int:
        return self.grid_size[0] * self.grid_size[1]

    @classmethod
    def from_dict(cls, values: dict) -> Beit3Config:
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise UnknownConfigField(
                f"Beit3Config: unknown field(s) {', '.join(unknown)}; valid: {', '.join(f.name for f in dataclasses.fields(cls))}"
            )
        return cls(**values)

    def replace(self, **changes) -> Beit3Config:
        return Beit3Config.from_dict({**dataclasses.asdict(self), **changes})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


POSITION_INITS = ("small", "normal")  # position tables at pretraining start: the paper's, the release's

def _layer_norm(dim: int, eps: float):
    return lambda: nn.LayerNorm(dim, eps=eps)


class Block(nn.Module):
    """Pre-LN Multiway block: x + Attn(LN(x)), then x + FFN(LN(x)), each expert on its own modality."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, *, shared_attention: bool, vl_expert: bool,
                 drop_path: float, eps: float):
        super().__init__()
        self.norm1 = Multiway(_layer_norm(dim, eps))
        self.attn = Attention(dim, num_heads, multiway=not shared_attention, eps=eps)
        self.norm2 = Multiway(_layer_norm(dim, eps))
        self.mlp = Multiway(lambda: Mlp(dim, mlp_dim, eps=eps))
        # Paper layout, top layers: the vision-language expert that takes every token of a fused input.
        self.vl_norm = nn.LayerNorm(dim, eps=eps) if vl_expert else None
        self.vl_mlp = Mlp(dim, mlp_dim, eps=eps) if vl_expert else None
        self.drop_path = DropPath(drop_path)

    def forward(self, vision, text, mask=None, past=None, fused: bool = False):
        av, at, kv = self.attn(*self.norm1(vision, text), mask=mask, past=past)
        av, at = self.drop_path(av, at)
        vision = None if vision is None else vision + av
        text = None if text is None else text + at
        if fused and self.vl_mlp is not None:
            fv = None if vision is None else self.vl_mlp(self.vl_norm(vision))
            ft = None if text is None else self.vl_mlp(self.vl_norm(text))
        else:
            fv, ft = self.mlp(*self.norm2(vision, text))
        fv, ft = self.drop_path(fv, ft)
        vision = None if vision is None else vision + fv
        text = None if text is None else text + ft
        return vision, text, kv

    def output_projections(self) -> list[nn.Linear]:
        """The last linear layer of each sublayer: attention `proj` and FFN `fc2` of every expert."""
        mlps = list(self.mlp.children()) + ([self.vl_mlp] if self.vl_mlp is not None else [])
        return list(self.attn.proj.children()) + [m.fc2 for m in mlps]


@dataclass(frozen=True)
class Beit3KVCache:
    """Keys and values of the tokens seen so far, for incremental (left-to-right) decoding.

    `layers[i]` is layer i's (k, v), each (B, heads, length, head_dim); `padding` (B, length) marks padded
    keys (None: none); the first `num_vision` slots are vision tokens. Immutable: every step returns a new one.
    """

    layers: tuple[tuple[torch.Tensor, torch.Tensor], ...] = ()
    padding: torch.Tensor | None = None
    num_vision: int = 0

    @property
    def length(self) -> int:
        return self.layers[0][0].shape[2] if self.layers else 0

    @property
    def num_text(self) -> int:
        return self.length - self.num_vision

    def select(self, index: torch.Tensor) -> Beit3KVCache:
        """Reorder/replicate along the batch (beam search)."""
        return Beit3KVCache(
            tuple((k.index_select(0, index), v.index_select(0, index)) for k, v in self.layers),
            None if self.padding is None else self.padding.index_select(0, index),
            self.num_vision,
        )

    def crop(self, length: int) -> Beit3KVCache:
        """Keep the first `length` slots (e.g. drop the trailing <mask> slot of a captioning step)."""
        if length < self.num_vision:
            raise ValueError(f"kv cache: cannot crop to {length} < {self.num_vision} vision slots")
        return Beit3KVCache(
            tuple((k[:, :, :length], v[:, :, :length]) for k, v in self.layers),
            None if self.padding is None else self.padding[:, :length],
            self.num_vision,
        )


@dataclass
class Beit3Output:
    hidden: torch.Tensor  # (B, T, D): vision tokens first ([cls, patches...]), then text
    split: int  # number of vision tokens in `hidden`
    vision_cls: torch.Tensor | None = None  # hidden[:, 0]
    text_cls: torch.Tensor | None = None  # hidden[:, split]
    kv_cache: Beit3KVCache | None = field(default=None, repr=False)


def _trunc_normal_(t: torch.Tensor, std: float) -> torch.Tensor:
    """N(0, std) truncated at ±1 std, by the inverse CDF (torch's rejection sampler is slow this narrow)."""
    lo = 0.5 * (1 + math.erf(-1 / math.sqrt(2)))  # Φ(-1)
    t.uniform_(2 * lo - 1, 1 - 2 * lo).erfinv_().mul_(std * math.sqrt(2))
    return t.clamp_(-std, std)


class Beit3Model(nn.Module):
    """The BEiT-3 backbone: embeddings, `depth` Multiway blocks, final per-modality LayerNorm."""

    def __init__(self, config: Beit3Config):
        super().__init__()
        if not isinstance(config, Beit3Config):
            raise TypeError(f"Beit3Model: expected a Beit3Config, got {type(config).__name__}")
        self.config = c = config
        d = c.embed_dim
        self.patch_embed = PatchEmbed(c.img_size, c.patch_size, c.in_chans, d)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, d))  # replaces masked patches (MIM)
        self.text_embed = nn.Embedding(c.vocab_size, d)
        # Learned absolute positions, one table per modality; the unilm layout skips 2 rows (fairseq).
        self.vision_pos_embed = nn.Parameter(torch.empty(c.pos_offset + 1 + c.num_patches, d))
        self.text_pos_embed = nn.Parameter(torch.empty(c.text_positions, d))
        rates = drop_path_rates(c.drop_path_rate, c.depth)
        self.blocks = nn.ModuleList(
            Block(d, c.num_heads, c.mlp_dim, shared_attention=c.layout == "paper",
                  vl_expert=i >= c.depth - c.num_vl_layers, drop_path=rates[i], eps=c.layer_norm_eps)
            for i in range(c.depth)
        )
        self.norm = Multiway(_layer_norm(d, c.layer_norm_eps) if c.normalize_output else nn.Identity)
        self.init_weights()

    @property
    def num_patches(self) -> int:
        return self.patch_embed.num_patches

    @property
    def grid_size(self) -> tuple[int, int]:
        return self.patch_embed.grid_size

    @torch.no_grad()
    def init_weights(self):
        """As the released BEiT3Wrapper: trunc-normal(0.02, ±1 std) Linear, LayerNorm 1/0, text N(0, d^-0.5)."""
        if self.cls_token.is_meta:
            return
        for m in self.modules():
            if isinstance(m, nn.Linear):
                _trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.text_embed.weight, std=self.config.embed_dim**-0.5)
        nn.init.normal_(self.vision_pos_embed)  # position tables keep nn.Embedding's N(0, 1), as released
        nn.init.normal_(self.text_pos_embed)
        nn.init.zeros_(self.cls_token)
        nn.init.zeros_(self.mask_token)

    @torch.no_grad()
    def init_for_pretraining(self, *, position_init: str = "small"):
        """The paper's init for pretraining from scratch (§2.3, as BEiT): weights in a small range
        (trunc-normal 0.02 at ±0.02), then the output projection of the attention and of the FFN in layer l
        (1-based) divided by sqrt(2l), as the released BEiT3Wrapper.fix_init_weight (dead code there).
        `position_init`: "small" puts the position tables in the same small range (the paper); "normal" keeps
        nn.Embedding's N(0, 1), which the released code leaves them at. A model that loads a checkpoint keeps
        `init_weights`."""
        if position_init not in POSITION_INITS:
            raise ValueError(f"position_init {position_init!r}: one of {', '.join(POSITION_INITS)}")
        if self.cls_token.is_meta:
            return
        self.init_weights()
        if position_init == "small":
            _trunc_normal_(self.vision_pos_embed, std=0.02)
            _trunc_normal_(self.text_pos_embed, std=0.02)
        for layer, block in enumerate(self.blocks, start=1):
            for proj in block.output_projections():
                proj.weight.div_(math.sqrt(2.0 * layer))

    def no_weight_decay(self) -> set[str]:
        return {"cls_token", "mask_token", "vision_pos_embed"}

    # -- embeddings ---------------------------------------------------------------------------------------
    def embed_image(self, image: torch.Tensor, image_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.patch_embed(image)
        if image_mask is not None:
            if tuple(image_mask.shape) != tuple(x.shape[:2]):
                raise UserError(f"image_mask: shape {tuple(image_mask.shape)}, expected {tuple(x.shape[:2])}")
            x = torch.where(image_mask.unsqueeze(-1), self.mask_token.to(x.dtype), x)
        pos = self.vision_pos_embed[self.config.pos_offset:]
        cls = (self.cls_token + pos[:1]).expand(x.shape[0], -1, -1)
        return torch.cat([cls, x + pos[1:]], dim=1)

    def embed_text(self, text_ids: torch.Tensor, positions: torch.Tensor | None, padding: torch.Tensor | None,
                   start: int = 0) -> torch.Tensor:
        length = text_ids.shape[1]
        if positions is None:
            positions = torch.arange(start, start + length, device=text_ids.device)
        rows = positions + self.config.pos_offset
        if int(rows.max()) >= self.text_pos_embed.shape[0]:
            raise UserError(
                f"text: position {int(positions.max())} exceeds the model's {self.text_pos_embed.shape[0] - self.config.pos_offset} text positions"
            )
        x = self.text_embed(text_ids) + F.embedding(rows, self.text_pos_embed)
        if padding is not None:
            x = x.masked_fill(padding.unsqueeze(-1), 0.0)  # padded embeddings are zero, as released
        return x

    # -- forward ------------------------------------------------------------------------------------------
    def forward(
        self,
        image: torch.Tensor | None = None,
        text_ids: torch.Tensor | None = None,
        text_padding_mask: torch.Tensor | None = None,
        image_mask: torch.Tensor | None = None,
        text_causal: bool = False,
        text_positions: torch.Tensor | None = None,
        kv_cache: Beit3KVCache | None = None,
    ) -> Beit3Output:
        """Encode an image, a text, or both (vision tokens first).

        image (B, 3, H, W); text_ids (B, L); text_padding_mask (B, L) True = pad; image_mask (B, num_patches)
        True = patch replaced by the mask token; text_causal: text tokens see the image and only earlier
        (or same) text tokens, image tokens never see text (sequence-to-sequence). text_positions: 0-based
        positions of the text tokens (default: continuing after the cached text). kv_cache: keys/values of
        earlier tokens (pass `Beit3KVCache()` to start one); the updated cache is `out.kv_cache`.
        """
        if image is None and text_ids is None:
            raise UserError("model input: give an image, text_ids or both")
        past = kv_cache if kv_cache is not None and kv_cache.layers else None
        if past is not None and image is not None and past.num_text:
            raise UserError("model input: an image cannot follow text already in the kv cache")
        if text_padding_mask is not None:
            text_padding_mask = text_padding_mask.bool()
        if image_mask is not None:
            image_mask = image_mask.bool()

        vision = None if image is None else self.embed_image(image, image_mask)
        text = None
        if text_ids is not None:
            start = 0 if past is None else past.num_text
            text = self.embed_text(text_ids, text_positions, text_padding_mask, start)

        ref = vision if vision is not None else text
        batch, nv = ref.shape[0], 0 if vision is None else vision.shape[1]
        nt = 0 if text is None else text.shape[1]
        past_len, past_vision = (0, 0) if past is None else (past.length, past.num_vision)
        num_vision = past_vision + nv
        padding = self._key_padding(batch, nv, nt, text_padding_mask, past, ref.device)
        mask = self._attention_mask(padding, past_len, nv + nt, num_vision, text_causal, ref.device)
        # Paper layout: the VL expert takes every token of a sequence that holds both modalities.
        fused = num_vision > 0 and (nt > 0 or (past is not None and past.num_text > 0))

        use_ckpt = self.config.checkpoint_activations and self.training and torch.is_grad_enabled()
        new_layers = []
        for i, block in enumerate(self.blocks):
            layer_past = None if past is None else past.layers[i]
            if use_ckpt:
                vision, text, kv = checkpoint(block, vision, text, mask, layer_past, fused, use_reentrant=False)
            else:
                vision, text, kv = block(vision, text, mask, layer_past, fused)
            if kv_cache is not None:
                new_layers.append(kv)
        vision, text = self.norm(vision, text)

        hidden = vision if text is None else text if vision is None else torch.cat([vision, text], dim=1)
        new_cache = None
        if kv_cache is not None:
            new_cache = Beit3KVCache(tuple(new_layers), padding, num_vision)
        return Beit3Output(
            hidden=hidden,
            split=nv,
            vision_cls=hidden[:, 0] if nv else None,
            text_cls=hidden[:, nv] if nt else None,
            kv_cache=new_cache,
        )

    @staticmethod
    def _key_padding(batch, nv, nt, text_padding_mask, past, device) -> torch.Tensor | None:
        """(B, keys) True = padded key, over [past ‖ vision ‖ text]; None when nothing is padded."""
        if text_padding_mask is None and (past is None or past.padding is None):
            return None
        parts = []
        if past is not None:
            parts.append(past.padding if past.padding is not None
                         else torch.zeros(batch, past.length, dtype=torch.bool, device=device))
        if nv:
            parts.append(torch.zeros(batch, nv, dtype=torch.bool, device=device))
        if nt:
            parts.append(text_padding_mask if text_padding_mask is not None
                         else torch.zeros(batch, nt, dtype=torch.bool, device=device))
        return torch.cat(parts, dim=1)

    @staticmethod
    def _attention_mask(padding, past_len, num_new, num_vision, causal, device) -> torch.Tensor | None:
        """Boolean (B|1, 1, queries, keys) mask, True = may attend; None when every token sees every token."""
        keys = past_len + num_new
        allowed = None
        if causal:
            q = torch.arange(past_len, keys, device=device).unsqueeze(1)
            k = torch.arange(keys, device=device).unsqueeze(0)
            # image -> image; text -> image and earlier-or-same text; image -> text blocked.
            allowed = torch.where(q < num_vision, k < num_vision, k <= q)[None, None]
        if padding is not None:
            keep = ~padding[:, None, None, :]
            allowed = keep if allowed is None else allowed & keep
        if allowed is not None:
            # A query with no visible key (an all-padding row) would give NaN; let it see everything.
            allowed = allowed | ~allowed.any(dim=-1, keepdim=True)
        return allowed


# -- registered variants (sizes in configs.py) ------------------------------------------------------------
def _builder(name: str, fields: dict):
    def build(**overrides) -> Beit3Model:
        values = {**fields, **overrides}
        if "num_vl_layers" not in overrides and "layout" in overrides:
            # Switching layout switches its VL experts too: the paper's top 3 layers, none in unilm.
            values["num_vl_layers"] = min(3, values.get("depth", 12)) if overrides["layout"] == "paper" else 0
        return Beit3Model(Beit3Config.from_dict(values))

    build.__name__ = name
    build.__doc__ = f"BEiT-3 {name}: " + ", ".join(f"{k}={v}" for k, v in fields.items())
    return build


for _name, _fields in MODEL_CONFIGS.items():
    register_model(_name, _builder(_name, _fields))
