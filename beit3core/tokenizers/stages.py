"""The `tokenize text` and `tokenize visual` stages over a validated collection.

Both read every dataset of the collection (`beit3core.data.find_datasets`), write a self-describing
tokenizer folder (parameters + the collection's fingerprint) and one `.npz` of ids per dataset split, all
published at once (`beit3core.publish`: a kill leaves the previous output whole, never a new tokenizer
beside old tokens):

    OUT/tokenizer/                     text: spm.model + meta.json;  visual: model.safetensors + config.json
    OUT/tokens/<dataset>/<split>.npz   text: ids int32 flat, offsets int64 (n + 1), keys (row ids)
                                       visual: keys, ids uint16 (n, grid*grid) (nlvr2: ids_left, ids_right)
    OUT/quarantine.jsonl               rows that could not be tokenized: dataset, split, row, id, reason
    OUT/summary.json                   counts per dataset split
    OUT/.beit3-output.json             the output record: files per folder, and the tokenizer's fingerprint

Consumers (`check_tokens`: pretraining) refuse an output whose files differ from its record, or whose
tokenizer is not the one its tokens were made with. The input collection is checked the same way
(`beit3core.publish.check_complete`), and dataset names are checked before they become paths.

Text sequence i of a split is ids[offsets[i]:offsets[i+1]] = [<s>] + pieces[:max_len - 2] + [</s>], not
padded (pad to the model's length at batch time with id 1).
"""

from __future__ import annotations

import io as _pyio
import json
import logging
import time

import numpy as np
import torch

from beit3core import data, io, publish
from beit3core.data import KINDS
from beit3core.data.names import validate_name
from beit3core.errors import UserError
from beit3core.progress import progress_bar
from beit3core.tokenizers.text import TextTokenizer, clean_text, encode_corpus
from beit3core.tokenizers.visual import (
    VisualTokenizer,
    image_to_uint8,
    make_teacher,
    train_vqkd,
)
from beit3core.tokenizers.vqkd import VQKD, vqkd_base_config, vqkd_tiny_config

log = logging.getLogger(__name__)

TRAIN_KINDS_VISUAL = ("pairs", "images")  # the images the visual tokenizer learns from
TEXT_STAGE, VISUAL_STAGE = "tokenize text", "tokenize visual"
TOKENIZER_FINGERPRINT = "tokenizer_fingerprint"  # record key: io.fingerprint of OUT/tokenizer


# -- shared helpers -------------------------------------------------------------------------------------------------
def _collection(data_uri: str) -> list[tuple[str, str, dict]]:
    """(name, uri, header) of every dataset in the collection. The name is the dataset's path inside the
    collection (`pairs`, `tasks/vqa`), or its header name when `data_uri` is a single dataset."""
    publish.check_complete(data_uri, what="--data")
    found = []
    for rel in data.find_datasets(data_uri):
        uri = io.join(data_uri, rel) if rel else data_uri
        header = data.read_header(uri)
        name = rel or header["name"]
        # the name becomes OUT/tokens/<name>/: nothing in it may lead out of OUT
        for part in str(name).split("/") if rel else [name]:
            validate_name(part, what=f"{io.join(uri, data.formats.HEADER)}: dataset name" if not rel else
                          f"{data_uri}: dataset folder {rel!r}")
        found.append((name, uri, header))
    return found


def _start(data_uri: str, out_uri: str, stage: str) -> None:
    """Refuse, before any work, an OUT that overlaps the data or that this stage may not replace."""
    publish.check_disjoint(data_uri, out_uri, src_flag="--data", out_flag="--out")
    publish.check_place(out_uri, stage, flag="--out")


def _finish(stage_dir: str, record: dict) -> None:
    """Add the tokenizer's fingerprint to the output record, so consumers can tell tokens from another tokenizer."""
    record[TOKENIZER_FINGERPRINT] = io.fingerprint(io.join(stage_dir, "tokenizer"))


