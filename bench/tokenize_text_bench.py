"""Text tokenizing throughput on this CPU: SentencePiece encode lines/s per process.

    .venv/bin/python bench/tokenize_text_bench.py [--lines 200000] [--max-len 64]

Trains a SentencePiece model (1000 pieces) on a generated corpus, then measures
- `per text (loader)`: one process encoding one text at a time, `[0] + pieces[:max_len-2] + [2]` with
  `TextTokenizer.tokenize`, as the pretraining loader's workers do (C3: text is tokenized in the loader);
- `encode_corpus`: batched encoding with 1 and then 2 processes (what `tokenize text` runs to count tokens).
Divide the texts a step needs by the per-text rate for the loader cores text tokenizing costs.
"""

import argparse
import random
import time

import numpy as np

from beit3core.tokenizers.text import BOS_ID, EOS_ID, TextTokenizer, encode_corpus

WORDS = [
    "the", "a", "an", "of", "on", "in", "under", "over", "next", "to", "left", "right", "top", "bottom", "red",
    "green", "blue", "yellow", "purple", "orange", "circle", "square", "triangle", "star", "small", "large",
    "picture", "photo", "shows", "with", "two", "one", "three", "many", "near", "far", "bright", "dark", "light",
    "round", "sharp", "corner", "edge", "background", "foreground", "object", "shape", "colour", "color", "above",
    "below", "between", "beside"
]


def corpus(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = [rng.choice(WORDS) if rng.random() < 0.8 else "".join(rng.choice("abcdefghijklmnopqrstuvwxyz")
                                                                       for _ in range(rng.randint(3, 9)))
                 for _ in range(rng.randint(5, 30))]
        out.append(" ".join(words))
    return out


def per_text_rate(tok: TextTokenizer, texts: list[str], max_len: int) -> float:
    """Lines/s of the loader's path: one text at a time, in one process."""
    for text in texts[:1000]:  # warm-up
        tok.tokenize(text)
    start = time.perf_counter()
    for text in texts:
        np.array([BOS_ID, *tok.tokenize(text)[: max_len - 2], EOS_ID], dtype=np.int64)
    return len(texts) / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--lines", type=int, default=200_000)
    p.add_argument("--max-len", type=int, default=64)
    args = p.parse_args()
    texts = corpus(args.lines)
    tok = TextTokenizer.train(texts[:20_000], vocab_size=1000)
    rates = {"per text (loader), 1 process": per_text_rate(tok, texts, args.max_len)}
    for workers in (1, 2):
        encode_corpus(tok, texts[:5000], args.max_len, workers=workers)  # warm-up (pool start, caches)
        start = time.perf_counter()
        ids, _ = encode_corpus(tok, texts, args.max_len, workers=workers)
        rates[f"encode_corpus, {workers} process{'es' if workers > 1 else ''}"] = len(texts) / (time.perf_counter() - start)
    print(f"lines: {len(texts)}  tokens: {ids.size}  vocab: {tok.vocab_size}  mean ids/line: {ids.size / len(texts):.1f}")
    print(f"{'path':<32} {'lines/s':>12}")
    for name, rate in rates.items():
        print(f"{name:<32} {rate:>12,.0f}")


if __name__ == "__main__":
    main()
