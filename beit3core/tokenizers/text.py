"""SentencePiece text tokenizer with the BEiT-3 (fairseq / XLM-R) id mapping.

BEiT-3 loads `beit3.spm` through `XLMRobertaTokenizer`, which shifts every SentencePiece id by one and puts
four specials in front: `<s>`=0, `<pad>`=1, `</s>`=2, `<unk>`=3; SentencePiece piece p > 0 becomes p + 1 and
the SentencePiece unk (0) becomes 3; `<mask>` is the last id, len(sp) + 1, so the vocabulary holds
len(sp) + 2 ids (64002 for the released 64k model; the model's embedding has 8 spare rows on top).
Sequences are built by hand: [0] + pieces[:max_len - 2] + [2], padded with 1.

The model trained here keeps SentencePiece's default control layout (unk 0, <s> 1, </s> 2, no pad), the
same as `beit3.spm`, so a locally trained model and the released one map ids the same way.
"""

from __future__ import annotations

import io as _pyio
import logging
import multiprocessing
import re
from collections.abc import Iterable, Sequence
from itertools import chain

import numpy as np
import sentencepiece as spm
import torch

from beit3core import io
from beit3core.errors import UserError
from beit3core.progress import progress_bar

log = logging.getLogger(__name__)

BOS_ID, PAD_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
_SP_OFFSET = 1  # fairseq offset: SentencePiece id p -> p + 1
MODEL_FILENAME = "spm.model"


def clean_text(item: str | bytes) -> tuple[str | None, str | None]:
    """Return (text, None) for a usable line, or (None, reason) for one that must be quarantined.

    Bytes are decoded as strict UTF-8; strings must be encodable as UTF-8 (JSON can smuggle in lone
    surrogates such as "\\ud800", which SentencePiece cannot take).
    """
    if isinstance(item, (bytes, bytearray)):
        try:
            item = bytes(item).decode("utf-8")
        except UnicodeDecodeError as err:
            return None, f"not valid UTF-8 ({err.reason} at byte {err.start})"
    if not isinstance(item, str):
        return None, f"expected a string, got {type(item).__name__}"
    try:
        item.encode("utf-8")
    except UnicodeEncodeError as err:
        return None, f"not valid UTF-8 (undecodable character at position {err.start})"
    return item, None


