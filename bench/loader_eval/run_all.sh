#!/bin/bash
# Rerun the whole evaluation (functional only, no timing). Needs the venvs (setup_venvs.sh).
set -uo pipefail; cd "$(dirname "$0")"; mkdir -p logs
python3 make_raw.py
rm -rf data/validated; PYTHONDONTWRITEBYTECODE=1 /work/main/.venv/bin/beit3 data validate data/raw --out data/validated --shard-size 50 --workers 1 | tail -1
./energon_prepare.sh
venv-streaming/bin/python streaming_convert.py
for c in shard resume redist; do venv-energon/bin/python energon_eval.py $c 2>/dev/null | tail -12; done
venv-energon/bin/python energon_blend.py check 2>/dev/null | tail -6
for c in shard resume blend; do venv-streaming/bin/python streaming_eval.py $c 2>&1 | tail -12; done
./record_check.sh
./s3_checks.sh
