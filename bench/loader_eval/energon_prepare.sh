#!/bin/bash
# Prepare copies of the validated datasets for energon, non-interactively. Originals in data/validated untouched.
set -euo pipefail
cd "$(dirname "$0")"
EN=venv-energon/bin/energon
rm -rf data/energon && mkdir -p data/energon/text
cp -r data/validated/pairs data/validated/images data/energon/
# split parts from the rows: a shard never spans two splits (brace ranges are contiguous here)
parts() { python3 - "$1" <<'PY'
import re, sys, json
d = sys.argv[1]; out = []
for split in ("train", "val"):
    shards = sorted({re.search(r"shards/(\d+)\.tar", l).group(1) for l in open(f"{d}/{split}.jsonl")})
    out.append(f"--split-parts {split}:shards/{{{shards[0]}..{shards[-1]}}}.tar")
print(" ".join(out))
PY
}
$EN prepare data/energon/pairs --non-interactive --no-progress $(parts data/energon/pairs) \
   --sample-type CaptioningSample --field-map '{"image": "jpg", "caption": "txt"}' | tail -1
$EN prepare data/energon/images --non-interactive --no-progress $(parts data/energon/images) \
   --sample-type CrudeWebdataset | tail -1
# text: energon reads a .jsonl file directly (it writes <file>.jsonl.idx beside it)
cp data/validated/text/train.jsonl data/energon/text/train.jsonl
$EN prepare data/energon/text/train.jsonl --non-interactive --no-progress | tail -1
find data/energon -newer data/validated/pairs/dataset.json -type f \( -path '*.nv-meta*' -o -name '*.idx' \) | sort | xargs ls -l
du -sb data/energon/pairs/.nv-meta data/energon/images/.nv-meta
echo "bytes of .tar.idx files (pairs):" $(cat data/energon/pairs/shards/*.tar.idx | wc -c)
