"""The task-model folder: a fine-tuned task model on disk, and what an `--init` points at.

A task-model folder (what `beit3 finetune` writes to RUN/model) holds
- `model.safetensors`: the task model's weights, `backbone.*` plus the released head names;
- `task.json`: the task, its settings and the dataset's label / answer vocabularies;
- `config.json`: `{"architecture": "Beit3TaskModel", "task": ..., "config": <backbone config>}`, written last,
  so its presence marks the folder complete.

An `--init` is one of four kinds (`init_kind`): `random`, a pretraining `backbone` folder (`beit3core.checkpoint.
save_model`), a fine-tuned `task_model` folder, or an `official` microsoft/unilm .pth. `build_task_model_for_init`
builds the task model for a dataset and loads the init into it.
"""

from __future__ import annotations

from safetensors.torch import save as save_safetensors
from torch import nn

from beit3core import io
from beit3core.checkpoint import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    config_from_file,
    load_pretrained,
)
from beit3core.errors import UserError
from beit3core.factory import create_model
from beit3core.models import Beit3Model
from beit3core.tasks import TASK_NAMES, TaskSettings, build_task_model

TASK_ARCHITECTURE = "Beit3TaskModel"
TASK_META_NAME = "task.json"
OFFICIAL_VOCAB_SIZE = 64010  # the released text embedding's rows, kept for checkpoint shape


def task_meta(task: str, settings: TaskSettings, header: dict) -> dict:
    """task.json: the task, its settings and the vocabularies a rebuilt model needs."""
    meta = {"task": task, "settings": settings.to_dict(), "dataset": header.get("name")}
    for key in ("labels", "answers"):
        if header.get(key):
            meta[key] = list(header[key])
    return meta


def save_task_model(model: nn.Module, uri: str, meta: dict) -> None:
    """uri/model.safetensors (task model weights), uri/task.json, then uri/config.json (marks it complete)."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    io.write_bytes(io.join(uri, WEIGHTS_NAME), save_safetensors(tensors))
    io.write_json(io.join(uri, TASK_META_NAME), meta)
    io.write_json(io.join(uri, CONFIG_NAME), {"architecture": TASK_ARCHITECTURE, "task": meta["task"],
                                              "config": model.backbone.config.to_dict()})


def load_task_model(uri: str, task: str | None = None) -> tuple[nn.Module, dict]:
    """(task model, task.json with `settings` as TaskSettings) from a task-model folder, weights loaded strictly."""
    for name in (CONFIG_NAME, TASK_META_NAME, WEIGHTS_NAME):
        if not io.exists(io.join(uri, name)):
            raise UserError(f"{io.join(uri, name)}: no such file (not a `beit3 finetune` model folder)")
    config_uri, meta_uri = io.join(uri, CONFIG_NAME), io.join(uri, TASK_META_NAME)
    config = io.read_json(config_uri)
    meta = io.read_json(meta_uri)
    if not isinstance(config, dict) or config.get("architecture") != TASK_ARCHITECTURE:
        raise UserError(f"{config_uri}: field 'architecture': expected {TASK_ARCHITECTURE!r}")
    if not isinstance(meta, dict):
        raise UserError(f"{meta_uri}: expected an object, got {type(meta).__name__}")
    if meta.get("task") not in TASK_NAMES:
        raise UserError(f"{meta_uri}: field 'task': {meta.get('task')!r} is not one of {', '.join(TASK_NAMES)}")
    if task is not None and meta.get("task") != task:
        raise UserError(f"{meta_uri}: field 'task' is {meta.get('task')!r}, but --task is {task!r}")
    meta["settings"] = _settings_from_file(meta_uri, meta.get("settings"))
    for key in ("labels", "answers"):
        if key in meta and not (isinstance(meta[key], list) and all(isinstance(v, str) for v in meta[key])):
            raise UserError(f"{meta_uri}: field {key!r}: expected a list of strings")
    backbone = Beit3Model(config_from_file(config_uri, config.get("config")))
    model = build_task_model(meta["task"], backbone, meta, meta["settings"])
    load_pretrained(model, uri, strict=True)
    return model, meta


def _settings_from_file(where: str, values) -> TaskSettings:
    """task.json's `settings`: unknown fields, wrong types and out-of-range values are one line naming the file."""
    if not isinstance(values, dict):
        raise UserError(f"{where}: field 'settings': expected an object, got {type(values).__name__}")
    unknown = sorted(set(values) - set(TaskSettings.__dataclass_fields__))
    if unknown:
        raise UserError(f"{where}: field 'settings': unknown setting(s) {', '.join(map(str, unknown))}")
    values = dict(values)
    if isinstance(values.get("betas"), list):
        values["betas"] = tuple(values["betas"])  # JSON has no tuples
    try:
        return TaskSettings(**values)
    except UserError as e:
        raise UserError(f"{where}: field 'settings': {e}") from None