class TextTokenizer:
    """A SentencePiece model plus the BEiT-3 id mapping (see the module docstring)."""

    bos_id = BOS_ID
    pad_id = PAD_ID
    eos_id = EOS_ID
    unk_id = UNK_ID

    def __init__(self, model_proto: bytes):
        self.model_proto = bytes(model_proto)
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.LoadFromSerializedProto(self.model_proto)
        except Exception as err:  # sentencepiece raises RuntimeError/OSError on a corrupt proto
            raise UserError(f"not a SentencePiece model: {err}") from err
        self._sp_unk = self.sp.unk_id()

    # -- construction -------------------------------------------------------------------------------
    @classmethod
    def load(cls, uri: str) -> "TextTokenizer":
        """Load a `.model` file, a tokenizer folder holding spm.model, or a `tokenize text` output folder."""
        for candidate in (uri, io.join(uri, MODEL_FILENAME), io.join(uri, "tokenizer", MODEL_FILENAME)):
            if io.exists(candidate) and not io.isdir(candidate):
                try:
                    return cls(io.read_bytes(candidate))
                except UserError as err:
                    raise UserError(f"{candidate}: {err}") from err
        raise UserError(f"{uri}: no SentencePiece model found (looked for the file, {MODEL_FILENAME}, tokenizer/{MODEL_FILENAME})")

    @classmethod
    def train(
        cls,
        texts: Iterable[str | bytes],
        vocab_size: int = 1000,
        *,
        quarantine: list[dict] | None = None,
        character_coverage: float = 1.0,
        num_threads: int = 1,
        max_sentences: int = 0,
    ) -> "TextTokenizer":
        """Train a unigram SentencePiece model on `texts`; `vocab_size` counts SentencePiece pieces.

        Lines that are not valid UTF-8 are appended to `quarantine` as {"index", "reason"} and skipped.
        Blank lines are ignored. Raises UserError for an empty corpus or a vocabulary the corpus cannot fill.
        """
        if vocab_size < 4:
            raise UserError(f"vocab_size={vocab_size} is too small (SentencePiece needs at least 4 pieces)")
        good: list[str] = []
        for index, item in enumerate(texts):
            text, reason = clean_text(item)
            if text is None:
                if quarantine is not None:
                    quarantine.append({"index": index, "reason": reason})
                log.warning("text line %d quarantined: %s", index, reason)
                continue
            text = text.strip()
            if text:
                good.append(text)
        if not good:
            raise UserError("text corpus is empty: no non-blank UTF-8 lines to train the tokenizer on")
        writer = _pyio.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(good),
                model_writer=writer,
                model_type="unigram",
                vocab_size=vocab_size,
                character_coverage=character_coverage,
                unk_id=0, bos_id=1, eos_id=2, pad_id=-1,  # beit3.spm layout; pad lives in the BEiT-3 map
                num_threads=num_threads,
                input_sentence_size=max_sentences,
                shuffle_input_sentence=True,
                minloglevel=2,
            )
        except RuntimeError as err:
            match = re.search(r"Vocabulary size too high \((\d+)\).*<= (\d+)", str(err))
            if match:
                raise UserError(
                    f"vocab_size={match.group(1)} is larger than the corpus supports "
                    f"({len(good)} lines allow at most {match.group(2)}); lower --vocab-size or add text"
                ) from err
            raise UserError(f"SentencePiece training failed: {str(err).splitlines()[0]}") from err
        log.info("trained SentencePiece unigram model: %d pieces on %d lines", vocab_size, len(good))
        return cls(writer.getvalue())

    def save(self, uri: str) -> str:
        """Write the SentencePiece model to `uri` (a .model file, or a folder that gets spm.model)."""
        target = uri if uri.endswith(".model") else io.join(uri, MODEL_FILENAME)
        io.write_bytes(target, self.model_proto)
        return target

    # -- ids ----------------------------------------------------------------------------------------
    @property
    def mask_id(self) -> int:
        return len(self.sp) + 1

    @property
    def vocab_size(self) -> int:
        return len(self.sp) + 2

    def __len__(self) -> int:
        return self.vocab_size

    def sp_to_ids(self, sp_ids: Sequence[int]) -> list[int]:
        """SentencePiece ids -> BEiT-3 ids (p -> p + 1, SentencePiece unk -> 3)."""
        unk = self._sp_unk
        return [UNK_ID if p == unk else p + _SP_OFFSET for p in sp_ids]

    def tokenize(self, text: str) -> list[int]:
        """The BEiT-3 ids of `text`'s pieces, without <s>, </s> or padding."""
        return self.sp_to_ids(self.sp.encode(text))

    def encode(self, text: str, max_len: int) -> tuple[list[int], list[int]]:
        """[<s>] + pieces[:max_len - 2] + [</s>], padded with <pad> to max_len; padding is 1 at pads."""
        if max_len < 2:
            raise UserError(f"max_len={max_len} must be >= 2 (room for <s> and </s>)")
        ids = [BOS_ID] + self.tokenize(text)[: max_len - 2] + [EOS_ID]
        pad = max_len - len(ids)
        return ids + [PAD_ID] * pad, [0] * len(ids) + [1] * pad

    def encode_batch(self, texts: Sequence[str], max_len: int):
        """(LongTensor (B, max_len) ids, BoolTensor (B, max_len) True = pad)."""
        pairs = [self.encode(t, max_len) for t in texts]
        ids = torch.tensor([p[0] for p in pairs], dtype=torch.long).reshape(len(pairs), max_len)
        padding = torch.tensor([p[1] for p in pairs], dtype=torch.bool).reshape(len(pairs), max_len)
        return ids, padding

    def decode(self, ids: Iterable[int]) -> str:
        """Text of BEiT-3 ids; <s>, <pad>, </s>, <mask> and unused rows are dropped, <unk> shown as SentencePiece does."""
        sp_ids = []
        for i in ids:
            i = int(i)
            if i in (BOS_ID, PAD_ID, EOS_ID) or i >= self.mask_id or i < 0:
                continue
            sp_ids.append(self._sp_unk if i == UNK_ID else i - _SP_OFFSET)
        return self.sp.decode(sp_ids)

    def __repr__(self) -> str:
        return f"TextTokenizer(pieces={len(self.sp)}, vocab_size={self.vocab_size}, mask_id={self.mask_id})"


