#!/bin/bash
# Recreate both evaluation venvs (about 5.6 GB each: the CUDA torch build comes from the machine's local wheels).
set -euo pipefail; cd "$(dirname "$0")"; mkdir -p logs
C=/work/main/constraints.txt
python3.11 -m venv venv-energon && venv-energon/bin/pip install -q --upgrade pip
venv-energon/bin/pip install -c $C torch==2.14.1 torchvision==0.29.1 megatron-energon==7.4.1 s3fs boto3 pillow numpy \
  > logs/install-energon.log 2>&1          # clean under the lock; boto3 is needed by multi-storage-client's S3 provider
python3.11 -m venv venv-streaming && venv-streaming/bin/pip install -q --upgrade pip
# mosaicml-streaming 0.13.0 cannot resolve under the lock (numpy<2.2, google-cloud-storage<3.3, transformers<5 ->
# huggingface-hub<1): install it without its dependencies, then the ones it imports, under the lock.
venv-streaming/bin/pip install -c $C torch==2.14.1 torchvision==0.29.1 s3fs boto3 pillow numpy tqdm > logs/install-streaming-2.log 2>&1
venv-streaming/bin/pip install --no-deps mosaicml-streaming==0.13.0
venv-streaming/bin/pip install -c $C xxhash zstd python-snappy Brotli catalogue 'transformers>=5' > logs/install-streaming-3.log 2>&1
venv-streaming/bin/pip check || true   # lists the 10 unmet/violated requirements of mosaicml-streaming
