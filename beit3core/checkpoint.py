"""Checkpoint I/O: official microsoft/unilm BEiT-3 files in, native safetensors folders in and out.

Key rule of `convert_unilm_state_dict`: the output always uses task-model names. Backbone keys (`beit3.*`
in the released files, or the bare torchscale names) become `backbone.<beit3core name>`; every other key
(the task heads `fc_norm, head, pooler, vision_head, language_head, logit_scale, mlm_head`, and keys we
have no use for such as `mim_head`) passes through unchanged. `load_pretrained` then fits the dict to the
model it is given: a task model (with `.backbone`) takes it as is, a bare backbone takes the `backbone.*`
keys without the prefix; whatever the model does not hold is reported as unexpected, never fatal.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from beit3core import io
from beit3core.errors import UserError
from beit3core.layers.pos_embed import resample_abs_pos_embed
from beit3core.models.beit3 import Beit3Config, Beit3Model

log = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
BACKBONE = "backbone."

_EXPERT = {"A": "vision", "B": "text"}
# Ordered (pattern, replacement) rules on backbone keys without the `beit3.` prefix. q/k/v are fused apart.
_RULES = [
    (r"^text_embed\.weight$", "text_embed.weight"),
    (r"^vision_embed\.proj\.", "patch_embed.proj."),
    (r"^vision_embed\.cls_token$", "cls_token"),
    (r"^vision_embed\.mask_token$", "mask_token"),
    (r"^encoder\.embed_positions\.A\.weight$", "vision_pos_embed"),
    (r"^encoder\.embed_positions\.B\.weight$", "text_pos_embed"),
    (r"^encoder\.layers\.(\d+)\.self_attn\.out_proj\.([AB])\.", r"blocks.\1.attn.proj.\2."),
    (r"^encoder\.layers\.(\d+)\.self_attn\.inner_attn_ln\.([AB])\.", r"blocks.\1.attn.norm.\2."),
    (r"^encoder\.layers\.(\d+)\.self_attn_layer_norm\.([AB])\.", r"blocks.\1.norm1.\2."),
    (r"^encoder\.layers\.(\d+)\.final_layer_norm\.([AB])\.", r"blocks.\1.norm2.\2."),
    (r"^encoder\.layers\.(\d+)\.ffn\.([AB])\.fc1\.", r"blocks.\1.mlp.\2.fc1."),
    (r"^encoder\.layers\.(\d+)\.ffn\.([AB])\.ffn_layernorm\.", r"blocks.\1.mlp.\2.norm."),
    (r"^encoder\.layers\.(\d+)\.ffn\.([AB])\.fc2\.", r"blocks.\1.mlp.\2.fc2."),
    (r"^encoder\.layer_norm\.([AB])\.", r"norm.\1."),
]
_QKV = re.compile(r"^encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.([AB])\.(weight|bias)$")
_EXPERT_IN_NAME = re.compile(r"\.([AB])\.")


def unwrap_state_dict(obj, where: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The weights of a checkpoint file: its 'model' or 'module' entry (else the dict), wrapper prefixes stripped.
    Anything but a non-empty dict of name -> tensor is a UserError naming `where` (the file) and the entry."""
    if isinstance(obj, dict):
        for key in ("model", "module", "state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict):
        raise UserError(f"{where}: expected a dict of tensors, got {type(obj).__name__}")
    if not obj:
        raise UserError(f"{where}: holds no tensors")
    for key, value in obj.items():
        if not isinstance(key, str):
            raise UserError(f"{where}: entry {key!r}: expected a parameter name (str), got {type(key).__name__}")
        if not isinstance(value, torch.Tensor):
            raise UserError(f"{where}: entry {key[:200]!r}: expected a tensor, got {type(value).__name__}")
    return {strip_wrapper_prefixes(key): value for key, value in obj.items()}


def strip_wrapper_prefixes(name: str) -> str:
    """A parameter name without the DDP (`module.`) and torch.compile (`_orig_mod.`) wrapper prefixes."""
    while name.startswith(("module.", "_orig_mod.")):  # in either order, nested
        name = name.split(".", 1)[1]
    return name.replace("._orig_mod.", ".")  # a compiled submodule


def is_unilm_state_dict(sd: dict) -> bool:
    return any(k.startswith("beit3.") or k.startswith("encoder.layers.") for k in sd)


def convert_unilm_state_dict(state_dict: dict) -> dict[str, torch.Tensor]:
    """Released BEiT-3 weights -> beit3core names (`backbone.*` + task heads unchanged). Pure: no input is modified."""
    sd = unwrap_state_dict(state_dict)
    bare = not any(k.startswith("beit3.") for k in sd)  # a torchscale BEiT3 saved without the unilm wrapper
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str, str], dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        if bare and (key.startswith(("encoder.", "text_embed.", "vision_embed."))):
            inner = key
        elif key.startswith("beit3."):
            inner = key[len("beit3."):]
        else:
            out[key] = value  # task heads and anything unknown: kept, reported later if unused
            continue
        m = _QKV.match(inner)
        if m:
            layer, which, expert, kind = m.groups()
            qkv.setdefault((layer, expert, kind), {})[which] = value
            continue
        for pattern, repl in _RULES:
            new, n = re.subn(pattern, repl, inner)
            if n:
                new = _EXPERT_IN_NAME.sub(lambda e: f".{_EXPERT[e.group(1)]}.", new)
                out[BACKBONE + new] = value
                break
        else:
            out[BACKBONE + inner] = value  # unknown backbone key: reported as unexpected on load
    for (layer, expert, kind), parts in sorted(qkv.items()):
        if set(parts) == {"q", "k", "v"}:
            out[f"{BACKBONE}blocks.{layer}.attn.qkv.{_EXPERT[expert]}.{kind}"] = torch.cat(
                [parts["q"], parts["k"], parts["v"]], dim=0
            )
        else:  # incomplete triple: keep the originals so the report names them
            for which, value in parts.items():
                out[f"{BACKBONE}encoder.layers.{layer}.self_attn.{which}_proj.{expert}.{kind}"] = value
    return out


