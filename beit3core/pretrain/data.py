"""The three pretraining streams (images, texts, image-text pairs), streamed from the validated shards.

Inputs, all produced by earlier stages:
- a validated collection (format 2): every dataset of kind `images`, `text` or `pairs` in it feeds that
  stream; its rows come from the shards alone (`<key>.json` "rows"), never from `<split>.jsonl`;
- `tokenize text` output T: the SentencePiece tokenizer (T/tokenizer). Texts are tokenized here, in the
  loader workers: [<s>] + pieces[:max_text_len - 2] + [</s>];
- `tokenize visual` output V: V/tokenizer/config.json (img_size, grid, codebook size) and, for precomputed
  targets, one token file per image shard, V/tokens/<dataset path>/<shard stem>.npz (`keys`, `ids`).

Order (`beit3core.data.lanes`): each stream is a shard-lane sequence over its split's shards, defined by
(seed, stream, shards, lanes L) alone. Global step s takes G/L rows from every lane (G = per-rank batch x world
size); rank r reads lanes [r*L/W, (r+1)*L/W), its loader workers split those lanes among them, and the main
process joins the workers' parts of one step in lane order. Resuming at step s needs nothing but s: lane j
seeks to row s*G/L. Masks (and the augmentation) of a row are drawn from generators seeded by its read
(seed, stream, epoch, shard, row), so they do not depend on which process draws them.

Visual targets: `precomputed` reads each row's labels from its shard's token file and resizes the image as the
tokenizer did (bicubic to img_size, `augment.precomputed_view`); `on-the-fly` augments the image
(`augment.PretrainAugment`) and puts the tokenizer's view in the batch as `tokenizer_image` instead of
`image_labels`: the trainer encodes it on the device.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from beit3core import data, io, publish
from beit3core.data import formats
from beit3core.data.lanes import (
    LanePlan,
    LaneReader,
    RowKey,
    Shard,
    check_layout,
    held_lanes,
    read_shard,
    split_shards,
)
from beit3core.errors import UserError
from beit3core.pretrain.text_masking import IGNORE, mask_text
from beit3core.tokenizers import BlockMaskGenerator, TextTokenizer
from beit3core.tokenizers.stages import TEXT_STAGE, VISUAL_STAGE, check_tokens
from beit3core.tokenizers.text import BOS_ID, EOS_ID, PAD_ID
from beit3core.tokenizers.visual import put_chw

log = logging.getLogger(__name__)

STREAM_KINDS = {"images": "images", "texts": "text", "pairs": "pairs"}  # stream -> dataset kind
STREAM_IDS = {"images": 0, "texts": 1, "pairs": 2}
TEXT_FIELDS = {"texts": "text", "pairs": "caption"}
VISUAL_TARGETS = ("precomputed", "on-the-fly")
DEFAULT_LANES = 16  # divides the demo's batches (16, 16, 32) and W x K up to 16 (e.g. 8 ranks x 2 workers)
_AUGMENT_DRAW = 1  # the augmentation's generator: the row's key plus this, apart from the masks'


# -- inputs ---------------------------------------------------------------------------------------------------
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


@dataclass(frozen=True)
class StreamSource:
    """One stream's shards of one split (its datasets' shard lists, concatenated) and, per shard, the token
    file of its precomputed visual targets ("" when the stream has no images or none are precomputed)."""

    name: str
    shards: tuple[Shard, ...]
    token_files: tuple[str, ...]

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.shards)


def stream_source(name: str, data_uri: str, split: str, dataset_paths: list[str],
                  visual_tokens: str | None = None) -> StreamSource:
    """The shards of `split` of `dataset_paths` (relative to `data_uri`); `visual_tokens` (V) names the
    per-shard token files when the targets are precomputed."""
    shards, token_files = [], []
    for rel in dataset_paths:
        uri = io.join(data_uri, rel) if rel else data_uri
        for shard in split_shards(uri, split):
            shards.append(shard)
            with_tokens = visual_tokens and name != "texts"
            token_files.append(io.join(visual_tokens, "tokens", rel, f"{shard.stem}.npz") if with_tokens else "")
    source = StreamSource(name, tuple(shards), tuple(token_files))
    if visual_tokens and name != "texts":
        check_token_files(source)
    return source


def check_token_files(source: StreamSource) -> None:
    """Refuse, before any step, a stream with a shard that has no token file (one listing per folder): a
    missing one would otherwise stop the run when its lane reaches it."""
    present: dict[str, set[str]] = {}
    for shard, where in zip(source.shards, source.token_files):
        folder, name = where.rsplit("/", 1)
        if folder not in present:
            present[folder] = {u.rsplit("/", 1)[-1] for u in io.ls(folder)} if io.isdir(folder) else set()
        if name not in present[folder]:
            raise UserError(f"{where}: no visual token file for shard {shard.uri} (run the tokenize visual stage "
                            "on this collection, or use --visual-targets on-the-fly)")


# -- one shard, loaded ----------------------------------------------------------------------------------------
@dataclass
class LoadedShard:
    """A shard's rows, sample files and (precomputed targets) sample key -> visual token ids."""

    uri: str
    rows: list[dict]
    keys: list[str]
    files: dict[str, dict[str, bytes]]
    tokens: dict[str, np.ndarray] | None = None


