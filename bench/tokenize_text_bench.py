"""Text tokenizing throughput: lines/s with 1 and 2 worker processes, and the speedup.

    .venv/bin/python bench/tokenize_text_bench.py [--lines 200000] [--max-len 64]

Trains a SentencePiece model (1000 pieces) on a generated corpus, then encodes the corpus with
`encode_corpus` (the function the `tokenize text` stage runs) using 1 and then 2 processes.
"""

import argparse
import random
import time

from beit3core.tokenizers.text import TextTokenizer, encode_corpus

WORDS = ("the a an of on in under over next to left right top bottom red green blue yellow purple orange circle "
         "square triangle star small large picture photo shows with two one three many near far bright dark light "
         "round sharp corner edge background foreground object shape colour color above below between beside").split()


def corpus(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = [rng.choice(WORDS) if rng.random() < 0.8 else "".join(rng.choice("abcdefghijklmnopqrstuvwxyz")
                                                                       for _ in range(rng.randint(3, 9)))
                 for _ in range(rng.randint(5, 30))]
        out.append(" ".join(words))
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--lines", type=int, default=200_000)
    p.add_argument("--max-len", type=int, default=64)
    args = p.parse_args()
    texts = corpus(args.lines)
    tok = TextTokenizer.train(texts[:20_000], vocab_size=1000)
    rates = {}
    for workers in (1, 2):
        encode_corpus(tok, texts[:5000], args.max_len, workers=workers)  # warm-up (pool start, caches)
        start = time.perf_counter()
        ids, offsets = encode_corpus(tok, texts, args.max_len, workers=workers)
        rates[workers] = len(texts) / (time.perf_counter() - start)
    print(f"lines: {len(texts)}  tokens: {ids.size}  vocab: {tok.vocab_size}")
    print(f"{'workers':>8} {'lines/s':>12}")
    for workers, rate in rates.items():
        print(f"{workers:>8} {rate:>12,.0f}")
    print(f"speedup 2 vs 1 workers: {rates[2] / rates[1]:.2f}x")


if __name__ == "__main__":
    main()
