"""The `tokenize text` and `tokenize visual` stages over a validated collection (format 2, sharded).

Both read every dataset of the collection (`beit3core.data.find_datasets`) and write a self-describing
tokenizer folder (parameters + the collection's fingerprint), published at once (`beit3core.publish`: a kill
leaves the previous output whole, never a new tokenizer beside old tokens):

    OUT/tokenizer/                         text: spm.model + meta.json;  visual: model.safetensors + config.json
    OUT/tokens/<dataset>/<shard stem>.npz  visual only: one file per image shard of the collection,
                                           keys (the shard's sample keys, in shard order, quarantined images
                                           left out), ids uint16 (n, grid*grid)
    OUT/quarantine.jsonl                   what could not be tokenized, with the reason
    OUT/summary.json                       counts (text: lines, tokens, length statistics)
    OUT/.beit3-output.json                 the output record: files per folder, and the tokenizer's fingerprint

Text is tokenized where it is read (the pretraining loader), so `tokenize text` writes no corpus arrays.
`tokenize visual` is resumable and data-parallel: the tokenizer and each shard's tokens are written to a
work folder beside OUT (`.<OUT name>.work-<key>`, key = the input's fingerprint + the stage's parameters) as
they finish; a rerun after a kill keeps them, and under torchrun rank r of W encodes shards r::W. Rank 0
publishes when every rank is done, then removes the work folder.

Consumers (`check_tokens`: pretraining) refuse an output whose files differ from its record, or whose
tokenizer is not the one its tokens were made with. The input collection is checked the same way
(`beit3core.publish.check_complete`), and dataset names are checked before they become paths.
"""
from __future__ import annotations

import hashlib
import io as _pyio
import json
import logging
import os
import posixpath
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from beit3core import data, io, publish
from beit3core.data import KINDS, formats
from beit3core.data.names import check_inside, validate_name
from beit3core.data.shards import group_samples, iter_tar
from beit3core.errors import UserError
from beit3core.pretrain.augment import precomputed_view
from beit3core.progress import progress_bar
from beit3core.tokenizers.text import TextTokenizer, clean_text, encode_corpus
from beit3core.tokenizers.visual import VisualTokenizer, make_teacher, train_vqkd
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


def collection_fingerprint(data_uri: str, collection: list) -> str:
    """The version of the input recorded with a tokenizer (and the key of the visual work folder): md5 of every
    file's relative name and size plus every dataset.json (its source fingerprint and shard lists). One listing,
    no shard read: the collection's bytes run to terabytes at paper scale."""
    digest = hashlib.md5(json.dumps(sorted(io.sizes(data_uri).items())).encode())
    for rel, uri, _ in collection:
        digest.update(f"\0{rel}\0".encode() + io.read_bytes(io.join(uri, formats.HEADER)))
    return digest.hexdigest()


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
def iter_texts(uri: str, split: str, field: str, dataset: str, quarantine: list[dict]) -> Iterator[str]:
    """The texts of one split's text field, streamed line by line as bytes, so that a line that is not UTF-8 or
    not JSON, or a text that is not clean UTF-8, is quarantined instead of failing the stage."""
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
            yield text


def _text_splits(data_uri: str) -> list[tuple[str, str, str, str, bool]]:
    """(dataset, uri, split, text field, fit on it) of every split with text."""
    found = []
    for rel, uri, header in _collection(data_uri):
        fields = [f.name for f in KINDS[header["kind"]].text_fields]
        if fields:
            found.extend((rel, uri, split, fields[0], split in _fit_splits(header)) for split in header["splits"])
    if not found:
        raise UserError(f"{data_uri}: no dataset with text (text, pairs, vqa, nlvr2, retrieval, captioning)")
    return found


