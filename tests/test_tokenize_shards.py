"""`beit3 tokenize visual` over a format-2 (C1) collection: one token file per image shard, resume after a
kill without recomputing finished shards, and data-parallel under torchrun with the same output."""

from __future__ import annotations

import io as _pyio
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from beit3core.data import formats
from beit3core.data.shards import ShardWriter
from beit3core.errors import run_main
from beit3core.tokenizers import cli, stages

pytestmark = pytest.mark.usefixtures("one_thread")

FIT = ["--epochs", "1", "--batch-size", "8", "--codebook-size", "16", "--code-dim", "8", "--img-size", "32",
       "--patch-size", "8", "--no-progress"]


def _jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = _pyio.BytesIO()
    Image.fromarray(rng.integers(0, 255, (24, 40, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write_dataset(root: Path, kind: str, splits: dict[str, list[dict]], images: dict[str, bytes], *,
                  shard_size: int = 3) -> None:
    """A validated dataset in the C1 layout: each split's images packed once into its own shards, every
    sample's json carrying the rows whose first image field it is, `validation.shards` listing them."""
    spec = formats.KINDS[kind]
    root.mkdir(parents=True)
    writer = ShardWriter(str(root / formats.SHARD_DIR), shard_size)
    listing, key = {}, 0
    for split, rows in splits.items():
        first = len(writer.written)
        packed: dict[str, str] = {}
        members: list[tuple[str, bytes, list[dict]]] = []  # image name, bytes, rows
        out_rows = []
        for row in rows:
            row = dict(row)
            for f in spec.image_fields:
                if row[f] not in packed:
                    key += 1
                    packed[row[f]] = f"{key:09d}"
                    members.append((packed[row[f]], images[row[f]], []))
                if f == spec.image_fields[0]:
                    next(m for m in members if m[0] == packed[row[f]])[2].append(row)
            out_rows.append(row)
        refs, counts = {}, {}
        for k, image, carried in members:
            member = writer.add(k, image, "jpg", "", {"rows": carried, "split": split})
            refs[k] = formats.shard_ref(f"{formats.SHARD_DIR}/{writer.current}", member)
            counts.setdefault(writer.current, [0, 0])
            counts[writer.current][0] += 1
            counts[writer.current][1] += len(carried)
        writer.flush()
        for row in out_rows:
            for f in spec.image_fields:
                row[f] = refs[packed[row[f]]]
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in out_rows))
        listing[split] = [{"name": f"{formats.SHARD_DIR}/{name}", "samples": counts[name][0], "rows": counts[name][1]}
                          for name in writer.written[first:]]
    writer.close()
    header = formats.make_header(kind, root.name, list(splits))
    header.update(format_version=2, validated=True, validation={"shards": listing})
    (root / formats.HEADER).write_text(json.dumps(header, sort_keys=True))


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("c1") / "data"
    images = {f"img{i}.jpg": _jpeg(i) for i in range(20)}
    images["broken.jpg"] = b"not an image"
    pairs = {"train": [{"id": f"p{i}", "image": f"img{i}.jpg", "caption": f"a picture {i}"} for i in range(7)]
             + [{"id": "p-again", "image": "img0.jpg", "caption": "the first picture again"},
                {"id": "p-broken", "image": "broken.jpg", "caption": "broken"}],
             "val": [{"id": f"v{i}", "image": f"img{i}.jpg", "caption": f"held out {i}"} for i in range(7, 10)]}
    write_dataset(root / "pairs", "pairs", pairs, images)
    write_dataset(root / "images", "images", {"train": [{"id": f"i{i}", "image": f"img{i}.jpg"} for i in range(10, 15)]},
                  images)
    nlvr2 = {"train": [{"id": f"n{i}", "image_left": f"img{i}.jpg", "image_right": f"img{i + 1}.jpg",
                        "sentence": "left and right", "label": True} for i in (15, 17)]}
    write_dataset(root / "tasks" / "nlvr2", "nlvr2", nlvr2, images)
    (root / "text").mkdir()
    (root / "text" / formats.HEADER).write_text(json.dumps({**formats.make_header("text", "text", ["train"]),
                                                             "format_version": 2, "validated": True}))
    (root / "text" / "train.jsonl").write_text(json.dumps({"id": "t0", "text": "only words"}) + "\n")
    return root


def _tokens(out: Path) -> dict:
    """The token files and the tokenizer (its config, and its weights as tensors: safetensors writes its
    metadata entries in a per-process random order, so the file bytes of equal weights may differ)."""
    from safetensors.torch import load_file

    files = {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
             if p.is_file() and p.parts[len(out.parts)] in ("tokens", "tokenizer") and p.suffix != ".safetensors"}
    weights = load_file(str(out / "tokenizer" / "model.safetensors"))
    return {**files, "weights": {k: v.numpy().tobytes() for k, v in sorted(weights.items())}}


def test_visual_tokens_are_one_file_per_image_shard(collection, tmp_path):
    """C2: tokens/<dataset>/<shard stem>.npz holds the shard's sample keys in shard order (the undecodable
    image left out and quarantined) and uint16 ids that are the tokenizer's ids of each sample's image."""
    from beit3core.data.shards import group_samples, iter_tar
    from beit3core.pretrain.augment import precomputed_view
    from beit3core.tokenizers import VisualTokenizer

    out = tmp_path / "v"
    assert run_main(cli.main, ["visual", "--data", str(collection), "--out", str(out), *FIT]) == 0
    vt = VisualTokenizer.load(str(out))
    listed = sorted(str(p.relative_to(out / "tokens")) for p in (out / "tokens").rglob("*.npz"))
    expected = sorted(f"{rel}/{name[len('shards/'):-len('.tar')]}.npz" for rel in ("pairs", "images", "tasks/nlvr2")
                      for split, shards in json.loads((collection / rel / "dataset.json").read_text())
                      ["validation"]["shards"].items() for name in [s["name"] for s in shards])
    assert listed == expected and not (out / "tokens" / "text").exists()
    assert not list(tmp_path.glob(".v.work-*"))  # the work folder goes once the output is published
    for rel in ("pairs", "tasks/nlvr2"):
        for npz_path in (out / "tokens" / rel).glob("*.npz"):
            z = np.load(npz_path)
            samples = list(group_samples(iter_tar(str(collection / rel / "shards" / (npz_path.stem + ".tar")))))
            good = [(k, s) for k, s in samples if s.get("jpg") != b"not an image"]
            assert z["keys"].tolist() == [k for k, _ in good]
            assert z["ids"].dtype == np.uint16 and z["ids"].shape == (len(good), 16)
            views = np.stack([precomputed_view(Image.open(_pyio.BytesIO(s["jpg"])), 32).numpy() for _, s in good])
            assert np.array_equal(vt.encode(torch.from_numpy(views)).numpy(), z["ids"].astype(np.int64))
    quarantine = [json.loads(line) for line in (out / "quarantine.jsonl").read_text().splitlines()]
    assert [q["dataset"] for q in quarantine] == ["pairs"] and "cannot decode image" in quarantine[0]["reason"]
    summary = json.loads((out / "summary.json").read_text())
    # pairs: 8 distinct train images (img0 shared by 2 rows, 1 broken) + 3 val; images 5; nlvr2 4
    assert summary["images"] == 7 + 3 + 5 + 4 and summary["quarantined"] == 1
    assert summary["per_split"] == {"pairs/train": 7, "pairs/val": 3, "images/train": 5, "tasks/nlvr2/train": 4}


def test_the_recorded_collection_fingerprint_reads_no_shard(collection, tmp_path, monkeypatch):
    """The input version in the tokenizer's config (and the work folder's key) comes from one listing and the
    dataset.json files: the same for a copy elsewhere, another when a shard changes, and no shard is opened
    (io.fingerprint read every byte of the collection: terabytes at paper scale)."""
    import shutil

    from beit3core import io

    copy = tmp_path / "copy"
    shutil.copytree(collection, copy)
    opened, real_open = [], io.open
    monkeypatch.setattr(io, "open", lambda uri, *a, **k: (opened.append(str(uri)), real_open(uri, *a, **k))[1])
    fingerprint = stages.collection_fingerprint(str(collection), stages._collection(str(collection)))
    assert opened and not [u for u in opened if u.endswith(".tar")]
    assert stages.collection_fingerprint(str(copy), stages._collection(str(copy))) == fingerprint
    shard = copy / "pairs" / "shards" / "00000.tar"
    shard.write_bytes(shard.read_bytes() + bytes(512))
    assert stages.collection_fingerprint(str(copy), stages._collection(str(copy))) != fingerprint


def test_visual_stage_refuses_a_format1_collection(collection, tmp_path, capsys):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(collection / "images", old)
    header = json.loads((old / "dataset.json").read_text())
    header.pop("format_version")
    header["validation"].pop("shards")
    (old / "dataset.json").write_text(json.dumps(header))
    assert run_main(cli.main, ["visual", "--data", str(old), "--out", str(tmp_path / "o"), *FIT]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {old / 'dataset.json'}: validated with an older format; rerun beit3 data validate"


def test_a_killed_visual_run_resumes_without_recomputing_finished_shards(collection, tmp_path, monkeypatch):
    """Killed after 3 shards, the rerun encodes only the others (the fitted tokenizer and finished token files
    are kept in the work folder beside OUT), and the output equals an uninterrupted run's."""
    whole = tmp_path / "whole"
    assert run_main(cli.main, ["visual", "--data", str(collection), "--out", str(whole), *FIT]) == 0
    n_shards = len(list((whole / "tokens").rglob("*.npz")))
    real, encoded = stages.encode_shard, []

    def dies_after_three(vt, shard, batch_size):
        if len(encoded) == 3:
            raise KeyboardInterrupt  # as a kill would
        encoded.append(shard.tokens)
        return real(vt, shard, batch_size)

    monkeypatch.setattr(stages, "encode_shard", dies_after_three)
    out = tmp_path / "out"
    assert run_main(cli.main, ["visual", "--data", str(collection), "--out", str(out), *FIT]) == 130
    assert not out.exists() and len(list(tmp_path.glob(".out.work-*"))) == 1
    fits = []
    monkeypatch.setattr(stages, "_fit_visual", lambda *a: fits.append(1))  # the fit is reused, not redone
    encoded.clear()
    monkeypatch.setattr(stages, "encode_shard", lambda vt, shard, b: (encoded.append(shard.tokens), real(vt, shard, b))[1])
    assert run_main(cli.main, ["visual", "--data", str(collection), "--out", str(out), *FIT]) == 0
    assert len(encoded) == n_shards - 3 and not fits
    assert _tokens(out) == _tokens(whole)
    assert json.loads((out / "summary.json").read_text())["shards_resumed"] == 3
    assert not list(tmp_path.glob(".out.work-*"))


WORKER = """
import sys
from beit3core.errors import run_main
from beit3core.tokenizers import cli
sys.exit(run_main(cli.main, sys.argv[1:]))
"""


@pytest.mark.slow
def test_visual_stage_under_torchrun_equals_one_process(collection, tmp_path):
    """torchrun --nproc_per_node 2: rank 0 fits, each rank encodes every other shard, rank 0 publishes; the
    tokens equal the one-process run's (torch.distributed.run as tests/test_trainer_distributed.py runs it)."""
    from tests.test_trainer_distributed import free_port

    one = tmp_path / "one"
    assert run_main(cli.main, ["visual", "--data", str(collection), "--out", str(one), *FIT]) == 0
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    two = tmp_path / "two"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), str(script), "visual", "--data", str(collection), "--out", str(two),
           "--device", "cpu", *FIT]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert _tokens(two) == _tokens(one)
    summary = json.loads((two / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["images"] == 19
    assert proc.stdout.count('"images": 19') == 1  # one summary line: rank 0's


def test_visual_stage_resumes_on_s3(collection, tmp_path, s3_prefix, monkeypatch):
    """OUT on S3: the work folder is the sibling prefix `.<name>.work-<key>/`, a rerun after a kill keeps its
    finished shards, and its objects are removed once OUT is published."""
    from beit3core import io

    whole = tmp_path / "whole"
    assert run_main(cli.main, ["visual", "--data", str(collection), "--out", str(whole), *FIT]) == 0
    real, encoded = stages.encode_shard, []

    def dies_after_two(vt, shard, batch_size):
        if len(encoded) == 2:
            raise KeyboardInterrupt
        encoded.append(shard.tokens)
        return real(vt, shard, batch_size)

    monkeypatch.setattr(stages, "encode_shard", dies_after_two)
    out = f"{s3_prefix}/tok"
    assert run_main(cli.main, ["visual", "--data", str(collection), "--out", out, *FIT]) == 130
    work = [u for u in io.ls(s3_prefix) if "/.tok.work-" in u]
    assert len(work) == 1 and len(io.ls(io.join(work[0], "done"), recursive=True)) == 2
    encoded.clear()
    monkeypatch.setattr(stages, "encode_shard", lambda vt, shard, b: (encoded.append(shard.tokens), real(vt, shard, b))[1])
    assert run_main(cli.main, ["visual", "--data", str(collection), "--out", out, *FIT]) == 0
    n_shards = len(list((whole / "tokens").rglob("*.npz")))
    # no object is left under the work prefix (SeaweedFS may keep an empty folder entry; S3 has no folders)
    assert len(encoded) == n_shards - 2 and io.sizes(work[0]) == {}
    local = tmp_path / "back"
    io.get_dir(out, str(local))
    assert _tokens(local) == _tokens(whole)
