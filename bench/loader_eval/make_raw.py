"""Copy a small subset of the bundled raw collection (pairs, images, text) into data/raw (originals untouched)."""
import json, shutil, sys
from pathlib import Path
SRC = Path("/work/main/data"); OUT = Path("/work/scratch14/data/raw")
N = {"pairs": {"train": 600, "val": 60}, "images": {"train": 400, "val": 40}, "text": {"train": 1200, "val": 100}}
if OUT.exists(): shutil.rmtree(OUT)
for ds, splits in N.items():
    (OUT / ds).mkdir(parents=True)
    shutil.copy(SRC / ds / "dataset.json", OUT / ds / "dataset.json")
    for split, n in splits.items():
        rows = [json.loads(l) for l in open(SRC / ds / f"{split}.jsonl")][:n]
        with open(OUT / ds / f"{split}.jsonl", "w") as f:
            for r in rows:
                f.write(json.dumps(r, sort_keys=True) + "\n")
                if "image" in r:
                    dst = OUT / ds / r["image"]; dst.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(SRC / ds / r["image"], dst)
    print(ds, {s: n for s, n in splits.items()})