_CHECKED_TOKENS: dict[str, dict | None] = {}


def check_tokens(uri: str, stage: str, *, what: str) -> dict | None:
    """Refuse a tokenize output that is incomplete, of another stage, or whose tokenizer is not the one its tokens
    were made with. Returns its record (None for a hand-made folder with no record)."""
    key = f"{stage}\0{uri}"
    if key not in _CHECKED_TOKENS:
        record = publish.check_complete(uri, what=what, stages=(stage,))
        if record is not None and record.get(TOKENIZER_FINGERPRINT) != io.fingerprint(io.join(uri, "tokenizer")):
            raise UserError(f"{what} {uri}: its tokenizer/ is not the tokenizer its tokens were made with "
                            f"(record {io.join(uri, publish.RECORD)}): rerun `beit3 {stage}`")
        _CHECKED_TOKENS[key] = record
    return _CHECKED_TOKENS[key]


def _fit_splits(header: dict) -> list[str]:
    """Splits a tokenizer may learn from: `train` when the dataset has one, else all of them."""
    return ["train"] if "train" in header["splits"] else list(header["splits"])


def write_npz(uri: str, **arrays) -> None:
    buf = _pyio.BytesIO()
    np.savez(buf, **arrays)
    io.write_bytes(uri, buf.getvalue())


def _write_quarantine(out_uri: str, rows: list[dict]) -> None:
    io.write_bytes(io.join(out_uri, "quarantine.jsonl"),
                   b"".join(json.dumps(r, sort_keys=True).encode() + b"\n" for r in rows))


# -- text ---------------------------------------------------------------------------------------------------------------
def read_text_rows(uri: str, split: str, field: str, dataset: str, quarantine: list[dict]) -> tuple[list[str], list[str]]:
    """(keys, texts) of one split's text field, read line by line as bytes so that a line that is not UTF-8
    or not JSON, or a text that is not clean UTF-8, is quarantined instead of failing the stage."""
    keys, texts = [], []
    where = io.join(uri, f"{split}.jsonl")
    with io.open(where, "rb") as f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            entry = {"dataset": dataset, "split": split, "row": n}
            try:
                row = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as err:
                quarantine.append({**entry, "reason": f"line is not valid UTF-8 (byte {err.start})",
                                   "line": raw.decode("utf-8", "backslashreplace").rstrip("\n")})
                continue
            except json.JSONDecodeError as err:
                quarantine.append({**entry, "reason": f"malformed JSON ({err.msg})", "line": raw.decode().rstrip("\n")})
                continue
            value = row.get(field) if isinstance(row, dict) else None
            if not isinstance(value, (str, bytes)):
                quarantine.append({**entry, "id": row.get("id") if isinstance(row, dict) else None,
                                   "reason": f"field {field!r}: missing or not a string"})
                continue
            text, reason = clean_text(value)
            if text is None:
                quarantine.append({**entry, "id": row.get("id"), "reason": f"field {field!r}: {reason}"})
                continue
            keys.append(str(row.get("id", n)))
            texts.append(text)
    return keys, texts