def sample_fit_texts(splits: list, max_lines: int, seed: int = 0) -> tuple[list[str], int]:
    """(a uniform sample of at most max_lines texts of the fit splits, lines seen): reservoir sampling, so the
    fit holds max_lines texts in memory however large the corpus."""
    rng, sample, seen = random.Random(seed), [], 0
    for rel, uri, split, field, fit in splits:
        if not fit:
            continue
        for text in iter_texts(uri, split, field, rel, []):  # quarantined by the counting pass
            seen += 1
            if len(sample) < max_lines:
                sample.append(text)
            elif (j := rng.randrange(seen)) < max_lines:
                sample[j] = text
    return sample, seen


_LENGTH_CAP = 4096  # sequence lengths above this are counted in the last histogram bin


def count_tokens(tok: TextTokenizer, splits: list, quarantine: list[dict], *, max_len: int, workers: int,
                 chunk: int = 65536, progress: bool = True) -> dict:
    """Stream every text once: lines and tokens per split, truncations at max_len and the length distribution
    of the full sequences ([<s>] + pieces + [</s>]), in memory bounded by `chunk`."""
    hist = np.zeros(_LENGTH_CAP + 1, dtype=np.int64)
    per_split, lines, tokens, truncated = {}, 0, 0, 0

    def flush(texts: list[str]) -> None:
        nonlocal lines, tokens, truncated
        _, offsets = encode_corpus(tok, texts, 1 << 30, workers=workers)
        lengths = np.diff(offsets)
        hist[:] += np.bincount(np.minimum(lengths, _LENGTH_CAP), minlength=_LENGTH_CAP + 1)
        lines, tokens = lines + len(texts), tokens + int(np.minimum(lengths, max_len).sum())
        truncated += int((lengths > max_len).sum())

    for rel, uri, split, field, _ in progress_bar(splits, desc="count tokens", unit="split", disable=not progress,
                                                  leave=False):
        before, texts = lines, []
        for text in iter_texts(uri, split, field, rel, quarantine):
            texts.append(text)
            if len(texts) == chunk:
                flush(texts)
                texts = []
        if texts:
            flush(texts)
        per_split[f"{rel}/{split}"] = lines - before
    cumulative = np.cumsum(hist)
    percentile = {q: int(np.searchsorted(cumulative, q / 100 * lines)) if lines else 0 for q in (50, 90, 99)}
    return {"lines": lines, "tokens": tokens, "truncated": truncated,
            "length": {"p50": percentile[50], "p90": percentile[90], "p99": percentile[99],
                       "max": int(np.flatnonzero(hist)[-1]) if lines else 0, "capped_at": _LENGTH_CAP},
            "per_split": per_split}