@dataclass
class LoadReport:
    missing: list[str] = field(default_factory=list)  # model keys the checkpoint did not provide
    unexpected: list[str] = field(default_factory=list)  # checkpoint keys the model has no place for
    resized: list[str] = field(default_factory=list)  # keys resampled to the model's shape (positions)
    mismatched: list[str] = field(default_factory=list)  # same name, incompatible shape: not loaded


def _backbone_of(model: nn.Module):
    if isinstance(model, Beit3Model):
        return model, ""
    backbone = getattr(model, "backbone", None)
    if isinstance(backbone, Beit3Model):
        return backbone, BACKBONE
    return None, ""


def _read_state_dict(uri: str) -> dict[str, torch.Tensor]:
    uri = str(uri)
    if io.isdir(uri) or uri.endswith(WEIGHTS_NAME):
        weights = io.join(uri, WEIGHTS_NAME) if io.isdir(uri) else uri
        data = io.read_bytes(weights)
        try:
            tensors = load_safetensors(data)
        except (SafetensorError, ValueError, RuntimeError) as e:  # truncated, garbage or a bad header
            raise UserError(f"{weights}: not a readable safetensors file ({_first_line(e)})") from None
        return unwrap_state_dict(tensors, weights)
    with io.local_path(uri) as path:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)  # a checkpoint must never run code
        except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file, named as such
            raise UserError(f"{uri}: not a loadable weights-only torch checkpoint ({_first_line(e)})") from None
    return unwrap_state_dict(obj, uri)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:200] if text else ''}"


def config_from_file(where: str, values) -> Beit3Config:
    """A Beit3Config from a model folder's config.json `config` field: wrong types, unknown fields and sizes
    above `beit3core.models.configs.LIMITS` are one line naming the file, before anything is allocated."""
    if not isinstance(values, dict):
        raise UserError(f"{where}: field 'config': expected an object, got {type(values).__name__}")
    try:
        return Beit3Config.from_dict(values)
    except UserError as e:
        raise UserError(f"{where}: {e}") from None


