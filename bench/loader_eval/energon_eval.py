"""Functional checks of megatron-energon on our validated shards (no timing). Run with venv-energon/bin/python.

  energon_eval.py shard    : 2 ranks x 2 workers, one epoch (repeat=False): every sample once, none twice
  energon_eval.py resume   : save_state_rank mid-epoch, restore in a fresh loader: same following batches
  energon_eval.py redist   : 2 ranks x 2 workers saved; redistributed (energon checkpoint redist) to 1x4 and 4x1
  energon_eval.py blend    : images + texts + pairs, fixed per-step composition (ZipBatches), resume exactness
  energon_eval.py s3 URI   : read pairs from S3 (msc:// or s3:// path) via multi-storage-client
Each rank runs in its own process (ranks are simulated through WorkerConfig, no torch.distributed needed).
"""
import json, os, subprocess, sys, tempfile
from pathlib import Path

import torch
from megatron.energon import (DefaultTaskEncoder, WorkerConfig, get_savable_loader, get_train_dataset,
                              get_loader)

HERE = Path(__file__).resolve().parent
DATA = HERE / "data" / "energon"


class KeyEncoder(DefaultTaskEncoder):
    """Turns each sample into 'key|len(image bytes or text)' and a batch into a list of those strings."""
    decoder = None  # no image decoding: we only track identities (raw bytes stay bytes)

    def encode_sample(self, sample):
        get = sample.get if isinstance(sample, dict) else (lambda k, d=None: getattr(sample, k, d))
        key = get("__key__")
        payload = next((v for v in (get("jpg"), get("image"), get("json")) if v is not None), b"")
        return f"{key}|{len(payload)}"

    def batch(self, samples):
        return list(samples)

    def encode_batch(self, batch):
        return batch


def make_ds(path, rank, world, workers, batch, *, repeat=True, seed=1234, split="train", **kw):
    wc = WorkerConfig(rank=rank, world_size=world, num_workers=workers, seed_offset=seed)
    return get_train_dataset(str(path), split_part=split, worker_config=wc, batch_size=batch,
                             shuffle_buffer_size=16, max_samples_per_sequence=20, repeat=repeat,
                             task_encoder=KeyEncoder(), **kw)


def run(args):
    """Run this script in a subprocess (one 'rank'), return its JSON answer."""
    out = subprocess.run([sys.executable, __file__, *map(str, args)], capture_output=True, text=True)
    if out.returncode:
        print(out.stderr[-4000:]); raise SystemExit(f"subprocess {args} failed")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---- subprocess bodies --------------------------------------------------------------------------------
def rank_epoch(path, rank, world, workers, batch):
    loader = get_savable_loader(make_ds(path, rank, world, workers, batch, repeat=False))
    keys = [k for b in loader for k in b]
    print(json.dumps(keys))


def rank_steps(path, rank, world, workers, batch, n_before, n_after, state_in, state_out):
    """Restore state_in (if any), take n_before batches, save state_out, then take n_after more."""
    loader = get_savable_loader(make_ds(path, rank, world, workers, batch))
    if state_in != "-":
        loader.restore_state_rank(torch.load(state_in, weights_only=False))
    it = iter(loader)
    before = [next(it) for _ in range(n_before)]
    if state_out != "-":
        torch.save(loader.save_state_rank(), state_out)
    after = [next(it) for _ in range(n_after)]
    print(json.dumps({"before": before, "after": after}))


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "_epoch":
    rank_epoch(sys.argv[2], *map(int, sys.argv[3:7])); sys.exit(0)
if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "_steps":
    a = sys.argv[2:]
    rank_steps(a[0], *map(int, a[1:7]), a[7], a[8]); sys.exit(0)


# ---- checks ---------------------------------------------------------------------------------------------
def check_shard():
    pairs = DATA / "pairs"
    n_train = sum(1 for _ in open(pairs / "train.jsonl"))
    per = {}
    for r in range(2):
        per[r] = run(["_epoch", pairs, r, 2, 2, 4])
    allk = [k for r in per for k in per[r]]
    uniq = set(allk)
    print(f"pairs/train rows={n_train}; 2 ranks x 2 workers, repeat=False: rank0 {len(per[0])} rank1 {len(per[1])} "
          f"total {len(allk)} unique {len(uniq)} duplicates {len(allk) - len(uniq)}")
    print("  first keys rank0:", per[0][:3])
    assert len(uniq) == n_train and len(allk) == n_train, "not every sample exactly once"
    print("SHARD OK: every train sample exactly once across 2x2")