def tokenize_text(
    data_uri: str,
    out_uri: str,
    *,
    vocab_size: int = 1000,
    import_model: str | None = None,
    max_len: int = 64,
    workers: int = 2,
    max_fit_lines: int = 2_000_000,
    progress: bool = True,
) -> dict:
    """Train (or import) the SentencePiece tokenizer on the collection's texts and count their tokens. No ids are
    written: the pretraining loader tokenizes each text as it reads it."""
    if max_len < 2:
        raise UserError(f"--max-len {max_len} must be >= 2")
    if workers < 1:
        raise UserError(f"--workers {workers} must be >= 1")
    if max_fit_lines < 1:
        raise UserError(f"--max-fit-lines {max_fit_lines} must be >= 1")
    _start(data_uri, out_uri, TEXT_STAGE)
    splits = _text_splits(data_uri)
    started = time.perf_counter()
    if import_model:
        tok = TextTokenizer.load(import_model)
        source = {"import_model": import_model}
    else:
        fit_texts, seen = sample_fit_texts(splits, max_fit_lines)
        tok = TextTokenizer.train(fit_texts, vocab_size=vocab_size, num_threads=workers)
        source = {"trained_on_lines": len(fit_texts), "fit_lines_seen": seen, "requested_pieces": vocab_size}
        del fit_texts
    fit_seconds = time.perf_counter() - started
    quarantine: list[dict] = []
    started = time.perf_counter()
    counts = count_tokens(tok, splits, quarantine, max_len=max_len, workers=workers, progress=progress)
    count_seconds = time.perf_counter() - started
    parameters = {"vocab_size": vocab_size, "import_model": import_model, "max_len": max_len, "workers": workers,
                  "max_fit_lines": max_fit_lines}
    record: dict = {}
    with publish.publish(out_uri, TEXT_STAGE, extra=record, flag="--out") as stage_dir:
        tok_dir = io.join(stage_dir, "tokenizer")
        tok.save(tok_dir)
        io.write_json(io.join(tok_dir, "meta.json"), {
            "kind": "sentencepiece-unigram",
            "model_file": "spm.model",
            "sp_pieces": len(tok.sp),
            "vocab_size": tok.vocab_size,
            "special_ids": {"bos": tok.bos_id, "pad": tok.pad_id, "eos": tok.eos_id, "unk": tok.unk_id,
                            "mask": tok.mask_id},
            "id_mapping": "sentencepiece piece p -> p + 1, sentencepiece unk -> 3 (fairseq / XLM-R, as beit3.spm)",
            "sequence": "[0] + pieces[:max_len-2] + [2], built by the loader",
            "parameters": parameters,
            "source": source,
            "dataset": {"uri": data_uri, "fingerprint": collection_fingerprint(data_uri, _collection(data_uri))},
            "counts": {k: counts[k] for k in ("lines", "tokens", "truncated", "length")} | {
                "quarantined": len(quarantine), "per_split": counts["per_split"]},
        })
        _write_quarantine(stage_dir, quarantine)
        summary = {"vocab_size": tok.vocab_size, **counts, "quarantined": len(quarantine),
                   "fit_seconds": round(fit_seconds, 2), "count_seconds": round(count_seconds, 2),
                   "lines_per_second": round(counts["lines"] / max(count_seconds, 1e-9), 1)}
        io.write_json(io.join(stage_dir, "summary.json"), summary)
        _finish(stage_dir, record)
    log.info("text tokenizer (%d ids) over %d lines (%d tokens at --max-len %d, %d truncated) -> %s; %d quarantined",
             tok.vocab_size, summary["lines"], summary["tokens"], max_len, summary["truncated"], out_uri,
             summary["quarantined"])
    return summary


# -- visual: one token file per image shard, resumable, data-parallel ------------------------------------------------
@dataclass(frozen=True)
class ImageShard:
    """One image shard of a validated dataset, and where its tokens go."""

    dataset: str  # the dataset's path in the collection (`pairs`, `tasks/vqa`)
    uri: str  # the dataset's URI
    split: str
    name: str  # "shards/00012.tar"

    @property
    def tokens(self) -> str:
        """Its token file, relative to OUT: tokens/<dataset>/<shard stem>.npz."""
        return f"tokens/{self.dataset}/{posixpath.basename(self.name).removesuffix('.tar')}.npz"


def image_shards(collection: list, kinds: tuple[str, ...] | None = None, *,
                 fit_only: bool = False) -> list[ImageShard]:
    """Every image shard of the collection in order (dataset, split, shard), from `validation.shards` (C1)."""
    found = []
    for rel, uri, header in collection:
        if not KINDS[header["kind"]].image_fields or (kinds and header["kind"] not in kinds):
            continue
        where = io.join(uri, formats.HEADER)
        for split in _fit_splits(header) if fit_only else header["splits"]:
            for entry in formats.split_shards(header, where, split):
                found.append(ImageShard(rel, uri, split, entry["name"]))
    return found


def iter_shard_images(shard: ImageShard) -> Iterator[tuple[str, bytes | None]]:
    """(sample key, image bytes or None when the sample has no image) of a shard: one sequential read."""
    uri = check_inside(shard.uri, io.join(shard.uri, shard.name))
    for key, members in group_samples(iter_tar(uri)):
        image = [data for ext, data in members.items() if ext not in ("txt", "json")]
        yield posixpath.basename(key), image[0] if image else None