def load_shard(source: StreamSource, index: int, *, with_tokens: bool) -> LoadedShard:
    """Shard `index` of `source`: one read of the tar (image files kept only for streams with images) and,
    with_tokens, its token file."""
    shard = source.shards[index]
    images = source.name != "texts"
    samples = read_shard(shard, keep=lambda ext: images and ext not in ("txt", "json"))
    loaded = LoadedShard(shard.uri, samples.rows, samples.keys, samples.files)
    if images and with_tokens:
        where = source.token_files[index]
        if not where or not io.exists(where):
            raise UserError(f"{where or shard.uri}: no visual token file for shard {shard.uri} "
                            "(run the tokenize visual stage on this collection)")
        with io.local_path(where) as path, np.load(path, allow_pickle=False) as npz:
            keys, ids = npz["keys"], npz["ids"]
        loaded.tokens = {str(k): ids[i] for i, k in enumerate(keys.tolist())}
    return loaded


# -- the samples ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MaskingConfig:
    text_ratio: float = 0.15  # monomodal text
    pair_text_ratio: float = 0.5  # text of image-text pairs
    image_ratio: float = 0.4  # patches, block-wise
    mask_id: int = 0  # the text tokenizer's <mask>
    grid: int = 14  # patch grid side
    img_size: int = 224
    max_text_len: int = 64
    tokenizer_img_size: int = 0  # the visual tokenizer's input size for on-the-fly targets (0: img_size)


def _min_block(num_patches: int) -> int:
    # BEiT v2 uses blocks of >= 16 of 196 patches; keep the same fraction on smaller grids.
    return max(1, round(16 * num_patches / 196))


def text_inputs(seqs: list[np.ndarray], ratio: float, mask_id: int, rngs: list[np.random.Generator]) -> dict:
    """Masked, padded text_ids, text_padding_mask (True = pad) and text_labels of token sequences; sequence j's
    mask is drawn from rngs[j]."""
    masked = [mask_text(s, ratio, mask_id, g) for s, g in zip(seqs, rngs)]
    length = max(len(s[0]) for s in masked)
    ids = np.full((len(masked), length), PAD_ID, dtype=np.int64)
    labels = np.full((len(masked), length), IGNORE, dtype=np.int64)
    padding = np.ones((len(masked), length), dtype=bool)
    for j, (inp, lab) in enumerate(masked):
        ids[j, :len(inp)], labels[j, :len(lab)], padding[j, :len(inp)] = inp, lab, False
    return {"text_ids": torch.from_numpy(ids), "text_padding_mask": torch.from_numpy(padding),
            "text_labels": torch.from_numpy(labels)}


