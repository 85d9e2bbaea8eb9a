"""TextTokenizer: BEiT-3 id mapping on a locally trained SentencePiece model, errors, parallel encoding."""

import random

import numpy as np
import pytest

from beit3core.errors import UserError
from beit3core.tokenizers.text import TextTokenizer, clean_text, encode_corpus

WORDS = (
    "a red blue green yellow purple orange circle square triangle star on the left right top bottom of "
    "big small large tiny image photo shows with over under next to background dark light picture many"
).split()


def make_corpus(n=600, seed=0):
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(n)]


@pytest.fixture(scope="module")
def tok():
    return TextTokenizer.train(make_corpus(), vocab_size=60)


def test_special_ids_and_sizes(tok):
    assert len(tok.sp) == 60
    assert (tok.bos_id, tok.pad_id, tok.eos_id, tok.unk_id) == (0, 1, 2, 3)
    assert tok.mask_id == 61 and tok.vocab_size == 62 == len(tok)


def test_piece_ids_are_shifted_by_one(tok):
    text = "a red circle on the left"
    sp_ids = tok.sp.encode(text)
    assert 0 not in sp_ids  # no SentencePiece unk in this text
    assert tok.tokenize(text) == [p + 1 for p in sp_ids]
    ids = tok.tokenize(text)
    assert min(ids) >= 4 and max(ids) < tok.mask_id


def test_unknown_character_maps_to_unk(tok):
    assert 0 in tok.sp.encode("Ж")  # SentencePiece unk
    assert 3 in tok.tokenize("Ж")


def test_encode_layout_and_truncation(tok):
    text = "a big red circle on the left of the image"
    pieces = tok.tokenize(text)
    ids, padding = tok.encode(text, max_len=len(pieces) + 6)
    assert ids == [0] + pieces + [2] + [1] * 4
    assert padding == [0] * (len(pieces) + 2) + [1] * 4
    short, short_pad = tok.encode(text, max_len=5)
    assert short == [0] + pieces[:3] + [2] and short_pad == [0] * 5
    with pytest.raises(UserError):
        tok.encode(text, max_len=1)


def test_encode_batch_and_decode_roundtrip(tok):
    import torch

    texts = ["a red circle", "many small blue squares on the dark background"]
    ids, pad = tok.encode_batch(texts, max_len=16)
    assert ids.dtype == torch.long and pad.dtype == torch.bool and ids.shape == pad.shape == (2, 16)
    assert bool(pad[0, -1]) and not bool(pad[1, 0])
    assert torch.equal(pad, ids == 1)
    for row, text in zip(ids.tolist(), texts):
        assert tok.decode(row) == text
    assert tok.decode([0, tok.mask_id, 2, 1]) == ""


def test_save_load_roundtrip(tok, tmp_path):
    path = tok.save(str(tmp_path / "tok"))
    assert path.endswith("spm.model")
    for uri in (path, str(tmp_path / "tok")):
        again = TextTokenizer.load(uri)
        assert again.tokenize("a red star") == tok.tokenize("a red star")
    with pytest.raises(UserError, match="no SentencePiece model"):
        TextTokenizer.load(str(tmp_path / "missing"))
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"not a model")
    with pytest.raises(UserError, match="bad.model"):
        TextTokenizer.load(str(bad))


def test_empty_corpus_is_a_user_error():
    with pytest.raises(UserError, match="empty"):
        TextTokenizer.train(["", "   ", b"\xff\xfe"], vocab_size=50)


def test_vocab_too_large_is_a_one_line_user_error():
    with pytest.raises(UserError, match=r"larger than the corpus supports .*at most \d+") as err:
        TextTokenizer.train(make_corpus(200), vocab_size=5000)
    assert "\n" not in str(err.value)


def test_non_utf8_lines_are_quarantined():
    corpus = make_corpus(400) + [b"caf\xe9 au lait", "lone \udcff surrogate", b"a red circle"]
    quarantine = []
    tok = TextTokenizer.train(corpus, vocab_size=50, quarantine=quarantine)
    assert [q["index"] for q in quarantine] == [400, 401]
    assert all("UTF-8" in q["reason"] for q in quarantine)
    assert tok.vocab_size == 52
    assert clean_text(b"ok")[0] == "ok" and clean_text(b"\xc3")[0] is None


@pytest.mark.parametrize("workers", [1, 2])
def test_encode_corpus_matches_encode(tok, workers):
    texts = make_corpus(300, seed=3) + [""]
    ids, offsets = encode_corpus(tok, texts, max_len=8, workers=workers, chunk_size=64)
    assert ids.dtype == np.int32 and offsets.dtype == np.int64 and len(offsets) == len(texts) + 1
    assert offsets[0] == 0 and offsets[-1] == len(ids)
    for i, text in enumerate(texts):
        full, padding = tok.encode(text, max_len=8)
        expected = [t for t, p in zip(full, padding) if not p]
        assert ids[offsets[i] : offsets[i + 1]].tolist() == expected