def _decoded(shard: ImageShard, key: str, image: bytes | None, img_size: int, quarantine: list[dict]):
    """The precomputed view of a sample's image, or None (quarantined with its reason)."""
    try:
        if image is None:
            raise UserError("sample has no image member")
        return precomputed_view(data.decode_image(image, f"{shard.uri}/{shard.name}#{key}"), img_size)
    except UserError as err:
        quarantine.append({"dataset": shard.dataset, "split": shard.split, "shard": shard.name, "key": key,
                           "reason": str(err)})
        return None


def collect_training_images(collection: list, img_size: int, quarantine: list[dict], *, max_images: int = 50_000,
                            progress: bool = True) -> torch.Tensor:
    """uint8 (N, 3, S, S): the first max_images images of the `pairs` and `images` datasets' training shards."""
    images = []
    shards = image_shards(collection, TRAIN_KINDS_VISUAL, fit_only=True)
    for shard in progress_bar(shards, desc="fit images", unit="shard", disable=not progress, leave=False):
        for key, image in iter_shard_images(shard):
            view = _decoded(shard, key, image, img_size, quarantine)
            if view is not None:
                images.append(view)
                if len(images) >= max_images:
                    return torch.stack(images)
    if not images:
        raise UserError("--data: no images in a `pairs` or `images` dataset to train the visual tokenizer on")
    return torch.stack(images)


def encode_shard(vt: VisualTokenizer, shard: ImageShard, batch_size: int) -> tuple[dict, list[dict]]:
    """({keys, ids uint16 (n, grid*grid)}, quarantine) of one shard, in shard order."""
    quarantine: list[dict] = []
    keys, ids, batch = [], [], []
    for key, image in iter_shard_images(shard):
        view = _decoded(shard, key, image, vt.img_size, quarantine)
        if view is None:
            continue
        keys.append(key)
        batch.append(view)
        if len(batch) == batch_size:
            ids.append(vt.encode(torch.stack(batch)).cpu().numpy().astype(np.uint16))
            batch = []
    if batch:
        ids.append(vt.encode(torch.stack(batch)).cpu().numpy().astype(np.uint16))
    grid = vt.grid_size**2
    return {"keys": np.asarray(keys, dtype=str),
            "ids": np.concatenate(ids) if ids else np.zeros((0, grid), dtype=np.uint16)}, quarantine


class _Ranks:
    """This process's place under torchrun (WORLD_SIZE, RANK); a gloo group for barriers when there are several."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local = int(os.environ.get("LOCAL_RANK", "0"))
        self.owned = False

    def connect(self) -> None:
        """Join the group. Rank 0 joins after the fit, so the others wait here for it (a fit may not run inside a
        group: VQ-KD all-reduces its codebook updates whenever one exists); allow it a day, not 30 minutes."""
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("gloo", timeout=timedelta(hours=24))
            self.owned = True

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def share(self, obj):
        """Rank 0's `obj` on every rank."""
        if self.world == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        if self.owned:
            dist.destroy_process_group()


def work_folder(out_uri: str, key: str) -> str:
    """`.<OUT name>.work-<key>` beside OUT: inside OUT it would make OUT a non-empty foreign folder to a rerun."""
    out = str(out_uri).rstrip("/")
    if io.is_remote(out):
        parent, name = out.rsplit("/", 1)
    else:
        parent, name = os.path.split(os.path.abspath(out))
    return io.join(parent, f".{name}.work-{key}")


def _device(choice: str, ranks: _Ranks) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device here")
    if choice == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", ranks.local % torch.cuda.device_count())