def tokenize_text(
    data_uri: str,
    out_uri: str,
    *,
    vocab_size: int = 1000,
    import_model: str | None = None,
    max_len: int = 64,
    workers: int = 2,
    progress: bool = True,
) -> dict:
    """Train (or import) the SentencePiece tokenizer on the collection's texts and tokenize them all."""
    if max_len < 2:
        raise UserError(f"--max-len {max_len} must be >= 2")
    if workers < 1:
        raise UserError(f"--workers {workers} must be >= 1")
    _start(data_uri, out_uri, TEXT_STAGE)
    quarantine: list[dict] = []
    corpora: list[tuple[str, str, list[str], list[str]]] = []  # (dataset, split, keys, texts)
    fit_texts: list[str] = []
    for rel, uri, header in _collection(data_uri):
        fields = [f.name for f in KINDS[header["kind"]].text_fields]
        if not fields:
            continue
        for split in header["splits"]:
            keys, texts = read_text_rows(uri, split, fields[0], rel, quarantine)
            corpora.append((rel, split, keys, texts))
            if split in _fit_splits(header):
                fit_texts.extend(texts)
    if not corpora:
        raise UserError(f"{data_uri}: no dataset with text (text, pairs, vqa, nlvr2, retrieval, captioning)")
    started = time.perf_counter()
    if import_model:
        tok = TextTokenizer.load(import_model)
        source = {"import_model": import_model}
    else:
        tok = TextTokenizer.train(fit_texts, vocab_size=vocab_size, num_threads=workers)
        source = {"trained_on_lines": len(fit_texts), "requested_pieces": vocab_size}
    fit_seconds = time.perf_counter() - started
    record: dict = {}
    with publish.publish(out_uri, TEXT_STAGE, extra=record, flag="--out") as stage_dir:
        summary = _write_text_output(stage_dir, tok, corpora, quarantine, max_len=max_len, workers=workers,
                                     progress=progress, fit_seconds=fit_seconds, source=source, data_uri=data_uri,
                                     parameters={"vocab_size": vocab_size, "import_model": import_model,
                                                 "max_len": max_len, "workers": workers})
        _finish(stage_dir, record)
    log.info("tokenized %d lines (%d tokens) into %s; %d quarantined", summary["lines"], summary["tokens"], out_uri,
             summary["quarantined"])
    return summary


def _write_text_output(out_uri: str, tok: TextTokenizer, corpora: list, quarantine: list[dict], *, max_len: int,
                       workers: int, progress: bool, fit_seconds: float, source: dict, data_uri: str,
                       parameters: dict) -> dict:
    tok_dir = io.join(out_uri, "tokenizer")
    tok.save(tok_dir)

    counts, total_lines, total_tokens, started = {}, 0, 0, time.perf_counter()
    for rel, split, keys, texts in corpora:
        ids, offsets = encode_corpus(tok, texts, max_len, workers=workers, progress=progress, desc=f"{rel}/{split}")
        write_npz(io.join(out_uri, "tokens", rel, f"{split}.npz"), ids=ids, offsets=offsets,
                  keys=np.asarray(keys, dtype=str))
        counts[f"{rel}/{split}"] = len(keys)
        total_lines += len(keys)
        total_tokens += int(ids.size)
    encode_seconds = time.perf_counter() - started
    _write_quarantine(out_uri, quarantine)
    meta = {
        "kind": "sentencepiece-unigram",
        "model_file": "spm.model",
        "sp_pieces": len(tok.sp),
        "vocab_size": tok.vocab_size,
        "special_ids": {"bos": tok.bos_id, "pad": tok.pad_id, "eos": tok.eos_id, "unk": tok.unk_id, "mask": tok.mask_id},
        "id_mapping": "sentencepiece piece p -> p + 1, sentencepiece unk -> 3 (fairseq / XLM-R, as beit3.spm)",
        "parameters": parameters,
        "source": source,
        "dataset": {"uri": data_uri, "fingerprint": io.fingerprint(data_uri)},
        "counts": {"lines": total_lines, "tokens": total_tokens, "quarantined": len(quarantine), "per_split": counts},
        "tokens_layout": "tokens/<dataset>/<split>.npz: ids int32 flat, offsets int64 (n+1), keys; "
                         "sequence = [0] + pieces[:max_len-2] + [2], unpadded",
    }
    io.write_json(io.join(tok_dir, "meta.json"), meta)
    summary = {"vocab_size": tok.vocab_size, "lines": total_lines, "tokens": total_tokens, "quarantined": len(quarantine),
               "fit_seconds": round(fit_seconds, 2), "encode_seconds": round(encode_seconds, 2),
               "lines_per_second": round(total_lines / max(encode_seconds, 1e-9), 1), "per_split": counts}
    io.write_json(io.join(out_uri, "summary.json"), summary)
    return summary


