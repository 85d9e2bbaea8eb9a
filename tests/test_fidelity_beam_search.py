"""Caption beam search as released (issue 15, item 4): beit3core.tasks.beam_search against a line-by-line port of
microsoft/unilm `beit3/engine_for_finetuning.py` CaptioningHandler.eval_batch and `beit3/utils.py`
BeamHypotheses, on toy scorers whose next-token log-probabilities depend on the whole prefix."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from beit3core.tasks.beam_search import beam_search

BOS, PAD, EOS, MASK = 0, 1, 2, 3


class BeamHypotheses:  # beit3/utils.py, verbatim
    def __init__(self, n_hyp, max_length, length_penalty, early_stopping):
        self.max_length = max_length - 1  # ignoring bos_token
        self.length_penalty = length_penalty
        self.early_stopping = early_stopping
        self.n_hyp = n_hyp
        self.hyp = []
        self.worst_score = 1e9

    def __len__(self):
        return len(self.hyp)

    def add(self, hyp, sum_logprobs):
        score = sum_logprobs / len(hyp) ** self.length_penalty
        if len(self) < self.n_hyp or score > self.worst_score:
            self.hyp.append((score, hyp))
            if len(self) > self.n_hyp:
                sorted_scores = sorted([(s, idx) for idx, (s, _) in enumerate(self.hyp)])
                del self.hyp[sorted_scores[0][1]]
                self.worst_score = sorted_scores[1][0]
            else:
                self.worst_score = min(score, self.worst_score)

    def is_done(self, best_sum_logprobs):
        if len(self) < self.n_hyp:
            return False
        elif self.early_stopping:
            return True
        else:
            return self.worst_score >= best_sum_logprobs / self.max_length ** self.length_penalty


def released_decode(scorer, batch_size, num_beams, max_len, length_penalty, vocab):
    """eval_batch's search with the model replaced by `scorer(prefix) -> (V,) log-probs`; ids without <s>/</s>."""
    cur_len = 2
    num_keep_best = 1
    TOPN_PER_BEAM = 3
    decoding_results = torch.full((batch_size * num_beams, max_len), MASK, dtype=torch.long)
    decoding_results[:, 0] = BOS
    generated_hyps = [BeamHypotheses(num_keep_best, max_len, length_penalty=length_penalty, early_stopping=False)
                      for _ in range(batch_size)]
    beam_scores = torch.zeros((batch_size, num_beams), dtype=torch.float)
    beam_scores[:, 1:] = -1e9
    beam_scores = beam_scores.view(-1)
    done = [False for _ in range(batch_size)]
    while cur_len <= max_len:
        # the model reads [<s>, words..., <mask>] and predicts the <mask> slot
        scores = torch.stack([scorer(r // num_beams, tuple(decoding_results[r, :cur_len - 1].tolist()))
                              for r in range(batch_size * num_beams)])
        _scores = scores + beam_scores[:, None].expand_as(scores)
        _scores = _scores.view(batch_size, num_beams * vocab)
        next_scores, next_words = torch.topk(_scores, TOPN_PER_BEAM * num_beams, dim=1, largest=True, sorted=True)
        next_batch_beam = []
        for batch_ex in range(batch_size):
            done[batch_ex] = done[batch_ex] or generated_hyps[batch_ex].is_done(next_scores[batch_ex].max().item())
            if done[batch_ex]:
                next_batch_beam.extend([(0, PAD, 0)] * num_beams)
                continue
            next_sent_beam = []
            for idx, score in zip(next_words[batch_ex], next_scores[batch_ex]):
                beam_id = idx // vocab
                word_id = idx % vocab
                if (word_id.item() == EOS and cur_len + 1 <= max_len) or (cur_len + 1 == max_len):
                    generated_hyps[batch_ex].add(
                        decoding_results[batch_ex * num_beams + beam_id, :cur_len].clone(), score.item())
                else:
                    next_sent_beam.append((score, word_id, batch_ex * num_beams + beam_id))
                if len(next_sent_beam) == num_beams:
                    break
            if cur_len + 1 == max_len:
                assert len(next_sent_beam) == 0
            else:
                assert len(next_sent_beam) == num_beams
            if len(next_sent_beam) == 0:
                next_sent_beam = [(0, PAD, 0)] * num_beams
            next_batch_beam.extend(next_sent_beam)
        beam_scores = beam_scores.new([x[0] for x in next_batch_beam])
        beam_words = decoding_results.new([x[1] for x in next_batch_beam])
        beam_idx = decoding_results.new([x[2] for x in next_batch_beam])
        decoding_results = decoding_results[beam_idx, :]
        decoding_results[:, cur_len - 1] = beam_words
        cur_len = cur_len + 1
        if all(done):
            break
    out = []
    for hypotheses in generated_hyps:
        if not hypotheses.hyp:
            out.append([])
            continue
        hyp_scores = torch.tensor([x[0] for x in hypotheses.hyp])
        _, best_indices = torch.topk(hyp_scores, 1, largest=True)
        hyp = hypotheses.hyp[best_indices[0]][1].tolist()
        out.append(hyp[1:-1])  # batch_decode(skip_special_tokens) drops <s> and the trailing <mask> slot
    return out


def toy_scorer(vocab: int, seed: int, eos_bias: float):
    """Next-token log-probs that depend on the batch item and the whole prefix; </s> likelier as it grows."""
    def score(item: int, prefix: tuple) -> torch.Tensor:
        g = torch.Generator().manual_seed(hash((seed, item, prefix)) % (2**31))
        logits = torch.randn(vocab, generator=g) * 2.0
        logits[EOS] += eos_bias * (len(prefix) - 3)
        logits[[BOS, PAD, MASK]] = -30.0
        return F.log_softmax(logits, dim=-1)
    return score


def ours(scorer, batch_size, num_beams, max_len, length_penalty):
    def next_logprobs(prefixes, origin):
        return torch.stack([scorer(r // num_beams, tuple(p)) for r, p in enumerate(prefixes.tolist())])
    return beam_search(next_logprobs, batch_size, bos_id=BOS, eos_id=EOS, num_beams=num_beams, max_len=max_len,
                       length_penalty=length_penalty)


CASES = list(itertools.product([1, 2, 3, 4], [3, 4, 6, 9, 12], [0.6, 1.0, 0.0], [0.0, 0.7]))


@pytest.mark.parametrize("num_beams,max_len,length_penalty,eos_bias", CASES)
def test_beam_search_is_the_released_decoder(num_beams, max_len, length_penalty, eos_bias):
    """Length normalisation len^lp with len = words + 2, 3 x beams candidates, the stop test against
    (max_len - 1)^lp, and every candidate finishing at the last step (at most max_len - 3 words)."""
    vocab = 9
    for seed in range(3):
        scorer = toy_scorer(vocab, seed, eos_bias)
        expected = released_decode(scorer, 3, num_beams, max_len, length_penalty, vocab)
        assert ours(scorer, 3, num_beams, max_len, length_penalty) == expected, seed


def test_max_len_bounds_the_caption_at_max_len_minus_3_words():
    """The docstring's promise: with </s> never likely, captions stop at max_len - 3 words (released cap)."""
    def never_ends(item, prefix):
        logits = torch.arange(12, dtype=torch.float)
        logits[EOS] = -50.0
        return F.log_softmax(logits, dim=-1)

    for max_len in (3, 5, 8, 32):
        out = ours(never_ends, 2, 3, max_len, 0.6)
        assert [len(x) for x in out] == [max_len - 3] * 2
        assert released_decode(never_ends, 2, 3, max_len, 0.6, 12) == out


def test_the_decoder_input_never_exceeds_max_len_minus_1_tokens():
    seen = []

    def next_logprobs(prefixes, origin):
        seen.append(prefixes.shape[1] + 1)  # the model reads the prefix and one <mask> slot
        return F.log_softmax(torch.randn(prefixes.shape[0], 10), dim=-1)

    beam_search(next_logprobs, 2, bos_id=BOS, eos_id=EOS, num_beams=2, max_len=7)
    assert max(seen) <= 7 - 1
