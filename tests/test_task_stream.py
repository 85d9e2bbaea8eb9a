"""Fine-tuning and evaluation read a task split from its shards (beit3core.data.task_stream, beit3core.tasks.data;
issue 14 section 1): each shard whole with one GET, rows dealt to ranks and loader workers so none is read twice
an epoch, a new seeded order every epoch, no `<split>.jsonl` row list and no request per image; NLVR2 rows find
both their images in the sample that carries them."""

from __future__ import annotations

import io as pyio
import itertools
import json
import tarfile

import numpy as np
import pytest
import torch

from beit3core import data, io
from beit3core.data import task_stream
from beit3core.data.task_stream import SplitSource, cut, eval_plan, read_plan, shuffled
from beit3core.errors import UserError
from beit3core.tasks import collator
from beit3core.tasks.data import (
    TrainAugment,
    eval_batches,
    image_transform,
    train_loader,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    """The synthetic task datasets, validated with 2 images a shard (many shards, uneven row counts)."""
    from beit3core.data.validation import validate

    root = tmp_path_factory.mktemp("ts")
    data.synthesize(str(root / "synth"), seed=0, image_size=32, scale=0.03)
    validate(str(root / "synth" / "tasks"), str(root / "v"), workers=1, shard_size=2, data_docs=False)
    return root / "v"


def _ids(items: list[dict]) -> list:
    return [it["row"]["id"] for it in items]


def _epoch(uri: str, epoch: int, *, rank=0, world_size=1, workers=0, batch=4, seed=0, buffer=2048) -> list[list]:
    """The batches (row ids) rank `rank` gets in `epoch`, as fine-tuning asks for them."""
    loader = train_loader("vqa", uri, "train", _ids, img_size=32, batch_size=batch, augment=TrainAugment(),
                          seed=seed, rank=rank, world_size=world_size, num_workers=workers, shuffle_buffer=buffer)
    loader.generator.manual_seed(seed + rank + 7919 * epoch)
    loader.dataset.set_epoch(epoch)
    batches = list(loader)
    assert len(batches) == len(loader)
    return batches


def test_rows_read_once_per_epoch_across_two_ranks_and_two_workers(tasks):
    """2 ranks x 2 loader workers (torch DataLoader workers, told apart by `torch.utils.data.get_worker_info`):
    every rank runs rows // (2 * batch) steps, and in each epoch no row is read twice; the rows left out (fewer
    than 2 batches) differ between epochs, so more are seen over the epochs."""
    uri = str(tasks / "vqa")
    ids = [r["id"] for r in data.read_rows(uri, "train")]
    per_epoch = len(ids) // 2 // 4
    seen = set()
    for epoch in (0, 1, 2):
        got = [_epoch(uri, epoch, rank=r, world_size=2, workers=2) for r in (0, 1)]
        assert [len(b) for b in got] == [per_epoch, per_epoch] and all(len(x) == 4 for b in got for x in b)
        flat = [i for b in got for x in b for i in x]
        assert len(flat) == len(set(flat)) == 2 * per_epoch * 4 and set(flat) <= set(ids)
        seen |= set(flat)
    assert len(seen) > 2 * per_epoch * 4  # a new shard order each epoch


def test_shuffle_is_seeded_and_differs_per_epoch(tasks):
    """The order of an epoch follows from (seed, epoch) alone: the same twice, another epoch or seed differs, and
    a fresh loader started at epoch 2 (a run resumed at an epoch end) gets the batches of an uninterrupted one."""
    uri = str(tasks / "vqa")
    first = _epoch(uri, 0)
    assert first == _epoch(uri, 0)
    assert first != _epoch(uri, 1) and first != _epoch(uri, 0, seed=1)
    loader = train_loader("vqa", uri, "train", _ids, img_size=32, batch_size=4, augment=TrainAugment(), seed=0)
    straight = []
    for epoch in range(3):
        loader.dataset.set_epoch(epoch)
        straight.append(list(loader))
    assert straight[2] == _epoch(uri, 2)
    # within a shard the rows are shuffled too: consecutive rows of the file rarely stay neighbours
    rows = [i for b in first for i in b]
    order = {i: n for n, i in enumerate(r["id"] for r in data.read_rows(uri, "train"))}
    assert sum(order[b] == order[a] + 1 for a, b in itertools.pairwise(rows)) < len(rows) // 4


def test_shuffle_buffer_is_bounded():
    """With a buffer of k the n-th item out is one of the first n + k in; a buffer as large as the input
    returns a permutation of it."""
    rng = np.random.default_rng(0)
    out = list(shuffled(range(100), 8, rng))
    assert sorted(out) == list(range(100)) and out != list(range(100))
    assert all(x < n + 8 for n, x in enumerate(out))
    assert sorted(shuffled(range(10), 50, rng)) == list(range(10))


def test_plan_cuts_an_epoch_into_contiguous_blocks():
    sizes = np.array([3, 5, 2, 4])
    assert cut(sizes, [2, 0, 3, 1], 1, 8) == [(2, 1, 2), (0, 0, 3), (3, 0, 3)]
    assert eval_plan(sizes, 9) == [(0, 0, 3), (1, 0, 5), (2, 0, 1)]
    # 1 rank, 2 workers, 3 steps of 2 rows: worker 0 one batch, worker 1 two, back to back
    a = task_stream.train_plan(sizes, seed=0, epoch=0, rank=0, steps=3, batch=2, worker=0, workers=2)
    b = task_stream.train_plan(sizes, seed=0, epoch=0, rank=0, steps=3, batch=2, worker=1, workers=2)
    assert sum(hi - lo for _, lo, hi in a) == 2 and sum(hi - lo for _, lo, hi in b) == 4


def test_no_row_list_and_no_image_reads(tasks, monkeypatch):
    """A training epoch and an evaluation pass of a validated split read neither `<split>.jsonl` nor any image on
    its own (the old loaders held the split's row list and range-read each image)."""
    uri = str(tasks / "retrieval")
    expected = data.read_rows(uri, "val")

    def refused(*args, **kwargs):
        raise AssertionError("read outside the shards")

    monkeypatch.setattr(io, "read_jsonl", refused)
    monkeypatch.setattr(data.reading, "image_bytes", refused)
    monkeypatch.setattr(data.shards.ShardReader, "read", refused)
    assert sum(len(b) for b in _epoch(str(tasks / "vqa"), 0)) > 0
    source = SplitSource(uri, "val")
    assert sorted(r["id"] for r, _ in read_plan(source, eval_plan(source.sizes))) == sorted(r["id"] for r in expected)


def test_eval_batches_equal_the_row_by_row_images(tasks):
    """The model sees the same evaluation batches as when each row's image was loaded on its own: same keys,
    dtypes and pixels (the collation is unchanged)."""
    from beit3core.tokenizers import TextTokenizer

    uri = str(tasks / "vqa")
    header = data.read_header(uri)
    tok = TextTokenizer.train([r["question"] for r in data.read_rows(uri, "train")], vocab_size=40)
    collate = collator("vqa", tok, 12, header)
    source = SplitSource(uri, "val")
    batch = next(eval_batches("vqa", read_plan(source, eval_plan(source.sizes, 5)), collate, uri=uri, img_size=32,
                              batch_size=5, fields=("image",)))
    transform = image_transform("vqa", 32, False)
    expected = collate([{"row": r, "image": transform(data.load_image(uri, r["image"]))} for r in batch["rows"]])
    assert batch.keys() == expected.keys() == {"rows", "image", "text_ids", "text_padding_mask", "targets"}
    for key in ("image", "text_ids", "text_padding_mask", "targets"):
        assert batch[key].dtype == expected[key].dtype and torch.equal(batch[key], expected[key]), key


def test_nlvr2_rows_carry_both_images(tasks):
    """The packer stores in each sample every image its rows use: an NLVR2 row's right image, packed as another
    sample (often in another shard), comes again as `<key>.<member>`, counted in validation.image_copies, and the
    stream reads both images of every row from the one shard that carries the row."""
    uri = str(tasks / "nlvr2")
    header = data.read_header(uri)
    copies = 0
    for entries in header["validation"]["shards"].values():
        for entry in entries:
            with tarfile.open(io.join(uri, entry["name"])) as tar:
                copies += sum(m.name.count(".") == 2 for m in tar)
    assert copies == header["validation"]["image_copies"] > 0
    source = SplitSource(uri, "train")
    rows = 0
    for row, images in read_plan(source, eval_plan(source.sizes)):
        for field in ("image_left", "image_right"):
            assert images[field] == data.image_bytes(uri, row[field]), (row["id"], field)
        rows += 1
    assert rows == len(data.read_rows(uri, "train"))


def test_a_sample_without_its_rows_images_is_refused(tasks, tmp_path):
    """Shards written before samples carried every image of their rows: one clear error, not a wrong image."""
    import shutil

    uri = tmp_path / "nlvr2"
    shutil.copytree(tasks / "nlvr2", uri)
    name = data.read_header(str(uri))["validation"]["shards"]["val"][0]["name"]
    with tarfile.open(uri / name) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar if m.name.count(".") == 1]
    with tarfile.open(uri / name, "w") as tar:
        for m, payload in members:
            tar.addfile(m, pyio.BytesIO(payload))
    source = SplitSource(str(uri), "val")
    with pytest.raises(UserError, match="does not carry image .*rerun beit3 data validate"):
        list(read_plan(source, eval_plan(source.sizes)))