# -- visual -------------------------------------------------------------------------------------------------------------
def _iter_image_batches(uri: str, split: str, fields: tuple[str, ...], img_size: int, batch_size: int,
                        dataset: str, quarantine: list[dict], progress: bool):
    """Yield (keys, {field: uint8 (b, 3, S, S)}) batches of one split; undecodable rows are quarantined."""
    total = len(data.read_rows(uri, split)) if progress else None
    keys, tensors = [], {f: [] for f in fields}
    for n, row in enumerate(progress_bar(data.iter_samples(uri, split), total=total, desc=f"{dataset}/{split}", unit="img",
                                 disable=not progress, leave=False), 1):
        try:
            decoded = {f: image_to_uint8(data.decode_image(row["images"][f], f"{dataset}/{split}: row {n}"), img_size)
                       for f in fields}
        except (UserError, KeyError) as err:
            quarantine.append({"dataset": dataset, "split": split, "row": n, "id": row.get("id"), "reason": str(err)})
            continue
        keys.append(str(row.get("id", n)))
        for f in fields:
            tensors[f].append(decoded[f])
        if len(keys) == batch_size:
            yield keys, {f: torch.stack(v) for f, v in tensors.items()}
            keys, tensors = [], {f: [] for f in fields}
    if keys:
        yield keys, {f: torch.stack(v) for f, v in tensors.items()}


def collect_training_images(data_uri: str, img_size: int, quarantine: list[dict], *, max_images: int = 50_000,
                            progress: bool = True):
    """uint8 (N, 3, S, S) of the `pairs` and `images` datasets' training splits (the first max_images)."""
    chunks, count = [], 0
    for rel, uri, header in _collection(data_uri):
        if header["kind"] not in TRAIN_KINDS_VISUAL:
            continue
        fields = KINDS[header["kind"]].image_fields
        for split in _fit_splits(header):
            for _, batch in _iter_image_batches(uri, split, fields, img_size, 256, rel, quarantine, progress):
                chunks.append(batch[fields[0]][: max_images - count])
                count += chunks[-1].shape[0]
                if count >= max_images:
                    return torch.cat(chunks)
    if not chunks:
        raise UserError(f"{data_uri}: no images in a `pairs` or `images` dataset to train the visual tokenizer on")
    return torch.cat(chunks)