def check_resume():
    pairs = DATA / "pairs"
    with tempfile.TemporaryDirectory() as t:
        st = f"{t}/rank0.pt"
        ref = run(["_steps", pairs, 0, 2, 2, 4, 7, 12, "-", st])  # uninterrupted: 7 + 12 batches, state saved after 7
        res = run(["_steps", pairs, 0, 2, 2, 4, 0, 12, st, "-"])  # fresh process, restore, 12 batches
        print("state file bytes:", os.path.getsize(st))
        same = ref["after"] == res["after"]
        print(f"resume after 7 batches (rank 0 of 2, 2 workers, batch 4, shuffle buffer 16): "
              f"next 12 batches identical: {same}")
        print("  reference:", ref["after"][0], "\n  restored: ", res["after"][0])
        assert same
        # resume crosses the epoch boundary (600 samples / 2 ranks / 4 = 75 batches per rank-epoch)
        ref = run(["_steps", pairs, 0, 2, 2, 4, 70, 12, "-", st])
        res = run(["_steps", pairs, 0, 2, 2, 4, 0, 12, st, "-"])
        print("resume after 70 batches, next 12 (crosses the epoch end):", ref["after"] == res["after"])
        assert ref["after"] == res["after"]
    print("RESUME OK")


def check_redist():
    pairs = DATA / "pairs"
    en = str(Path(sys.executable).parent / "energon")
    with tempfile.TemporaryDirectory() as t:
        # global order of the uninterrupted 2x2 run: step s = rank0 batch s + rank1 batch s
        runs = [run(["_steps", pairs, r, 2, 2, 4, 5, 10, "-", f"{t}/state_{r}.pt"]) for r in range(2)]
        ref_after = set(k for r in runs for b in r["after"] for k in b)
        ref_steps = [sorted(runs[0]["after"][s] + runs[1]["after"][s]) for s in range(10)]
        for new_world, new_workers in ((1, 4), (4, 1)):
            out = f"{t}/redist_{new_world}"
            os.makedirs(out)  # energon 7.4.1 bug: redist's EPath.mkdir does not create a local folder
            p = subprocess.run([en, "checkpoint", "redist", f"{t}/state_0.pt", f"{t}/state_1.pt", out,
                                "--new-world-size", str(new_world)], capture_output=True, text=True)
            print(p.stdout.strip().splitlines()[-1])
            # energon refuses a larger micro batch than saved: 1 rank keeps 4 (2 micro-batches per global step)
            b = min(4, 8 // new_world)
            n = 80 // (b * new_world)
            res = [run(["_steps", pairs, r, new_world, new_workers, b, 0, n, f"{out}/state_{r}.pt", "-"])
                   for r in range(new_world)]
            got = set(k for r in res for bb in r["after"] for k in bb)
            print(f"  2x2 -> {new_world}x{new_workers} (per-rank batch {b}, global batch 8): same set of next 80 samples: "
                  f"{got == ref_after}; overlap {len(got & ref_after)}/{len(ref_after)}")
            if new_world == 1:
                glob = [k for bb in res[0]["after"] for k in bb]
                print(f"    same global per-step composition: {[sorted(glob[i*8:(i+1)*8]) for i in range(10)] == ref_steps}")
                print("    first 8 after resume (1x4):", sorted(glob[:8]), "\n    reference step 0 (2x2):  ", ref_steps[0])
        try:
            r = run(["_steps", pairs, 0, 3, 2, 4, 0, 2, f"{t}/state_0.pt", "-"])
            print("  2x2 state restored into 3 ranks x 2 workers without redist: accepted (!)")
        except SystemExit as e:
            print("  2x2 state restored into rank 0 of 3 ranks x 2 workers (no redist):", e)
        try:
            os.makedirs(f"{t}/r3")
            p = subprocess.run([en, "checkpoint", "redist", f"{t}/state_0.pt", f"{t}/state_1.pt", f"{t}/r3",
                                "--new-world-size", "3"], capture_output=True, text=True)
            print("  redist 2x2 -> 3 ranks:", "rc", p.returncode, (p.stderr.strip().splitlines() or [""])[-1])
        except Exception as e:
            print(e)


if __name__ == "__main__":
    {"shard": check_shard, "resume": check_resume, "redist": check_redist}[sys.argv[1]]()