def _folder_config(uri: str) -> dict | None:
    """config.json of a native model folder (backbone or task model), None for anything else."""
    if io.isdir(uri) and io.exists(io.join(uri, CONFIG_NAME)):
        config = io.read_json(io.join(uri, CONFIG_NAME))
        if not isinstance(config, dict):
            raise UserError(f"{io.join(uri, CONFIG_NAME)}: expected an object, got {type(config).__name__}")
        return config
    return None


def _classify_init(init: str) -> tuple[str, dict | None]:
    """(kind of `init`, the folder's config.json for a native folder, else None): reads config.json once."""
    if init == "random":
        return "random", None
    if not io.exists(init):
        raise UserError(f"--init {init}: no such file or folder (give a model folder, a .pth, or 'random')")
    config = _folder_config(init)
    if config is None:
        return "official", None
    return ("task_model" if config.get("architecture") == TASK_ARCHITECTURE else "backbone"), config


def init_kind(init: str) -> str:
    """What an `--init` is: "random", "backbone" (a pretraining model folder), "task_model" (a fine-tuned
    folder) or "official" (a microsoft/unilm .pth, local or s3://)."""
    return _classify_init(init)[0]


def build_task_model_for_init(task: str, settings: TaskSettings, header: dict, init: str, *,
                              vocab_size: int) -> tuple[nn.Module, dict]:
    """(task model, description of the init). The backbone's width/depth come from --init when it is a native
    folder, else from `settings.arch`; image size, drop path and the final norm come from the settings.
    `vocab_size` is the text tokenizer's."""
    task_overrides = dict(img_size=settings.img_size, drop_path_rate=settings.drop_path,
                          normalize_output=settings.normalize_output)
    kind, meta = _classify_init(init)
    if kind == "random":
        backbone = create_model(settings.arch, vocab_size=vocab_size, **task_overrides)
        return build_task_model(task, backbone, header, settings), {"init": "random", "arch": settings.arch}
    if kind == "official":
        backbone = create_model(settings.arch, vocab_size=max(vocab_size, OFFICIAL_VOCAB_SIZE), **task_overrides)
        task_model = build_task_model(task, backbone, header, settings)
    else:
        config = config_from_file(io.join(init, CONFIG_NAME), meta.get("config")).replace(**task_overrides)
        if vocab_size > config.vocab_size:
            raise UserError(f"--text-tokenizer: {vocab_size} ids do not fit the {config.vocab_size}-row "
                            f"text embedding of {init} (was it pretrained with another tokenizer?)")
        task_model = build_task_model(task, Beit3Model(config), header, settings)
    # a fine-tuned model's heads come along if they fit; a backbone folder loads into the backbone only
    report = load_pretrained(task_model.backbone if kind == "backbone" else task_model, init)
    backbone_missing = (report.missing if kind == "backbone"
                        else [k for k in report.missing if k.startswith("backbone.")])
    if backbone_missing and len(backbone_missing) > 0.5 * len(task_model.backbone.state_dict()):
        raise UserError(f"--init {init}: most backbone weights did not load ({len(backbone_missing)} missing, "
                        f"e.g. {backbone_missing[:3]}); is it a BEiT-3 checkpoint of this model size?")
    return task_model, {"init": init, "init_kind": "official" if kind == "official" else "native",
                        "missing": len(report.missing), "unexpected": len(report.unexpected),
                        "resized": report.resized, "mismatched": report.mismatched}