def fit_state_dict(model: nn.Module, sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """Adapt converted/native keys to `model`: prefix, position-table resampling, shape checks."""
    report = LoadReport()
    backbone, prefix = _backbone_of(model)
    target = model.state_dict()
    has_prefix = any(k.startswith(BACKBONE) for k in sd)
    if backbone is not None and prefix == "" and has_prefix:
        # A bare backbone given task-model keys: take `backbone.*`; everything else (heads) is unexpected.
        sd = {(k[len(BACKBONE):] if k.startswith(BACKBONE) else "\0" + k): v for k, v in sd.items()}
    elif backbone is not None and prefix == BACKBONE and not has_prefix:
        # A task model given bare backbone keys (e.g. a pretraining run's model/): they go under `backbone.`.
        sd = {(BACKBONE + k if BACKBONE + k in target else k): v for k, v in sd.items()}
    fitted: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key.startswith("\0"):
            report.unexpected.append(key[1:])
            continue
        if key not in target:
            report.unexpected.append(key)
            continue
        want = target[key]
        if value.shape != want.shape and backbone is not None and key == prefix + "vision_pos_embed":
            num_prefix = backbone.config.pos_offset + 1
            value = resample_abs_pos_embed(value, backbone.grid_size, num_prefix=num_prefix)
            report.resized.append(key)
        if value.shape != want.shape:
            report.mismatched.append(f"{key} {tuple(value.shape)} -> {tuple(want.shape)}")
            continue
        fitted[key] = value.to(want.dtype)
    report.missing = sorted(k for k in target if k not in fitted)
    report.unexpected.sort()
    return fitted, report


def load_pretrained(model: nn.Module, uri: str, *, strict: bool = False) -> LoadReport:
    """Load an official .pth (local or s3://) or a native folder into `model`; report every key not loaded.

    Official files are converted (`convert_unilm_state_dict`) and the vision position table is resampled
    to the model's image size. With strict=True any missing, unexpected or mismatched key is a UserError.
    """
    sd = _read_state_dict(uri)
    if is_unilm_state_dict(sd):
        sd = convert_unilm_state_dict(sd)
    fitted, report = fit_state_dict(model, sd)
    if strict and (report.missing or report.unexpected or report.mismatched):
        raise UserError(
            f"{uri}: does not match the model: missing {report.missing[:5]}, unexpected {report.unexpected[:5]}, "
            f"mismatched {report.mismatched[:5]}"
        )
    model.load_state_dict(fitted, strict=False)
    log.info("loaded %s: %d tensors, %d missing, %d unexpected, %d resized, %d mismatched", uri, len(fitted),
             len(report.missing), len(report.unexpected), len(report.resized), len(report.mismatched))
    for kind in ("missing", "unexpected", "mismatched"):
        if getattr(report, kind):
            log.info("%s keys: %s", kind, ", ".join(getattr(report, kind)))
    return report


def save_model(model: nn.Module, uri: str) -> None:
    """Write `uri/model.safetensors` then `uri/config.json` (each atomic; config.json last marks it complete)."""
    config = getattr(model, "config", None)
    if not isinstance(config, Beit3Config):
        raise TypeError(f"save_model: {type(model).__name__} has no Beit3Config at .config")
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    io.write_bytes(io.join(uri, WEIGHTS_NAME), save_safetensors(tensors))
    io.write_json(io.join(uri, CONFIG_NAME), {"architecture": "Beit3Model", "config": config.to_dict()})


def load_model(uri: str, **overrides) -> nn.Module:
    """Rebuild a Beit3Model from `uri/config.json` and load `uri/model.safetensors` strictly."""
    where = io.join(uri, CONFIG_NAME)
    meta = io.read_json(where)
    if not isinstance(meta, dict) or meta.get("architecture") != "Beit3Model":
        raise UserError(f"{where}: field 'architecture': expected 'Beit3Model'")
    config = config_from_file(where, meta.get("config"))
    model = Beit3Model(config.replace(**overrides) if overrides else config)
    load_pretrained(model, uri, strict=True)
    return model


__all__ = [
    "LoadReport", "convert_unilm_state_dict", "fit_state_dict", "is_unilm_state_dict", "load_model",
    "load_pretrained", "save_model", "strip_wrapper_prefixes", "unwrap_state_dict",
]