def tokenize_visual(
    data_uri: str,
    out_uri: str,
    *,
    import_checkpoint: str | None = None,
    teacher: str | None = None,
    teacher_checkpoint: str | None = None,
    tokenizer_size: str = "tiny",
    codebook_size: int = 512,
    code_dim: int = 32,
    epochs: int = 5,
    batch_size: int = 64,
    lr: float = 3e-4,
    img_size: int = 64,
    patch_size: int = 8,
    seed: int = 0,
    max_train_images: int = 50_000,
    progress: bool = True,
) -> dict:
    """Train (or import) the VQ-KD tokenizer on the collection's images and write the ids of every image."""
    if batch_size < 1:
        raise UserError(f"--batch-size {batch_size} must be >= 1")
    _start(data_uri, out_uri, VISUAL_STAGE)
    quarantine: list[dict] = []
    collection = _collection(data_uri)  # checked (complete, safe names) before any training
    fingerprint = io.fingerprint(data_uri)
    params = {"import_checkpoint": import_checkpoint, "teacher": teacher, "teacher_checkpoint": teacher_checkpoint,
              "tokenizer_size": tokenizer_size, "codebook_size": codebook_size, "code_dim": code_dim, "epochs": epochs,
              "batch_size": batch_size, "lr": lr, "img_size": img_size, "patch_size": patch_size, "seed": seed,
              "max_train_images": max_train_images}
    started = time.perf_counter()
    if import_checkpoint:
        vt = VisualTokenizer.from_official(import_checkpoint)
        training = None
        if (vt.img_size, vt.config.patch_size) != (img_size, patch_size):
            log.warning("imported tokenizer works at %d px / patch %d (not --img-size %d / --patch-size %d)",
                        vt.img_size, vt.config.patch_size, img_size, patch_size)
    else:
        torch.manual_seed(seed)
        if patch_size < 1 or img_size % patch_size:
            raise UserError(f"--img-size {img_size} must be a multiple of --patch-size {patch_size}")
        target = make_teacher(teacher, teacher_checkpoint, img_size // patch_size, patch_size)
        sizes = {"img_size": img_size, "patch_size": patch_size, "codebook_size": codebook_size,
                 "code_dim": code_dim, "target_dim": target.dim, "rec_loss": "cosine" if teacher else "mse"}
        if tokenizer_size == "tiny":
            cfg = vqkd_tiny_config(**sizes)
        elif tokenizer_size == "base":
            cfg = vqkd_base_config(**sizes)
        else:
            raise UserError(f"--tokenizer-size {tokenizer_size!r} must be 'tiny' or 'base'")
        images = collect_training_images(data_uri, img_size, quarantine, max_images=max_train_images, progress=progress)
        log.info("training VQ-KD (%s, %d x %d codes, %s target) on %d images", tokenizer_size, codebook_size, code_dim,
                 teacher or "pixel", images.shape[0])
        model = VQKD(cfg)
        training = train_vqkd(model, images, target, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                              progress=progress)
        vt = VisualTokenizer(model)
        del images
    fit_seconds = time.perf_counter() - started
    record: dict = {}
    with publish.publish(out_uri, VISUAL_STAGE, extra=record, flag="--out") as stage_dir:
        vt.save(io.join(stage_dir, "tokenizer"), format="beit3-vqkd", parameters=params, training=training,
                dataset={"uri": data_uri, "fingerprint": fingerprint},
                codebook_usage=training["final"] if training else None)
        summary = _write_visual_tokens(stage_dir, vt, collection, quarantine, batch_size=batch_size, progress=progress,
                                       training=training, fit_seconds=fit_seconds)
        _finish(stage_dir, record)
    log.info("tokenized %d images into %s; %d quarantined", summary["images"], out_uri, summary["quarantined"])
    return summary


def _write_visual_tokens(out_uri: str, vt: VisualTokenizer, collection: list, quarantine: list[dict], *,
                         batch_size: int, progress: bool, training: dict | None, fit_seconds: float) -> dict:
    counts, total, started = {}, 0, time.perf_counter()
    for rel, uri, header in collection:
        fields = KINDS[header["kind"]].image_fields
        if not fields:
            continue
        for split in header["splits"]:
            keys, ids = [], {f: [] for f in fields}
            for batch_keys, batch in _iter_image_batches(uri, split, fields, vt.img_size, batch_size, rel,
                                                         quarantine, progress):
                keys.extend(batch_keys)
                for f in fields:
                    ids[f].append(vt.encode(batch[f]).numpy().astype(np.uint16))
            n_tokens = vt.grid_size**2
            arrays = {("ids" if f == "image" else f"ids_{f.removeprefix('image_')}"):
                      (np.concatenate(v) if v else np.zeros((0, n_tokens), dtype=np.uint16)) for f, v in ids.items()}
            write_npz(io.join(out_uri, "tokens", rel, f"{split}.npz"), keys=np.asarray(keys, dtype=str), **arrays)
            counts[f"{rel}/{split}"] = len(keys)
            total += len(keys) * len(fields)
    encode_seconds = time.perf_counter() - started
    _write_quarantine(out_uri, quarantine)
    summary = {"images": total, "quarantined": len(quarantine), "grid_size": vt.grid_size,
               "codebook_size": vt.codebook_size, "codebook_usage": training["final"] if training else None,
               "fit_seconds": round(fit_seconds, 2), "encode_seconds": round(encode_seconds, 2),
               "images_per_second": round(total / max(encode_seconds, 1e-9), 1), "per_split": counts}
    io.write_json(io.join(out_uri, "summary.json"), summary)
    return summary
