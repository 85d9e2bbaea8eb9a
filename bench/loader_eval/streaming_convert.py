"""Convert the validated datasets (WebDataset tars + jsonl rows) to MDS for mosaicml-streaming, and report the bytes.

The train split only. One sequential read of each tar; the row fields (id, caption / label) come from the jsonl.
usage: venv-streaming/bin/python streaming_convert.py [SHARD_BYTES]
"""
import json, os, shutil, sys, tarfile
from pathlib import Path
from streaming import MDSWriter

HERE = Path(__file__).resolve().parent
SRC = HERE / "data" / "validated"
OUT = HERE / "data" / "mds"
LIMIT = int(sys.argv[1]) if len(sys.argv) > 1 else 1 << 16  # small shards so there are several (64 KiB)


def du(p):
    return sum(f.stat().st_size for f in Path(p).rglob("*") if f.is_file())


def tar_members(shard):
    with tarfile.open(shard, "r|") as t:
        for m in t:
            if m.isfile():
                yield m.name, t.extractfile(m).read()


def convert_image_kind(name, columns, row_fields):
    rows = [json.loads(l) for l in open(SRC / name / "train.jsonl")]
    by_member = {r["image"].split("#")[1]: r for r in rows}
    shards = sorted({r["image"].split("#")[0] for r in rows})
    with MDSWriter(out=str(OUT / name), columns=columns, size_limit=LIMIT) as w:
        for shard in shards:
            for member, data in tar_members(SRC / name / shard):
                if member in by_member:
                    r = by_member[member]
                    w.write({"id": str(r["id"]), "key": member.split(".")[0], "jpg": data,
                             **{f: str(r.get(f, "")) for f in row_fields}})
    tar_bytes = sum((SRC / name / s).stat().st_size for s in shards)
    return len(rows), tar_bytes


def main():
    if OUT.exists():
        shutil.rmtree(OUT)
    n, tb = convert_image_kind("pairs", {"id": "str", "key": "str", "jpg": "bytes", "caption": "str"}, ["caption"])
    print(f"pairs : {n} rows; train tar shards {tb} B -> MDS {du(OUT / 'pairs')} B "
          f"({len(list((OUT / 'pairs').glob('*.mds')))} .mds + index.json)")
    n, tb = convert_image_kind("images", {"id": "str", "key": "str", "jpg": "bytes", "label": "str"}, ["label"])
    print(f"images: {n} rows; train tar shards {tb} B -> MDS {du(OUT / 'images')} B")
    rows = [json.loads(l) for l in open(SRC / "text" / "train.jsonl")]
    with MDSWriter(out=str(OUT / "text"), columns={"id": "str", "text": "str"}, size_limit=LIMIT) as w:
        for r in rows:
            w.write({"id": str(r["id"]), "text": r["text"]})
    print(f"text  : {len(rows)} rows; train.jsonl {(SRC / 'text' / 'train.jsonl').stat().st_size} B -> MDS {du(OUT / 'text')} B")
    jpg = sum(len(d) for s in sorted((SRC / 'pairs' / 'shards').glob('*.tar')) for m, d in tar_members(s) if m.endswith('.jpg'))
    print(f"(pairs: image payload of all splits {jpg} B; a 64-px JPEG is ~1.2 kB, so tar headers are a large share here)")
    idx = json.load(open(OUT / "pairs" / "index.json"))
    print("index.json shard entry:", json.dumps(idx["shards"][0])[:400])


main()