def _batch_images(n: int, side: int) -> torch.Tensor:
    """An uninitialised uint8 (n, 3, side, side) batch; in a loader worker, allocated in shared memory (as torch's
    default_collate does) so handing it to the main process copies nothing."""
    if get_worker_info() is None:
        return torch.empty((n, 3, side, side), dtype=torch.uint8)
    storage = torch.UntypedStorage._new_shared(n * 3 * side * side)
    return torch.empty(0, dtype=torch.uint8).set_(storage, 0, (n, 3, side, side))


class SampleMaker:
    """Turns rows into model inputs: decodes and views images, tokenizes and masks texts, draws image masks.
    Holds the text tokenizer's bytes and builds the tokenizer in the process that uses it."""

    def __init__(self, masking: MaskingConfig, *, seed: int, text_tokenizer: bytes | None = None,
                 visual_targets: str = "precomputed"):
        if visual_targets not in VISUAL_TARGETS:
            raise UserError(f"--visual-targets {visual_targets}: one of {', '.join(VISUAL_TARGETS)}")
        self.masking, self.seed, self.visual_targets = masking, int(seed), visual_targets
        self._proto = text_tokenizer
        self._tokenizer = self._augment = self._block_mask = None

    def __getstate__(self):  # workers started by spawn rebuild the tokenizer and generators themselves
        return {**self.__dict__, "_tokenizer": None, "_augment": None, "_block_mask": None}

    def text_ids(self, text: str) -> np.ndarray:
        if self._tokenizer is None:
            if self._proto is None:
                raise UserError("pretraining texts need the text tokenizer (--text-tokenizer)")
            self._tokenizer = TextTokenizer(self._proto)
        pieces = self._tokenizer.tokenize(text)[: self.masking.max_text_len - 2]
        return np.array([BOS_ID, *pieces, EOS_ID], dtype=np.int64)

    def image_mask(self, rng: np.random.Generator) -> np.ndarray:
        if self._block_mask is None:
            g = self.masking.grid
            count = round(self.masking.image_ratio * g * g)
            self._block_mask = BlockMaskGenerator((g, g), count, min_num=min(_min_block(g * g), max(count, 1)))
        return self._block_mask(rng).reshape(-1).astype(bool)

    def views(self, img, key: list[int]):
        """(the model's view, the tokenizer's view or None) of a decoded image, as RGB PIL images."""
        from beit3core.pretrain.augment import PretrainAugment, precomputed_pil

        m = self.masking
        if self.visual_targets == "precomputed":
            return precomputed_pil(img, m.img_size), None
        if self._augment is None:
            self._augment = PretrainAugment(m.img_size, m.tokenizer_img_size or m.img_size)
        return self._augment.views(img, np.random.default_rng([*key, _AUGMENT_DRAW]))

    def batch(self, name: str, items: list[tuple[RowKey, LoadedShard]]) -> dict[str, torch.Tensor]:
        """The inputs and targets of `items` of stream `name`; a row's image mask is drawn first, then its
        text mask, from the generator its read seeds."""
        keys = [k.seed(self.seed, STREAM_IDS[name]) for k, _ in items]
        rngs = [np.random.default_rng(k) for k in keys]
        out: dict[str, torch.Tensor] = {}
        if name != "texts":
            out.update(self._image_inputs(items, keys, rngs))
        if name != "images":
            m = self.masking
            field = TEXT_FIELDS[name]
            seqs = [self.text_ids(shard.rows[k.row][field]) for k, shard in items]
            out.update(text_inputs(seqs, m.text_ratio if name == "texts" else m.pair_text_ratio, m.mask_id, rngs))
        return out

    def _image_inputs(self, items, keys, rngs) -> dict[str, torch.Tensor]:
        """Each view is written straight into its batch row (in a worker, shared memory): no per-image tensor, no
        stack, no copy when the batch goes to the main process."""
        m, n = self.masking, len(items)
        on_the_fly = self.visual_targets == "on-the-fly"
        out = {"image": _batch_images(n, m.img_size)}
        if on_the_fly:
            out["tokenizer_image"] = _batch_images(n, m.tokenizer_img_size or m.img_size)
        rows = {name: t.numpy() for name, t in out.items()}
        labels = []
        for j, ((k, shard), key) in enumerate(zip(items, keys)):
            sample = shard.keys[k.row]
            img = data.decode_image(_image_file(shard, k.row), f"{shard.uri}#{sample}")
            view, tokenizer_view = self.views(img, key)
            put_chw(rows["image"][j], view)
            if on_the_fly:
                put_chw(rows["tokenizer_image"][j], tokenizer_view)
            else:
                labels.append(_labels(shard, sample))
        out["image_mask"] = torch.from_numpy(np.stack([self.image_mask(g) for g in rngs]))
        if not on_the_fly:
            out["image_labels"] = torch.from_numpy(np.stack(labels).astype(np.int64))
        return out


