"""Beam search over a next-token log-probability function: the released captioning decoder's search.

microsoft/unilm `beit3/engine_for_finetuning.py` (CaptioningHandler.eval_batch) with `utils.BeamHypotheses`
(one kept hypothesis, early_stopping False), rule for rule. Lengths count token ids (SentencePiece pieces,
the released `num_max_bpe_tokens` units), not words:
- a step takes the top 3 x num_beams (prefix, token) candidates; a candidate ending in `</s>` becomes a finished
  hypothesis, the others refill the beams in score order until num_beams are alive;
- a finished hypothesis scores sum(log p) / len ** length_penalty with len = generated tokens + 2 (the
  released hypothesis holds `<s>` and the `</s>` slot);
- an item is done when a hypothesis is kept and it beats the best candidate of the step divided by the
  longest possible length, (max_len - 1) ** length_penalty;
- at the last step (the prefix holds `<s>` and max_len - 3 tokens) every candidate finishes: the hypothesis is
  the prefix, scored with the candidate's log p, so a caption has at most max_len - 3 tokens.

`next_logprobs(prefixes, origin)` gets the alive prefixes (N, t) (each starting with `<s>`) and, for every row,
the row of the previous call it extends (`origin`, for re-ordering a key/value cache), and returns (N, V)
log-probabilities of the next token.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

CANDIDATES_PER_BEAM = 3  # released TOPN_PER_BEAM


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
    """Best sequence per batch item: generated ids without `<s>` and without `</s>`, at most max_len - 3 of them.

    `max_len` is the model's text length in token ids (released `num_max_bpe_tokens`): the decoder's input,
    `<s>` + generated ids + one `<mask>` slot, never exceeds max_len - 1 tokens. Rows are laid out item-major:
    row i * num_beams + k is beam k of item i.
    """
    k = num_beams
    prefixes = torch.full((batch_size * k, 1), bos_id, dtype=torch.long, device=device)
    scores = torch.zeros(batch_size, k, device=device)
    scores[:, 1:] = -1e9  # every beam starts identical: expand only the first one (released value)
    origin = torch.arange(batch_size * k, device=device)
    best: list[tuple[float, list[int]] | None] = [None] * batch_size
    done = [False] * batch_size
    longest = float(max_len - 1) ** length_penalty

    # cur_len = 2 + generated ids in the prefix (released); the last step, cur_len = max_len - 1, finishes all
    for cur_len in range(2, max_len):
        last_step = cur_len + 1 == max_len
        logp = next_logprobs(prefixes, origin).float()
        vocab = logp.shape[-1]
        total = (scores.reshape(-1, 1) + logp).reshape(batch_size, k * vocab)
        top_scores, top_idx = total.topk(min(CANDIDATES_PER_BEAM * k, k * vocab), dim=1)
        new_rows, new_tokens, new_scores = [], [], []
        for item in range(batch_size):
            step_best = top_scores[item, 0].item()
            done[item] = done[item] or (best[item] is not None and best[item][0] >= step_best / longest)
            chosen: list[tuple[int, int, float]] = []
            if not done[item]:
                for score, idx in zip(top_scores[item].tolist(), top_idx[item].tolist()):
                    beam, token = divmod(idx, vocab)
                    row = item * k + beam
                    if token == eos_id or last_step:
                        normalised = score / cur_len ** length_penalty
                        if best[item] is None or normalised > best[item][0]:
                            best[item] = (normalised, prefixes[row, 1:].tolist())
                    else:
                        chosen.append((row, token, score))
                    if len(chosen) == k:
                        break
            # finished or done items keep their rows with a pad beam (released: score 0, never read again)
            chosen += [(item * k, eos_id, 0.0)] * (k - len(chosen))
            for row, token, score in chosen:
                new_rows.append(row)
                new_tokens.append(token)
                new_scores.append(score)
        if last_step or all(done):
            break
        origin = torch.tensor(new_rows, device=device)
        prefixes = torch.cat([prefixes[origin], torch.tensor(new_tokens, device=device)[:, None]], dim=1)
        scores = torch.tensor(new_scores, device=device).reshape(batch_size, k)

    return [hyp[1] if hyp is not None else [] for hyp in best]
