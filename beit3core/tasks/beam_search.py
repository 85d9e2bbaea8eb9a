"""Beam search over a next-token log-probability function (the released captioning decoder's search).

`next_logprobs(prefixes, origin)` gets the alive prefixes (N, t) (each starting with `<s>`) and, for every row,
the row of the previous call it extends (`origin`, for re-ordering a key/value cache), and returns (N, V)
log-probabilities of the next token. A finished hypothesis scores sum(logprob) / len ** length_penalty, where len
counts the generated tokens including `</s>` (released defaults: 3 beams, length penalty 0.6, 32 tokens).
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def beam_search(
    next_logprobs: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    batch_size: int,
    *,
    bos_id: int,
    eos_id: int,
    num_beams: int = 3,
    max_len: int = 32,
    length_penalty: float = 0.6,
    device: torch.device | str = "cpu",
) -> list[list[int]]:
    """Best sequence per batch item: generated ids without `<s>` and without `</s>`.

    `max_len` bounds the whole sequence including `<s>` and `</s>` (the text length of the model).
    Rows are laid out item-major: row i * num_beams + k is beam k of item i.
    """
    k = num_beams
    prefixes = torch.full((batch_size * k, 1), bos_id, dtype=torch.long, device=device)
    scores = torch.zeros(batch_size, k, device=device)
    scores[:, 1:] = float("-inf")  # every beam starts identical: expand only the first one
    origin = torch.arange(batch_size * k, device=device)
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(batch_size)]
    done = [False] * batch_size

    for step in range(1, max_len):
        logp = next_logprobs(prefixes, origin).float()
        vocab = logp.shape[-1]
        total = (scores.reshape(-1, 1) + logp).reshape(batch_size, k * vocab)
        top_scores, top_idx = total.topk(min(2 * k, k * vocab), dim=1)
        new_rows, new_tokens, new_scores = [], [], []
        last_step = step == max_len - 1
        for item in range(batch_size):
            chosen = []
            for score, idx in zip(top_scores[item].tolist(), top_idx[item].tolist()):
                if score == float("-inf"):
                    break
                beam, token = divmod(idx, vocab)
                row = item * k + beam
                if token == eos_id or last_step:
                    if not done[item]:
                        tokens = prefixes[row, 1:].tolist() + ([] if token == eos_id else [token])
                        finished[item].append((score / (step ** length_penalty), tokens))
                    continue
                chosen.append((row, token, score))
                if len(chosen) == k:
                    break
            while len(chosen) < k:  # keep the layout fixed; padded beams never win
                chosen.append((item * k, eos_id, float("-inf")))
            for row, token, score in chosen:
                new_rows.append(row)
                new_tokens.append(token)
                new_scores.append(score if not done[item] else float("-inf"))
            if not done[item] and len(finished[item]) >= k:
                best_alive = max(s for _, _, s in chosen) / (step ** length_penalty)
                worst_kept = sorted(s for s, _ in finished[item])[-k]
                done[item] = best_alive < worst_kept or best_alive == float("-inf")
        if last_step or all(done):
            break
        origin = torch.tensor(new_rows, device=device)
        prefixes = torch.cat([prefixes[origin], torch.tensor(new_tokens, device=device)[:, None]], dim=1)
        scores = torch.tensor(new_scores, device=device).reshape(batch_size, k)
        for item in range(batch_size):
            if not done[item] and bool(torch.isinf(scores[item]).all()):
                done[item] = True
        if all(done):
            break

    return [max(hyps, key=lambda h: h[0])[1] if hyps else [] for hyps in finished]
