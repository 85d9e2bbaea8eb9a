#!/bin/bash
# Does `energon prepare` inside a published (validated) collection break the project's output record check?
set -u; cd "$(dirname "$0")"
T=$(mktemp -d); cp -r data/validated $T/v
venv-energon/bin/energon prepare $T/v/pairs --non-interactive --no-progress \
  --split-parts 'train:shards/{00000..00011}.tar' --split-parts 'val:shards/{00012..00013}.tar' \
  --sample-type CaptioningSample --field-map '{"image": "jpg", "caption": "txt"}' > /dev/null 2>&1
PYTHONDONTWRITEBYTECODE=1 /work/main/.venv/bin/python -c "
from beit3core import data
print('rows via beit3core after energon prepare:', len(data.read_rows('$T/v/pairs', 'train')))" 2>&1 | tail -1
rm -rf $T