def test_one_get_per_shard_on_s3(tasks, s3_prefix, monkeypatch):
    """Issue 14 done-when, for fine-tuning and evaluation: one training epoch and one evaluation pass on S3 read
    each shard with one whole-object GetObject (s3fs `_cat_file` with max_concurrency 1: no HEAD, no ranged
    GETs) and nothing per image. Counted at s3fs's `S3FileSystem._call_s3`, through which every S3 API call of
    s3fs goes."""
    import s3fs

    io.put_dir(str(tasks / "vqa"), s3_prefix + "/vqa")
    uri = s3_prefix + "/vqa"
    calls = []
    original = s3fs.S3FileSystem._call_s3

    async def counting(self, method, *args, **kwargs):
        calls.append((method, kwargs.get("Key", ""), "Range" in kwargs))
        return await original(self, method, *args, **kwargs)

    monkeypatch.setattr(s3fs.S3FileSystem, "_call_s3", counting)
    shards = {s: [e["name"] for e in v] for s, v in data.read_header(uri)["validation"]["shards"].items()}
    loader = train_loader("vqa", uri, "train", _ids, img_size=32, batch_size=4, augment=TrainAugment(), seed=0)
    calls.clear()
    assert sum(map(len, loader)) > 0
    tars = [key.split("/vqa/", 1)[1] for method, key, _ in calls if method == "get_object" and key.endswith(".tar")]
    assert len(tars) == len(set(tars)) >= len(shards["train"]) - 1  # each once; the epoch's tail may go unused
    assert set(tars) <= set(shards["train"]) and len(calls) == len(tars), calls  # nothing else: no image read
    assert not any(ranged for _, _, ranged in calls)  # whole-object GETs

    source = SplitSource(uri, "val")
    calls.clear()
    assert sum(1 for _ in read_plan(source, eval_plan(source.sizes))) == source.rows
    tars = [key.split("/vqa/", 1)[1] for method, key, _ in calls if method == "get_object" and key.endswith(".tar")]
    assert sorted(tars) == sorted(shards["val"]), tars
    assert len(calls) == len(tars), calls
    calls.clear()  # --max-eval-examples: the shards past the first rows are not fetched
    first = int(source.sizes[0])
    assert sum(1 for _ in read_plan(source, eval_plan(source.sizes, first + 1))) == first + 1
    assert len(calls) == 2


