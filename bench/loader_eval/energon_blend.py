"""Energon: three streams (images, texts, pairs) with a FIXED per-step composition, and exact resume.

energon's own blending (metadataset `blend:` weights, BlendDataset, MixBatchDataset) draws each sample's source
at random by weight, so the per-step composition varies. A fixed composition (like today's mixer: B_img + B_txt +
B_pair per step) is a ~30-line wrapper, ZipBatches: each stream is batched with its own batch size and one batch
of each is zipped per step; its savable state is the inner datasets' states (BaseWrapperDataset does that).

  energon_blend.py check       # composition + resume exactness (2 ranks x 2 workers, resume of rank 0)
"""
import json, subprocess, sys, tempfile
from pathlib import Path

import torch
from megatron.energon import (Cooker, stateless, DefaultTaskEncoder, WorkerConfig, get_savable_loader, get_train_dataset)
from megatron.energon.flavors.base_dataset import add_sample_restore_key
from megatron.energon.wrappers.base import BaseWrapperDataset

HERE = Path(__file__).resolve().parent
DATA = HERE / "data" / "energon"
STREAMS = {"images": (DATA / "images", 2), "texts": (DATA / "text" / "train.jsonl", 5), "pairs": (DATA / "pairs", 3)}


@stateless
def cook(sample: dict) -> dict:  # crude samples (images without a sample type, jsonl texts) stay dicts
    return sample


class KeyEncoder(DefaultTaskEncoder):
    decoder = None
    cookers = [Cooker(cook)]

    def encode_sample(self, sample):
        get = sample.get if isinstance(sample, dict) else (lambda k, d=None: getattr(sample, k, d))
        key = get("__key__")
        payload = next((v for v in (get("jpg"), get("image"), get("json")) if v is not None), b"")
        return f"{key}|{len(payload) if not isinstance(payload, dict) else len(json.dumps(payload))}"

    def batch(self, samples):
        return list(samples)

    def encode_batch(self, batch):
        return batch


class ZipBatches(BaseWrapperDataset):
    """One batch from each inner (already batched, infinite) dataset per step: a fixed composition."""

    _savable_fields = ()

    def __init__(self, named, *, worker_config):
        self.names = list(named)
        super().__init__([named[n] for n in self.names], worker_config=worker_config)

    def reset_state_own(self):
        pass

    def len_worker(self, worker_idx=None):
        return min(d.len_worker(worker_idx) for d in self.datasets)

    def __iter__(self):
        its = [iter(d) for d in self.datasets]
        while True:
            try:
                yield {n: next(it) for n, it in zip(self.names, its)}
            except StopIteration:
                return

    def config(self):
        return {"type": "ZipBatches", "streams": self.names, "inner": [d.config() for d in self.datasets]}

    def __str__(self):
        return f"ZipBatches({self.names})"


def build(rank, world, workers, seed=7):
    wc = WorkerConfig(rank=rank, world_size=world, num_workers=workers, seed_offset=seed)
    inner = {n: get_train_dataset(str(p), worker_config=wc, batch_size=b, shuffle_buffer_size=16,
                                  max_samples_per_sequence=20, task_encoder=KeyEncoder())
             for n, (p, b) in STREAMS.items()}
    return get_savable_loader(ZipBatches(inner, worker_config=wc))


def steps(rank, world, workers, n_before, n_after, state_in, state_out):
    loader = build(rank, world, workers)
    if state_in != "-":
        loader.restore_state_rank(torch.load(state_in, weights_only=False))
    it = iter(loader)
    before = [next(it) for _ in range(n_before)]
    if state_out != "-":
        torch.save(loader.save_state_rank(), state_out)
    after = [next(it) for _ in range(n_after)]
    strip = lambda b: {k: v for k, v in b.items() if not k.startswith("__")}
    print(json.dumps({"before": [strip(b) for b in before], "after": [strip(b) for b in after]}))


def run(args):
    out = subprocess.run([sys.executable, __file__, *map(str, args)], capture_output=True, text=True)
    if out.returncode:
        print(out.stderr[-3000:]); raise SystemExit(f"{args} failed")
    return json.loads(out.stdout.strip().splitlines()[-1])


def check():
    with tempfile.TemporaryDirectory() as t:
        ref = run(["_steps", 0, 2, 2, 9, 15, "-", f"{t}/s.pt"])
        comp = {n: sorted({len(b[n]) for b in ref["before"] + ref["after"]}) for n in STREAMS}
        print("per-step composition over 24 steps (batch sizes seen per stream):", comp)
        print("step 0:", json.dumps(ref["before"][0])[:300])
        res = run(["_steps", 0, 2, 2, 0, 15, f"{t}/s.pt", "-"])
        print("resume after 9 steps, next 15 steps identical in all three streams:", res["after"] == ref["after"])
        assert res["after"] == ref["after"] and all(v == [STREAMS[n][1]] for n, v in comp.items())
        r1 = run(["_steps", 1, 2, 2, 24, 0, "-", "-"])
        seen0 = {k for b in ref["before"] + ref["after"] for k in b["pairs"]}
        seen1 = {k for b in r1["before"] for k in b["pairs"]}
        print(f"pairs seen in 24 steps: rank0 {len(seen0)}, rank1 {len(seen1)}, shared {len(seen0 & seen1)}")
    print("BLEND OK")


if __name__ == "__main__":
    if sys.argv[1] == "_steps":
        steps(*map(int, sys.argv[2:7]), sys.argv[7], sys.argv[8])
    else:
        check()
