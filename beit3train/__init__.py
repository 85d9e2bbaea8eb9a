"""beit3train: the trainers (pretraining, fine-tuning, evaluation) built on the beit3core library.

Imports go one way: beit3train imports beit3core, never the reverse. Shared pieces:
`distributed` (process group + collectives), `optim` (param groups, warmup + cosine), `checkpointing`
(atomic step checkpoints, exact resume), `metrics` (TensorBoard + metrics.jsonl + progress bar).
Entry points: `beit3train.pretrain:main`, `beit3train.finetune:main`, `beit3train.evaluate:main`.
"""