def _fit_visual(collection: list, params: dict, progress: bool) -> tuple[VisualTokenizer, dict | None, list[dict]]:
    """Train (or import) the VQ-KD tokenizer: (tokenizer, training report or None, quarantined fit images)."""
    quarantine: list[dict] = []
    if params["import_checkpoint"]:
        vt = VisualTokenizer.from_official(params["import_checkpoint"])
        if (vt.img_size, vt.config.patch_size) != (params["img_size"], params["patch_size"]):
            log.warning("imported tokenizer works at %d px / patch %d (not --img-size %d / --patch-size %d)",
                        vt.img_size, vt.config.patch_size, params["img_size"], params["patch_size"])
        return vt, None, quarantine
    img_size, patch_size, teacher = params["img_size"], params["patch_size"], params["teacher"]
    torch.manual_seed(params["seed"])
    target = make_teacher(teacher, params["teacher_checkpoint"], img_size // patch_size, patch_size)
    sizes = {"img_size": img_size, "patch_size": patch_size, "codebook_size": params["codebook_size"],
             "code_dim": params["code_dim"], "target_dim": target.dim, "rec_loss": "cosine" if teacher else "mse"}
    cfg = (vqkd_tiny_config if params["tokenizer_size"] == "tiny" else vqkd_base_config)(**sizes)
    images = collect_training_images(collection, img_size, quarantine, max_images=params["max_train_images"],
                                     progress=progress)
    log.info("training VQ-KD (%s, %d x %d codes, %s target) on %d images", params["tokenizer_size"],
             params["codebook_size"], params["code_dim"], teacher or "pixel", images.shape[0])
    model = VQKD(cfg)
    training = train_vqkd(model, images, target, epochs=params["epochs"], batch_size=params["batch_size"],
                          lr=params["lr"], seed=params["seed"], progress=progress)
    return VisualTokenizer(model), training, quarantine


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
    device: str = "auto",
    progress: bool = True,
) -> dict | None:
    """Train (or import) the VQ-KD tokenizer on the collection's images and write the ids of every image shard.
    Under torchrun every rank encodes its share of the shards; rank 0 returns the summary, the others None."""
    if batch_size < 1:
        raise UserError(f"--batch-size {batch_size} must be >= 1")
    if tokenizer_size not in ("tiny", "base"):
        raise UserError(f"--tokenizer-size {tokenizer_size!r} must be 'tiny' or 'base'")
    if not import_checkpoint and (patch_size < 1 or img_size % patch_size):
        raise UserError(f"--img-size {img_size} must be a multiple of --patch-size {patch_size}")
    _start(data_uri, out_uri, VISUAL_STAGE)
    collection = _collection(data_uri)  # checked (complete, safe names) before any training
    shards = image_shards(collection)  # a format-1 collection is refused here, before any work
    params = {"import_checkpoint": import_checkpoint, "teacher": teacher, "teacher_checkpoint": teacher_checkpoint,
              "tokenizer_size": tokenizer_size, "codebook_size": codebook_size, "code_dim": code_dim, "epochs": epochs,
              "batch_size": batch_size, "lr": lr, "img_size": img_size, "patch_size": patch_size, "seed": seed,
              "max_train_images": max_train_images}
    ranks = _Ranks()
    try:
        work, resumed = None, 0
        if ranks.rank == 0:
            fingerprint = collection_fingerprint(data_uri, collection)
            key = hashlib.md5(json.dumps({"data": fingerprint, "params": params}, sort_keys=True).encode()).hexdigest()
            work = work_folder(out_uri, key[:16])
            _fit_once(work, collection, params, data_uri, fingerprint, progress)
            resumed = sum(io.exists(_marker(work, shard)) for shard in shards)
        ranks.connect()
        work, resumed = ranks.share((work, resumed))
        vt = VisualTokenizer.load(io.join(work, "tokenizer"), device=_device(device, ranks))
        _encode_shards(work, vt, shards[ranks.rank::ranks.world], batch_size, progress and ranks.rank == 0)
        ranks.barrier()
        summary = _publish_visual(work, out_uri, vt, shards, ranks.world, resumed) if ranks.rank == 0 else None
        ranks.barrier()
    finally:
        ranks.close()
    if summary is not None:
        log.info("tokenized %d images into %s; %d quarantined", summary["images"], out_uri, summary["quarantined"])
    return summary


