"""beit3train: the trainers (pretraining, fine-tuning, evaluation) built on the beit3core library.

Imports go one way: beit3train imports beit3core, never the reverse. Shared pieces, used by both trainers:
`config` (frozen run configs and the parsers generated from their fields), `distributed` (process group,
collectives), `runtime` (the DDP / FSDP2 wrapper, autocast, device moves), `optim` (param groups, warmup +
cosine), `checkpointing` (atomic step checkpoints, save / resume of the train state, the policy for changed
settings), `metrics` (TensorBoard + metrics.jsonl + progress bar), `hooks` (the callbacks tests inject).
Entry points: `beit3train.pretrain:main`, `beit3train.finetune:main`, `beit3train.evaluate:main`; each
trainer's `train(cfg, dist_info, hooks)` reads build -> resume -> steps -> export.
"""
