"""Functional checks of mosaicml-streaming 0.13 on MDS copies of our data (no timing).
Run with venv-streaming/bin/python. Ranks are separate processes started together as torchrun would (RANK,
WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR/PORT; one node): StreamingDataset itself initialises
torch.distributed (gloo) when WORLD_SIZE > 1, so ranks cannot be run one after the other.

  streaming_eval.py shard            2 ranks x 2 workers, one epoch: every sample once
  streaming_eval.py resume           state_dict mid-epoch -> fresh process: same following batches;
                                     and 2 ranks -> 1 rank / 4 ranks (same global batch): same global position
  streaming_eval.py blend            images+texts+pairs Streams, batching_method='stratified': fixed composition
  streaming_eval.py s3 REMOTE_ROOT   remote=s3://.../mds/<ds>, local cache; S3 endpoint from env
"""
import json, os, shutil, subprocess, sys, tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
MDS = HERE / "data" / "mds"


_PORT = [29555]


def env_for(rank, world, port):
    return {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
            "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}


def run_all(args, world):
    """Start `world` ranks of this script together; return their JSON answers in rank order."""
    _PORT[0] += 1
    procs = [subprocess.Popen([sys.executable, __file__, *map(str, args)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env_for(r, world, _PORT[0]))
             for r in range(world)]
    outs = []
    for r, p in enumerate(procs):
        try:
            so, se = p.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            for q in procs: q.kill()
            raise SystemExit(f"{args}: rank {r} of {world} timed out")
        if p.returncode:
            print(se[-4000:]); raise SystemExit(f"subprocess {args} rank {r}/{world} failed")
        outs.append(json.loads(so.strip().splitlines()[-1]))
    return outs


def run(args, rank=0, world=1):
    return run_all(args, world)[rank]


def collate(samples):
    # a dict: StreamingDataLoader counts samples with len(batch[0]) for a list batch (the first id's length!)
    return {"id": [f"{s.get('id')}" for s in samples]}


def make(remote_or_local, local, batch, *, shuffle=True, streams=None, **kw):
    from streaming import StreamingDataset
    if streams is None:
        if remote_or_local.startswith("s3://"):
            kw.update(remote=remote_or_local, local=local)
        else:
            kw.update(local=remote_or_local)  # read in place, no copy
    return StreamingDataset(streams=streams, batch_size=batch, shuffle=shuffle, shuffle_seed=17,
                            num_canonical_nodes=4, shuffle_block_size=64, predownload=8, **kw)


def endless(dl):
    """Epoch after epoch, as a training loop does (StreamingDataset's epochs end; a new iter() starts the next)."""
    while True:
        yield from dl


# ---- subprocess bodies
def _epoch(src, batch, workers):
    from streaming import StreamingDataLoader
    ds = make(src, None, batch)
    dl = StreamingDataLoader(ds, batch_size=batch, num_workers=workers, collate_fn=collate)
    print(json.dumps([k for b in dl for k in b["id"]]))


def _steps(src, batch, workers, n_before, n_after, state_in, state_out):
    import torch
    from streaming import StreamingDataLoader
    ds = make(src, None, batch)
    dl = StreamingDataLoader(ds, batch_size=batch, num_workers=workers, collate_fn=collate)
    if state_in != "-":
        dl.load_state_dict(json.load(open(state_in)))
    it = endless(dl)
    before = [next(it)["id"] for _ in range(n_before)]
    if state_out != "-":
        json.dump(dl.state_dict(), open(state_out, "w"))
    after = [next(it)["id"] for _ in range(n_after)]
    print(json.dumps({"before": before, "after": after}))


# ---- checks
def check_shard():
    src = MDS / "pairs"
    per = run_all(["_epoch", src, 4, 2], 2)
    allk = per[0] + per[1]
    n = 600
    print(f"pairs train rows {n}; 2 ranks x 2 workers: rank0 {len(per[0])} rank1 {len(per[1])} total {len(allk)} "
          f"unique {len(set(allk))} duplicates {len(allk) - len(set(allk))}")
    assert len(set(allk)) == n and len(allk) == n
    print("SHARD OK")


def check_resume():
    src = MDS / "pairs"
    with tempfile.TemporaryDirectory() as t:
        st = f"{t}/state.json"
        ref = run_all(["_steps", src, 4, 2, 7, 12, "-", st], 2)[0]  # every rank writes the same state; keep one
        print("state:", open(st).read())
        res = run_all(["_steps", src, 4, 2, 0, 12, st, "-"], 2)[0]
        print("resume rank 0 of 2 after 7 batches: next 12 batches identical:", ref["after"] == res["after"])
        assert ref["after"] == res["after"]
        ref = run_all(["_steps", src, 4, 2, 70, 12, "-", st], 2)[0]  # 75 batches per rank-epoch
        print("state:", open(st).read())
        res = run_all(["_steps", src, 4, 2, 0, 12, st, "-"], 2)[0]
        print("resume after 70 batches, next 12 (crosses the epoch end):", ref["after"] == res["after"])
        # different number of ranks, same global batch 8: reference = the 2-rank run's steps 7..16
        refs = run_all(["_steps", src, 4, 2, 7, 10, "-", f"{t}/s0.json"], 2)
        ref_steps = [sorted(refs[0]["after"][s] + refs[1]["after"][s]) for s in range(10)]
        for new_world in (1, 4):
            b = 8 // new_world
            res = run_all(["_steps", src, b, 2, 0, 10, f"{t}/s0.json", "-"], new_world)
            steps = [sorted(k for r in res for k in r["after"][s]) for s in range(10)]
            print(f"2 ranks x batch 4 -> {new_world} rank(s) x batch {b}: next 10 global steps identical as sets per "
                  f"step: {steps == ref_steps}; same 80 samples: {set(sum(steps, [])) == set(sum(ref_steps, []))}")
        # same ranks, another number of loader workers
        res = run_all(["_steps", src, 4, 1, 0, 10, f"{t}/s0.json", "-"], 2)
        steps = [sorted(k for r in res for k in r["after"][s]) for s in range(10)]
        print(f"2 ranks x 2 workers -> 2 ranks x 1 worker: next 10 global steps identical as sets: {steps == ref_steps}; "
              f"per rank identical: {all(res[r]['after'] == refs[r]['after'] for r in range(2))}")
    print("RESUME done")


def _blend(batch, workers, n_before, n_after, state_in, state_out):
    from streaming import Stream, StreamingDataLoader, StreamingDataset
    streams = [Stream(local=str(MDS / "images"), proportion=0.2), Stream(local=str(MDS / "text"), proportion=0.5),
               Stream(local=str(MDS / "pairs"), proportion=0.3)]
    ds = StreamingDataset(streams=streams, batch_size=batch, shuffle=True, shuffle_seed=3, num_canonical_nodes=4,
                          batching_method="stratified", epoch_size=2000)

    def coll(samples):
        return {"id": [("pairs" if "caption" in s else "images" if "label" in s else "texts") + ":" + s["id"]
                       for s in samples]}
    dl = StreamingDataLoader(ds, batch_size=batch, num_workers=workers, collate_fn=coll)
    if state_in != "-":
        dl.load_state_dict(json.load(open(state_in)))
    it = iter(dl)
    before = [next(it)["id"] for _ in range(n_before)]
    if state_out != "-":
        json.dump(dl.state_dict(), open(state_out, "w"))
    after = [next(it)["id"] for _ in range(n_after)]
    print(json.dumps({"before": before, "after": after}))


def _blend3(workers, n_before, n_after, state_in, state_out):
    """Three StreamingDatasets (one per stream, own batch size), three loaders zipped: a fixed per-rank mix."""
    from streaming import StreamingDataLoader, StreamingDataset
    sizes = {"images": 2, "text": 5, "pairs": 3}
    dls = {}
    for name, b in sizes.items():
        ds = StreamingDataset(local=str(MDS / name), batch_size=b, shuffle=True, shuffle_seed=3, num_canonical_nodes=4)
        dls[name] = StreamingDataLoader(ds, batch_size=b, num_workers=workers, collate_fn=collate)
    if state_in != "-":
        st = json.load(open(state_in))
        for n in dls:
            dls[n].load_state_dict(st[n])
    its = {n: endless(d) for n, d in dls.items()}
    step = lambda: {n: next(it)["id"] for n, it in its.items()}
    before = [step() for _ in range(n_before)]
    if state_out != "-":
        json.dump({n: d.state_dict() for n, d in dls.items()}, open(state_out, "w"))
    after = [step() for _ in range(n_after)]
    print(json.dumps({"before": before, "after": after}))


def check_blend():
    from collections import Counter
    with tempfile.TemporaryDirectory() as t:
        ref = run_all(["_blend", 10, 2, 9, 15, "-", f"{t}/b.json"], 2)[0]
        comps = Counter(tuple(sorted(Counter(k.split(":")[0] for k in b).items())) for b in ref["before"] + ref["after"])
        print("per-batch composition over 24 batches (rank 0 of 2, batch 10, proportions .2/.5/.3):", dict(comps))
        res = run_all(["_blend", 10, 2, 0, 15, f"{t}/b.json", "-"], 2)[0]
        print("resume after 9 steps: next 15 identical:", res["after"] == ref["after"])
        both = run_all(["_blend", 10, 2, 3, 0, "-", "-"], 2)
        for r in range(2):
            print(f"  rank {r} step 0 composition:", dict(Counter(k.split(":")[0] for k in both[r]["before"][0])))
        print("  -> 'stratified' fixes the GLOBAL batch's composition; each rank's device batch is a slice of it")
        # workaround: one StreamingDataset + loader per stream, zipped
        ref = run_all(["_blend3", 2, 9, 15, "-", f"{t}/b3.json"], 2)
        comp = {n: sorted({len(b[n]) for b in ref[0]["before"] + ref[0]["after"]}) for n in ("images", "text", "pairs")}
        print("three loaders zipped, per-rank composition over 24 steps:", comp, "state:", open(f"{t}/b3.json").read())
        res = run_all(["_blend3", 2, 0, 15, f"{t}/b3.json", "-"], 2)
        print("  resume after 9 steps, next 15 identical on both ranks:",
              all(res[r]["after"] == ref[r]["after"] for r in range(2)))


def _s3(remote, local, batch, workers, limit):
    from streaming import StreamingDataLoader
    ds = make(remote, local, batch)
    dl = StreamingDataLoader(ds, batch_size=batch, num_workers=workers, collate_fn=collate)
    keys = []
    for b in dl:
        keys += b["id"]
        if len(keys) >= limit:
            break
    print(json.dumps({"n": len(keys), "unique": len(set(keys)), "cached_files": sorted(os.listdir(local))}))


def check_s3(root):
    with tempfile.TemporaryDirectory() as t:
        res = run(["_s3", f"{root}/pairs", f"{t}/cache", 4, 2, 10**9], 0, 1)
        print(f"S3 one epoch, 1 rank x 2 workers: {res['n']} samples, {res['unique']} unique; cache files: "
              f"{len(res['cached_files'])} ({res['cached_files'][:3]}...)")


if __name__ == "__main__":
    cmd, a = sys.argv[1], sys.argv[2:]
    if cmd == "_epoch": _epoch(a[0], int(a[1]), int(a[2]))
    elif cmd == "_steps": _steps(a[0], *map(int, a[1:5]), a[5], a[6])
    elif cmd == "_blend": _blend(*map(int, a[0:4]), a[4], a[5])
    elif cmd == "_blend3": _blend3(*map(int, a[0:3]), a[3], a[4])
    elif cmd == "_s3": _s3(a[0], a[1], *map(int, a[2:5]))
    elif cmd == "s3": check_s3(a[0])
    else: {"shard": check_shard, "resume": check_resume, "blend": check_blend}[cmd]()
