"""The three pretraining streams (images, texts, image-text pairs) and the per-step mixer.

Inputs, all produced by earlier stages:
- a validated collection: every dataset of kind `images`, `text` or `pairs` in it feeds that stream;
- `tokenize text` output T: T/tokens/<dataset path>/<split>.npz (`keys`, flat `ids`, `offsets`);
- `tokenize visual` output V: V/tokens/<dataset path>/<split>.npz (`keys`, `ids` (N, grid*grid)) and
  V/tokenizer/config.json (img_size, grid size, codebook size).

Order is a pure function of (seed, step): stream k's samples form an endless sequence of epochs, epoch e
being the permutation `default_rng([seed, k, e])` of its rows. Global step s takes positions
[s*W*B, (s+1)*W*B) of that sequence (B per rank, W ranks) and rank r the r-th slice of B -- so the data is
sharded by rank. Masks are drawn from `default_rng([seed, k, position])`, so a sample's masking does not
depend on which process draws it. A DataLoader worker w of K produces the whole batches of steps
start+w, start+w+K, ..., which the DataLoader hands back in step order -- sharded by worker. Resuming at
step s needs nothing but s: no reader state, no skipping.

Images are read one by one (`data.image_bytes`: one range read per image from the validated tar shards,
local or S3) and resized exactly as the visual tokenizer resized them (bicubic to its img_size), so patch k
of the input is the patch whose code is label k.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from beit3core import data, io, publish
from beit3core.data import formats
from beit3core.errors import UserError
from beit3core.pretrain.text_masking import IGNORE, mask_text
from beit3core.tokenizers import BlockMaskGenerator
from beit3core.tokenizers.stages import TEXT_STAGE, VISUAL_STAGE, check_tokens
from beit3core.tokenizers.visual import image_to_uint8

log = logging.getLogger(__name__)

STREAM_KINDS = {"images": "images", "texts": "text", "pairs": "pairs"}  # stream -> dataset kind
STREAM_IDS = {"images": 0, "texts": 1, "pairs": 2}


# -- token tables ---------------------------------------------------------------------------------------------
def _load_npz(uri: str) -> dict[str, np.ndarray]:
    if not io.exists(uri):
        raise UserError(f"{uri}: no such token file (run the tokenize stage on this dataset first)")
    with io.local_path(uri) as path, np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def _index_keys(keys: np.ndarray, wanted: list[str], where: str) -> np.ndarray:
    position = {str(k): i for i, k in enumerate(keys.tolist())}
    out = np.empty(len(wanted), dtype=np.int64)
    for j, key in enumerate(wanted):
        if key not in position:
            raise UserError(f"{where}: no tokens for row {key!r} (tokens are stale: rerun the tokenize stage)")
        out[j] = position[key]
    return out


@dataclass
class Stream:
    """The rows of one stream, concatenated over its datasets. Arrays only, so workers share them cheaply."""

    name: str
    datasets: list[str] = field(default_factory=list)  # dataset URIs
    dataset_index: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))  # per row
    image_refs: list[str] = field(default_factory=list)  # per row ("" for texts)
    text_ids: np.ndarray | None = None  # flat int32
    text_offsets: np.ndarray | None = None  # (N + 1,)
    visual_ids: np.ndarray | None = None  # (N, grid*grid) uint16

    def __len__(self) -> int:
        return len(self.dataset_index)

    def text(self, i: int) -> np.ndarray:
        return self.text_ids[self.text_offsets[i]:self.text_offsets[i + 1]]


def _concat_text(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    ids = np.concatenate([p[0] for p in parts]).astype(np.int32)
    lengths = np.concatenate([np.diff(p[1]) for p in parts])
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return ids, offsets


def load_stream(name: str, data_uri: str, text_tokens: str, visual_tokens: str, split: str,
                dataset_paths: list[str]) -> Stream:
    """Join the rows of `dataset_paths` (relative to `data_uri`) with their text and visual token ids."""
    check_inputs(data_uri, text_tokens if name != "images" else None, visual_tokens if name != "texts" else None)
    stream = Stream(name)
    index, texts, visuals = [], [], []
    for d, rel in enumerate(dataset_paths):
        uri = io.join(data_uri, rel) if rel else data_uri
        rows = data.read_rows(uri, split)
        if not rows:
            continue
        keys = [str(r["id"]) for r in rows]
        stream.datasets.append(uri)
        index.append(np.full(len(rows), len(stream.datasets) - 1, dtype=np.int32))
        stream.image_refs.extend(r.get("image", "") if name != "texts" else "" for r in rows)
        if name in ("texts", "pairs"):
            where = io.join(text_tokens, "tokens", rel, f"{split}.npz")
            npz = _load_npz(where)
            order = _index_keys(npz["keys"], keys, where)
            offsets = npz["offsets"]
            starts, ends = offsets[order], offsets[order + 1]
            seqs = [npz["ids"][s:e] for s, e in zip(starts, ends)]
            lengths = np.array([len(s) for s in seqs], dtype=np.int64)
            local_offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
            np.cumsum(lengths, out=local_offsets[1:])
            texts.append((np.concatenate(seqs) if seqs else np.zeros(0, np.int32), local_offsets))
        if name in ("images", "pairs"):
            where = io.join(visual_tokens, "tokens", rel, f"{split}.npz")
            npz = _load_npz(where)
            visuals.append(npz["ids"][_index_keys(npz["keys"], keys, where)])
    if index:
        stream.dataset_index = np.concatenate(index)
    if texts:
        stream.text_ids, stream.text_offsets = _concat_text(texts)
    if visuals:
        stream.visual_ids = np.concatenate(visuals).astype(np.int64)
    return stream


def check_inputs(data_uri: str, text_tokens: str | None, visual_tokens: str | None) -> None:
    """Refuse inputs that a killed or partial publish left incomplete (a collection missing datasets, tokens
    missing files) and tokens beside a tokenizer they were not made with. Inputs with no output record
    (hand-made) pass; each check runs once per process."""
    publish.check_complete(data_uri, what="--data")
    if text_tokens:
        check_tokens(text_tokens, TEXT_STAGE, what="--text-tokenizer")
    if visual_tokens:
        check_tokens(visual_tokens, VISUAL_STAGE, what="--visual-tokens")


def find_stream_datasets(data_uri: str) -> dict[str, list[str]]:
    """Relative paths of the datasets of each stream in a validated collection."""
    publish.check_complete(data_uri, what="--data")
    found: dict[str, list[str]] = {s: [] for s in STREAM_KINDS}
    by_kind = {kind: stream for stream, kind in STREAM_KINDS.items()}
    for rel in formats.find_datasets(data_uri):
        kind = data.read_header(io.join(data_uri, rel) if rel else data_uri)["kind"]
        if kind in by_kind:
            found[by_kind[kind]].append(rel)
    return found


# -- the mixer ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MaskingConfig:
    text_ratio: float = 0.15  # monomodal text
    pair_text_ratio: float = 0.5  # text of image-text pairs
    image_ratio: float = 0.4  # patches, block-wise
    mask_id: int = 0  # the text tokenizer's <mask>
    grid: int = 14  # patch grid side
    img_size: int = 224
    max_text_len: int = 64


def _min_block(num_patches: int) -> int:
    # BEiT v2 uses blocks of >= 16 of 196 patches; keep the same fraction on smaller grids.
    return max(1, round(16 * num_patches / 196))


class MixedBatches(IterableDataset):
    """Yields (step, batch) for steps start_step..total_steps-1 of this rank, each batch mixing
    `batch_sizes[stream]` samples of every stream (see the module docstring for the order)."""

    def __init__(self, streams: dict[str, Stream], batch_sizes: dict[str, int], masking: MaskingConfig, *,
                 seed: int, start_step: int, total_steps: int, rank: int = 0, world_size: int = 1):
        super().__init__()
        self.streams = {k: s for k, s in streams.items() if batch_sizes.get(k, 0) > 0}
        for name in self.streams:
            if len(self.streams[name]) == 0:
                raise UserError(f"pretraining stream {name!r}: no rows (batch size {batch_sizes[name]})")
        self.batch_sizes = {k: int(batch_sizes[k]) for k in self.streams}
        self.masking = masking
        self.seed, self.start_step, self.total_steps = int(seed), int(start_step), int(total_steps)
        self.rank, self.world_size = rank, world_size
        self._perms: dict[tuple[str, int], np.ndarray] = {}
        self._block_mask = None

    # -- order
    def _permutation(self, name: str, epoch: int) -> np.ndarray:
        key = (name, epoch)
        if key not in self._perms:
            if len(self._perms) > 8:
                self._perms.clear()
            rng = np.random.default_rng([self.seed, STREAM_IDS[name], epoch])
            self._perms[key] = rng.permutation(len(self.streams[name]))
        return self._perms[key]

    def positions(self, name: str, step: int) -> np.ndarray:
        """Global sample positions of this rank's part of `step` for one stream."""
        b = self.batch_sizes[name]
        first = (step * self.world_size + self.rank) * b
        return np.arange(first, first + b, dtype=np.int64)

    def rows(self, name: str, step: int) -> np.ndarray:
        n = len(self.streams[name])
        pos = self.positions(name, step)
        return np.array([self._permutation(name, int(p // n))[p % n] for p in pos], dtype=np.int64)

    # -- samples
    def image(self, stream: Stream, row: int) -> torch.Tensor:
        """Row `row` of `stream` as uint8 (3, H, W), resized as the visual tokenizer resized it."""
        uri = stream.datasets[stream.dataset_index[row]]
        ref = stream.image_refs[row]
        img = data.decode_image(data.image_bytes(uri, ref), f"{uri}/{ref}")
        return image_to_uint8(img, self.masking.img_size)

    def _image_mask(self, rng: np.random.Generator) -> np.ndarray:
        if self._block_mask is None:
            g = self.masking.grid
            count = int(round(self.masking.image_ratio * g * g))
            self._block_mask = BlockMaskGenerator((g, g), count, min_num=min(_min_block(g * g), max(count, 1)))
        return self._block_mask(rng).reshape(-1).astype(bool)

    def _text(self, stream: Stream, row: int) -> np.ndarray:
        ids = stream.text(row)
        limit = self.masking.max_text_len
        if len(ids) > limit:  # keep <s> ... </s>
            ids = np.concatenate([ids[:limit - 1], ids[-1:]])
        return ids

    def batch_for_step(self, step: int) -> dict[str, dict[str, torch.Tensor]]:
        """This rank's batch for `step`: a pure function of (seed, step, rank, world size, batch sizes)."""
        batch = {}
        for name in self.streams:
            rngs = [np.random.default_rng([self.seed, STREAM_IDS[name], int(p)]) for p in self.positions(name, step)]
            batch[name] = self.batch_of_rows(name, self.rows(name, step), rngs)
        return batch

    def batch_of_rows(self, name: str, rows: np.ndarray, rngs: list[np.random.Generator]) -> dict[str, torch.Tensor]:
        """The masked inputs and labels of `rows` of stream `name`; row j's masks are drawn from rngs[j]
        (its image mask first, then its text mask)."""
        out: dict[str, torch.Tensor] = {}
        if name in ("images", "pairs"):
            out.update(self.image_inputs(name, rows, rngs))
        if name in ("texts", "pairs"):
            out.update(self.text_inputs(name, rows, rngs))
        return out

    def image_inputs(self, name: str, rows: np.ndarray, rngs: list[np.random.Generator]) -> dict[str, torch.Tensor]:
        """image (uint8), block-wise image_mask and visual-token image_labels of `rows`."""
        stream = self.streams[name]
        return {"image": torch.stack([self.image(stream, int(r)) for r in rows]),
                "image_mask": torch.from_numpy(np.stack([self._image_mask(g) for g in rngs])),
                "image_labels": torch.from_numpy(stream.visual_ids[rows].astype(np.int64))}

    def text_inputs(self, name: str, rows: np.ndarray, rngs: list[np.random.Generator]) -> dict[str, torch.Tensor]:
        """Masked, padded text_ids, text_padding_mask (True = pad) and text_labels of `rows`, at the stream's ratio."""
        m, stream = self.masking, self.streams[name]
        ratio = m.text_ratio if name == "texts" else m.pair_text_ratio
        seqs = [mask_text(self._text(stream, int(r)), ratio, m.mask_id, g) for r, g in zip(rows, rngs)]
        length = max(len(s[0]) for s in seqs)
        ids = np.full((len(seqs), length), 1, dtype=np.int64)  # <pad> = 1
        labels = np.full((len(seqs), length), IGNORE, dtype=np.int64)
        padding = np.ones((len(seqs), length), dtype=bool)
        for j, (inp, lab) in enumerate(seqs):
            ids[j, :len(inp)], labels[j, :len(lab)], padding[j, :len(inp)] = inp, lab, False
        return {"text_ids": torch.from_numpy(ids), "text_padding_mask": torch.from_numpy(padding),
                "text_labels": torch.from_numpy(labels)}

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        for step in range(self.start_step + worker, self.total_steps, workers):
            yield step, self.batch_for_step(step)


def samples_per_step(batch_sizes: dict[str, int], world_size: int) -> int:
    return sum(batch_sizes.values()) * world_size