def test_raw_datasets_still_train_and_evaluate(tmp_path):
    """A raw dataset (synth / import output, no shards) is read from its jsonl in parts: every row once."""
    data.synthesize(str(tmp_path / "s"), seed=0, image_size=32, scale=0.03)
    uri = str(tmp_path / "s" / "tasks" / "vqa")
    rows = data.read_rows(uri, "train")
    source = SplitSource(uri, "train")
    assert source.rows == len(rows)
    assert [r["id"] for r, _ in read_plan(source, eval_plan(source.sizes))] == [r["id"] for r in rows]
    got = [i for b in _epoch(uri, 0, world_size=1) for i in b]
    assert len(got) == len(set(got)) == len(rows) // 4 * 4


@pytest.mark.parametrize("task", ["nlvr2", "retrieval"])
def test_finetune_and_evaluate_from_shards(tasks, tmp_path, task):
    """`beit3 finetune` (2 loader workers) and `beit3 evaluate` on validated shards: NLVR2 rows with both images,
    retrieval's one pass over images and captions; the saved model evaluates to the fine-tuning run's figures."""
    from beit3core.tokenizers import TextTokenizer
    from beit3train.evaluate import main as evaluate_main
    from beit3train.finetune import main as finetune_main

    uri = str(tasks / task)
    texts = [r.get("sentence") or r.get("caption") for r in data.read_rows(uri, "train")]
    TextTokenizer.train(texts, vocab_size=40).save(str(tmp_path / "tok"))
    common = ["--task", task, "--data", uri, "--text-tokenizer", str(tmp_path / "tok"), "--no-progress"]
    assert finetune_main([*common, "--init", "random", "--out", str(tmp_path / "run"), "--arch",
                          "beit3_tiny_patch8_64", "--steps", "2", "--warmup-steps", "1", "--batch-size", "4",
                          "--img-size", "32", "--max-len", "12", "--eval-batch-size", "3", "--num-workers", "2",
                          "--max-eval-examples", "7"]) == 0
    assert evaluate_main([*common, "--model-dir", str(tmp_path / "run" / "model"), "--out", str(tmp_path / "ev"),
                          "--split", "val", "--max-examples", "7"]) == 0
    ft = json.loads((tmp_path / "run" / "metrics.json").read_text())
    ev = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    key = "acc" if task == "nlvr2" else "average_score"
    assert ev[key] == pytest.approx(ft[key], abs=1e-3)
    assert ev.get("num_examples", ev.get("num_texts")) == min(7, len(data.read_rows(uri, "val")))