def _image_file(shard: LoadedShard, row: int) -> bytes:
    """The bytes of a row's (first) image: the file of its sample, named by its shard reference."""
    ref = shard.rows[row].get("image")
    sample = shard.keys[row]
    ext = formats.parse_shard_ref(ref)[1].partition(".")[2] if formats.is_shard_ref(ref) else ""
    files = shard.files.get(sample, {})
    if ext not in files:
        raise UserError(f"{shard.uri}: sample {sample!r} has no image {ref!r} (rerun beit3 data validate)")
    return files[ext]


def _labels(shard: LoadedShard, sample: str) -> np.ndarray:
    if shard.tokens is None or sample not in shard.tokens:
        raise UserError(f"{shard.uri}: no visual tokens for sample {sample!r} (tokens are stale: rerun the "
                        "tokenize visual stage)")
    return shard.tokens[sample]


# -- the per-step batches -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Layout:
    """Where this process sits: the lanes, the ranks, the loader workers."""

    lanes: int = DEFAULT_LANES
    rank: int = 0
    world_size: int = 1
    workers: int = 0


class LaneBatches(IterableDataset):
    """Yields (step, part, batch part) for steps start_step..total_steps-1: the rows of this process's lanes
    (this rank's, split among its loader workers), `global batch / lanes` rows of each lane per step and
    stream, in lane order. `join_parts` makes one batch of a step's parts."""

    def __init__(self, sources: dict[str, StreamSource], batch_sizes: dict[str, int], maker: SampleMaker,
                 layout: Layout, *, start_step: int, total_steps: int):
        super().__init__()
        self.sources = {k: s for k, s in sources.items() if batch_sizes.get(k, 0) > 0}
        for name, source in self.sources.items():
            if source.rows == 0:
                raise UserError(f"pretraining stream {name!r}: no rows (batch size {batch_sizes[name]})")
        self.per_lane = {k: int(batch_sizes[k]) * layout.world_size // layout.lanes for k in self.sources}
        self.maker, self.layout = maker, layout
        self.start_step, self.total_steps = int(start_step), int(total_steps)

    def plan(self, name: str) -> LanePlan:
        return LanePlan(list(self.sources[name].shards), seed=self.maker.seed, stream=STREAM_IDS[name],
                        lanes=self.layout.lanes)

    def __iter__(self):
        if self.start_step >= self.total_steps:  # a finished run: read nothing
            return
        info = get_worker_info()
        worker = 0 if info is None else info.id
        lay = self.layout
        lanes = held_lanes(lay.lanes, lay.world_size, lay.rank, lay.workers, worker)
        with_tokens = self.maker.visual_targets == "precomputed"
        pool = ThreadPoolExecutor(max_workers=max(1, min(8, len(lanes) * len(self.sources))), thread_name_prefix="shards")
        readers = {}
        try:
            for name, source in self.sources.items():
                plan = self.plan(name)

                def load(index, source=source):
                    return load_shard(source, index, with_tokens=with_tokens)

                position = self.start_step * self.per_lane[name]
                readers[name] = [LaneReader(plan, j, position, load, pool) for j in lanes]
            for step in range(self.start_step, self.total_steps):
                part = {}
                for name, lane_readers in readers.items():
                    items = [item for r in lane_readers for item in r.take(self.per_lane[name])]
                    part[name] = self.maker.batch(name, items)
                yield step, worker, part
        finally:
            for lane_readers in readers.values():
                for r in lane_readers:
                    r.close()
            pool.shutdown(wait=False, cancel_futures=True)


def _pad_to(t: torch.Tensor, width: int, value) -> torch.Tensor:
    if t.shape[1] == width:
        return t
    return torch.cat([t, torch.full((t.shape[0], width - t.shape[1]), value, dtype=t.dtype)], dim=1)


_PAD = {"text_ids": PAD_ID, "text_labels": IGNORE, "text_padding_mask": True}


def join_parts(parts: list[dict[str, dict[str, torch.Tensor]]], *,
               pin_memory: bool = False) -> dict[str, dict[str, torch.Tensor]]:
    """One step's batch from its parts (in lane order): rows concatenated, texts padded to the widest.
    pin_memory: every tensor of the batch in page-locked memory, the parts copied straight into it (pinning the
    parts and then concatenating them would leave the batch in pageable memory)."""
    if len(parts) == 1 and not pin_memory:
        return parts[0]
    out = {}
    for name in parts[0]:
        out[name] = {}
        for key in parts[0][name]:
            tensors = [p[name][key] for p in parts]
            if key in _PAD:
                width = max(t.shape[1] for t in tensors)
                tensors = [_pad_to(t, width, _PAD[key]) for t in tensors]
            shape = (sum(t.shape[0] for t in tensors), *tensors[0].shape[1:])
            joined = torch.empty(shape, dtype=tensors[0].dtype, pin_memory=pin_memory)
            out[name][key] = torch.cat(tensors, out=joined)
    return out


class StepBatches:
    """(step, batch) from a DataLoader over LaneBatches: the DataLoader hands the workers' items round-robin,
    so each step's parts arrive together, in worker (= lane) order."""

    def __init__(self, loader: DataLoader, parts: int, *, pin_memory: bool = False):
        # as the DataLoader does, pinning is off where there is no accelerator to pin for
        self.parts, self.pin_memory = max(parts, 1), pin_memory and torch.accelerator.is_available()
        self._items = iter(loader)  # created now: the iterator draws its base seed from the global RNG

    def __iter__(self):
        return self

    def __next__(self) -> tuple[int, dict]:
        got = [next(self._items) for _ in range(self.parts)]
        step = got[0][0]
        if [(s, p) for s, p, _ in got] != [(step, k) for k in range(self.parts)]:
            raise RuntimeError(f"data loader delivered parts {[(s, p) for s, p, _ in got]} for one step")
        return step, join_parts([b for _, _, b in got], pin_memory=self.pin_memory)


def lane_loader(sources: dict[str, StreamSource], batch_sizes: dict[str, int], masking: MaskingConfig, *,
                seed: int, layout: Layout, start_step: int, total_steps: int, text_tokenizer: bytes | None = None,
                visual_targets: str = "precomputed", pin_memory: bool = False) -> StepBatches:
    """The pretraining loader of one rank: (step, batch) for steps start_step..total_steps-1, batch[stream] with
    the model's keys (image, image_mask, image_labels or tokenizer_image, text_ids, text_padding_mask,
    text_labels). The trainer's loader; `open_loader` builds the same from the stage outputs."""
    check_layout(layout.lanes, layout.world_size, layout.workers,
                 {k: v * layout.world_size for k, v in batch_sizes.items() if v > 0})
    maker = SampleMaker(masking, seed=seed, text_tokenizer=text_tokenizer, visual_targets=visual_targets)
    dataset = LaneBatches(sources, batch_sizes, maker, layout, start_step=start_step, total_steps=total_steps)
    # One part a step: the DataLoader pins it (in its background thread). Several: they are pinned once, as
    # StepBatches joins them; pinning each part first would copy the batch twice and leave it in pageable memory.
    joined = layout.workers > 1
    loader = DataLoader(dataset, batch_size=None, num_workers=layout.workers, pin_memory=pin_memory and not joined,
                        prefetch_factor=4 if layout.workers else None, persistent_workers=False)
    return StepBatches(loader, layout.workers, pin_memory=pin_memory and joined)


def open_loader(data: str, text_tokenizer: str, visual_tokens: str, *, batch_sizes: dict[str, int],
                total_steps: int, split: str = "train", seed: int = 0, lanes: int | None = None, rank: int = 0,
                world_size: int = 1, num_workers: int = 0, start_step: int = 0, img_size: int | None = None,
                max_text_len: int = 64, visual_targets: str = "precomputed", pin_memory: bool = False) -> StepBatches:
    """The trainer's loader (`lane_loader`, default masking ratios) built from the stage outputs: a validated
    collection, `tokenize text` output, `tokenize visual` output. `lanes` None: processes x workers (the
    fewest lanes, so the fewest shards held). img_size None: the visual tokenizer's. For benchmarks and tools."""
    from beit3core.tokenizers.visual import VisualTokenizer

    check_inputs(data, text_tokenizer, visual_tokens)
    tokenizer = TextTokenizer.load(text_tokenizer)
    visual = VisualTokenizer.read_config(visual_tokens)
    found = find_stream_datasets(data)
    batch_sizes = {k: v for k, v in batch_sizes.items() if v > 0}
    sources = {name: stream_source(name, data, split, found[name],
                                   visual_tokens if visual_targets == "precomputed" else None)
               for name in batch_sizes}
    for name, source in sources.items():
        if not source.shards:
            raise UserError(f"{data}: no {STREAM_KINDS[name]!r} dataset with a {split!r} split")
    masking = MaskingConfig(mask_id=tokenizer.mask_id, grid=visual.grid_size, img_size=img_size or visual.img_size,
                            max_text_len=max_text_len, tokenizer_img_size=visual.img_size)
    layout = Layout(lanes or world_size * max(num_workers, 1), rank, world_size, num_workers)
    return lane_loader(sources, batch_sizes, masking, seed=seed, layout=layout, start_step=start_step,
                       total_steps=total_steps, text_tokenizer=tokenizer.model_proto, visual_targets=visual_targets,
                       pin_memory=pin_memory)


def read_pairs(source: StreamSource, n: int, maker: SampleMaker) -> tuple[torch.Tensor, list[np.ndarray]]:
    """The first `n` pairs of `source` in shard order (no shuffle, one shard read at a time), one per image (its
    first caption), so neighbours never share an image: their images as the precomputed view and their text
    token ids. For held-out checks."""
    from beit3core.pretrain.augment import precomputed_view

    images, texts = [], []
    for index, shard in enumerate(source.shards):
        if len(texts) >= n:
            break
        loaded = load_shard(source, index, with_tokens=False)
        firsts = [r for r in range(len(loaded.rows)) if r == 0 or loaded.keys[r] != loaded.keys[r - 1]]
        for row in firsts[:n - len(texts)]:
            img = data.decode_image(_image_file(loaded, row), f"{loaded.uri}#{loaded.keys[row]}")
            images.append(precomputed_view(img, maker.masking.img_size))
            texts.append(maker.text_ids(loaded.rows[row][TEXT_FIELDS["pairs"]]))
    return (torch.stack(images) if images else torch.zeros(0, 3, maker.masking.img_size, maker.masking.img_size,
                                                           dtype=torch.uint8)), texts


def samples_per_step(batch_sizes: dict[str, int], world_size: int) -> int:
    return sum(batch_sizes.values()) * world_size