def _fit_once(work: str, collection: list, params: dict, data_uri: str, fingerprint: str, progress: bool) -> None:
    """Fit the tokenizer into WORK/tokenizer unless a killed run already did (WORK/fit.json is written last)."""
    if io.exists(io.join(work, "fit.json")):
        log.info("reusing the visual tokenizer fitted by an earlier run (%s)", work)
        return
    started = time.perf_counter()
    vt, training, quarantine = _fit_visual(collection, params, progress)
    vt.save(io.join(work, "tokenizer"), format="beit3-vqkd", parameters=params, training=training,
            dataset={"uri": data_uri, "fingerprint": fingerprint}, codebook_usage=training["final"] if training else None)
    io.write_json(io.join(work, "fit.json"), {"seconds": round(time.perf_counter() - started, 2),
                                              "training": training, "quarantine": quarantine})


def _marker(work: str, shard: ImageShard) -> str:
    """WORK/done/<dataset>/<stem>.json: written after the shard's tokens, so it proves them whole."""
    return io.join(work, "done", shard.tokens.removesuffix(".npz") + ".json")


def _encode_shards(work: str, vt: VisualTokenizer, shards: list[ImageShard], batch_size: int, progress: bool) -> None:
    """Write each shard's tokens into WORK, skipping those a killed run finished."""
    for shard in progress_bar(shards, desc="tokenize visual", unit="shard", disable=not progress, leave=False):
        if io.exists(_marker(work, shard)):
            continue
        started = time.perf_counter()
        arrays, quarantine = encode_shard(vt, shard, batch_size)
        write_npz(io.join(work, shard.tokens), **arrays)
        # the marker is written after the tokens: a kill in between only recomputes this shard
        io.write_json(_marker(work, shard), {"samples": len(arrays["keys"]), "quarantine": quarantine,
                                            "seconds": round(time.perf_counter() - started, 3)})


def _publish_visual(work: str, out_uri: str, vt: VisualTokenizer, shards: list[ImageShard], world: int,
                    resumed: int) -> dict:
    """Move the finished tokenizer and token files into OUT (one publish), then drop the work folder."""
    fit = io.read_json(io.join(work, "fit.json"))
    # every shard's quarantine is complete (the fit's images are a subset of them)
    quarantine, counts, total, seconds = [], {}, 0, 0.0
    record: dict = {}
    with publish.publish(out_uri, VISUAL_STAGE, extra=record, flag="--out") as stage_dir:
        io.get_dir(io.join(work, "tokenizer"), io.join(stage_dir, "tokenizer"))
        for shard in shards:
            marker = io.read_json(_marker(work, shard))
            io.write_bytes(io.join(stage_dir, shard.tokens), io.read_bytes(io.join(work, shard.tokens)))
            quarantine.extend(marker["quarantine"])
            counts[f"{shard.dataset}/{shard.split}"] = counts.get(f"{shard.dataset}/{shard.split}", 0) + marker["samples"]
            total += marker["samples"]
            seconds += marker["seconds"]
        _write_quarantine(stage_dir, quarantine)
        training = fit["training"]
        summary = {"images": total, "shards": len(shards), "shards_resumed": resumed, "world_size": world,
                   "quarantined": len(quarantine), "grid_size": vt.grid_size, "codebook_size": vt.codebook_size,
                   "codebook_usage": training["final"] if training else None, "fit_seconds": fit["seconds"],
                   "encode_seconds": round(seconds, 2), "images_per_second": round(total / max(seconds, 1e-9), 1),
                   "per_split": counts}
        io.write_json(io.join(stage_dir, "summary.json"), summary)
        _finish(stage_dir, record)
    io.remove(work, recursive=True)
    return summary
