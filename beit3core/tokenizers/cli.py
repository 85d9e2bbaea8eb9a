"""`beit3 tokenize {text,visual}`: the tokenizer stages (python -m beit3core.tokenizers.cli ...)."""

from __future__ import annotations

import argparse
import json
import sys

from beit3core.errors import ArgumentParser, run_main
from beit3core.tokenizers import stages


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="beit3 tokenize", description="Train or import a tokenizer and tokenize a "
                                     "validated collection.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{text,visual}")

    p = sub.add_parser("text", help="SentencePiece unigram model + token counts of every text and caption")
    p.add_argument("--data", required=True, help="validated dataset or collection (local path or s3://)")
    p.add_argument("--out", required=True, help="output folder: tokenizer/, quarantine.jsonl, summary.json")
    p.add_argument("--vocab-size", type=int, default=1000, help="SentencePiece pieces to train (paper: 64000)")
    p.add_argument("--import-model", default=None, help="use this SentencePiece .model (e.g. beit3.spm) instead of training")
    p.add_argument("--max-len", type=int, default=64,
                   help="the sequence length the token counts assume (ids incl. <s> and </s>)")
    p.add_argument("--workers", type=int, default=2, help="tokenizing processes")
    p.add_argument("--max-fit-lines", type=int, default=2_000_000,
                   help="train on a uniform sample of at most this many lines of the training splits")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("visual", help="VQ-KD tokenizer + code ids of every image shard (resumable; torchrun: "
                                      "data-parallel)")
    p.add_argument("--data", required=True, help="validated dataset or collection (local path or s3://)")
    p.add_argument("--out", required=True, help="output folder: tokenizer/, tokens/, quarantine.jsonl, summary.json")
    p.add_argument("--import-checkpoint", default=None, help="released BEiT v2 tokenizer .pth instead of training")
    p.add_argument("--teacher", default=None, help="timm model name of the distillation teacher (default: pixels)")
    p.add_argument("--teacher-checkpoint", default=None, help="the teacher's weights (path or s3://)")
    p.add_argument("--tokenizer-size", choices=("tiny", "base"), default="tiny",
                   help="VQ-KD encoder/decoder size (base = ViT-B/16)")
    p.add_argument("--codebook-size", type=int, default=512)
    p.add_argument("--code-dim", type=int, default=32)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--img-size", type=int, default=64)
    p.add_argument("--patch-size", type=int, default=8)
    p.add_argument("--max-train-images", type=int, default=50_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where images are encoded (auto: this rank's GPU when there is one)")
    p.add_argument("--no-progress", action="store_true")
    return parser


def run(args: argparse.Namespace) -> dict | None:
    if args.command == "text":
        return stages.tokenize_text(args.data, args.out, vocab_size=args.vocab_size, import_model=args.import_model,
                                    max_len=args.max_len, workers=args.workers, max_fit_lines=args.max_fit_lines,
                                    progress=not args.no_progress)
    return stages.tokenize_visual(
        args.data, args.out, import_checkpoint=args.import_checkpoint, teacher=args.teacher,
        teacher_checkpoint=args.teacher_checkpoint, tokenizer_size=args.tokenizer_size, codebook_size=args.codebook_size,
        code_dim=args.code_dim, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, img_size=args.img_size,
        patch_size=args.patch_size, seed=args.seed, max_train_images=args.max_train_images, device=args.device,
        progress=not args.no_progress)


def main(argv: list[str] | None = None) -> int:
    """Run a tokenize command (through `run_main`, a user mistake is one `error:` line and exit 2)."""
    summary = run(build_parser().parse_args(argv))
    if summary is None:  # a torchrun rank other than 0: rank 0 prints the summary
        return 0
    print(json.dumps({k: v for k, v in summary.items() if k != "per_split"}, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, None))