# -- parallel corpus encoding ---------------------------------------------------------------------------
# Worker state. With the fork start method the texts are inherited, so tasks carry only (start, end) and
# no text is pickled; with spawn each task carries its texts.
_WORKER: TextTokenizer | None = None
_TEXTS: Sequence[str] | None = None


def _init_worker(model_proto: bytes | None) -> None:
    global _WORKER
    if model_proto is not None:
        _WORKER = TextTokenizer(model_proto)


def _encode_chunk(task: tuple) -> tuple[np.ndarray, np.ndarray]:
    start, end, max_len, texts = task
    return _encode_with(_WORKER, texts if texts is not None else _TEXTS[start:end], max_len)


def _encode_with(tok: TextTokenizer, texts: list[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Unpadded sequences [<s>] + pieces[:max_len-2] + [</s>], concatenated: (ids int32, lengths int64)."""
    # one thread per process: parallelism comes from the worker processes, not SentencePiece threads
    pieces = [p[: max_len - 2] for p in tok.sp.encode(list(texts), num_threads=1)]
    body_lens = np.fromiter(map(len, pieces), dtype=np.int64, count=len(pieces))
    body = np.fromiter(chain.from_iterable(pieces), dtype=np.int32, count=int(body_lens.sum())) + _SP_OFFSET
    body[body == tok._sp_unk + _SP_OFFSET] = UNK_ID
    lengths = body_lens + 2
    starts = np.cumsum(lengths) - lengths
    ids = np.empty(int(lengths.sum()), dtype=np.int32)
    ids[starts] = BOS_ID
    ids[starts + lengths - 1] = EOS_ID
    # position of each body token: its sequence start + 1 + its index within the sequence
    within = np.arange(body.size, dtype=np.int64) - np.repeat(np.cumsum(body_lens) - body_lens, body_lens)
    ids[np.repeat(starts + 1, body_lens) + within] = body
    return ids, lengths


def _mp_context():
    # fork: children only run SentencePiece (no torch ops), and spawn would re-import the whole stack.
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def encode_corpus(
    tok: TextTokenizer,
    texts: Sequence[str],
    max_len: int,
    *,
    workers: int = 1,
    chunk_size: int = 2048,
    progress: bool = False,
    desc: str = "tokenize",
) -> tuple[np.ndarray, np.ndarray]:
    """Encode many texts, in parallel across `workers` processes, in input order.

    Returns (ids int32 flat, offsets int64 of length n + 1): sequence i is ids[offsets[i]:offsets[i+1]],
    i.e. [<s>] + pieces[:max_len - 2] + [</s>] with no padding.
    """
    if max_len < 2:
        raise UserError(f"max_len={max_len} must be >= 2 (room for <s> and </s>)")
    if workers < 1:
        raise UserError(f"workers={workers} must be >= 1")
    global _WORKER, _TEXTS
    bounds = [(i, min(i + chunk_size, len(texts))) for i in range(0, len(texts), chunk_size)]
    bar = progress_bar(total=len(texts), desc=desc, unit="line", disable=not progress, leave=False)
    results = []
    if workers == 1 or len(bounds) <= 1:
        for start, end in bounds:
            results.append(_encode_with(tok, list(texts[start:end]), max_len))
            bar.update(end - start)
    else:
        ctx = _mp_context()
        forked = ctx.get_start_method() == "fork"
        tasks = [(a, b, max_len, None if forked else list(texts[a:b])) for a, b in bounds]
        if forked:
            _WORKER, _TEXTS = tok, texts  # inherited by the forked workers
        try:
            with ctx.Pool(workers, initializer=_init_worker, initargs=(None if forked else tok.model_proto,)) as pool:
                for (start, end), res in zip(bounds, pool.imap(_encode_chunk, tasks)):
                    results.append(res)
                    bar.update(end - start)
        finally:
            _WORKER, _TEXTS = None, None
    bar.close()
    if not results:
        return np.zeros(0, dtype=np.int32), np.zeros(1, dtype=np.int64)
    ids = np.concatenate([r[0] for r in results]).astype(np.int32, copy=False)
    lengths = np.concatenate([r[1] for r in results])
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return ids, offsets
