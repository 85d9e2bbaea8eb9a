"""Energon reading our pairs dataset from the local S3 store through multi-storage-client (msc:// paths).

usage (AWS_* from `beit3 store env`, AWS_ENDPOINT_URL pointed at s3proxy.py to count requests):
  MSC_CONFIG=msc_config.yaml venv-energon/bin/python energon_s3.py msc://scratch14/energon/pairs LOG
One epoch, 1 rank x 2 workers, then the request log is summarised per object.
"""
import collections, json, os, sys
from energon_eval import KeyEncoder
from megatron.energon import WorkerConfig, get_savable_loader, get_train_dataset

path, log = sys.argv[1], sys.argv[2]
open(log, "w").close()
wc = WorkerConfig(rank=0, world_size=1, num_workers=2, seed_offset=1)
ds = get_train_dataset(path, worker_config=wc, batch_size=4, shuffle_buffer_size=16, max_samples_per_sequence=int(os.environ.get("MSPS", 0)) or None,
                       repeat=False, task_encoder=KeyEncoder())
keys = [k for b in get_savable_loader(ds) for k in b]
print(f"samples read over S3: {len(keys)}, unique {len(set(keys))}")
reqs = [json.loads(l) for l in open(log)]
by = collections.defaultdict(list)
for r in reqs:
    by[(r["m"], r["path"].split("/")[-1] if "/shards/" in r["path"] else r["path"])].append(r)
print(f"{len(reqs)} requests in all")
for (m, p), rs in sorted(by.items()):
    print(f"  {m:4s} {p:45s} x{len(rs):3d}  ranges={[r['range'] for r in rs][:4]} bytes={sum(r['bytes'] for r in rs)}")
