#!/bin/bash
# S3 checks against a private local store (its own --dir, any free port, bucket scratch14), through the counting
# proxy. Starts the store only if this folder's store is not running, and stops it only if it started it.
set -uo pipefail; cd "$(dirname "$0")"; mkdir -p logs
B="env PYTHONDONTWRITEBYTECODE=1 /work/main/.venv/bin/beit3 store --dir $PWD/.store"
started=0
if ! $B status >/dev/null; then $B up --port 0 --bucket scratch14 && started=1; fi
eval "$($B env)"
venv-energon/bin/python s3_upload.py
PP=$(python3 -c "import socket;s=socket.socket();s.bind(('127.0.0.1',0));print(s.getsockname()[1])")
python3 s3proxy.py $PP $AWS_ENDPOINT_URL $PWD/logs/s3requests.jsonl & PX=$!; sleep 1
export AWS_ENDPOINT_URL=http://127.0.0.1:$PP
MSC_CONFIG=msc_config.yaml venv-energon/bin/python energon_s3.py msc://scratch14/energon/pairs logs/s3requests.jsonl 2>/dev/null | head -12
MSPS=20 MSC_CONFIG=msc_config.yaml venv-energon/bin/python energon_s3.py msc://scratch14/energon/pairs logs/s3requests.jsonl 2>/dev/null | head -3
: > logs/s3requests.jsonl
venv-streaming/bin/python streaming_eval.py s3 s3://scratch14/mds 2>&1 | tail -1
python3 -c "import json,collections; rs=[json.loads(l) for l in open('logs/s3requests.jsonl')]; print(len(rs), 'requests', collections.Counter((r['m'], r['path'].rsplit('.',1)[-1], r['range'] is not None) for r in rs))"
kill $PX
[ $started = 1 ] && $B down
