"""Evaluation split across ranks: each share predicts its contiguous block of the rows, the shares' outputs joined
in rank order score exactly as one process scoring every row (the released code also evaluates on every rank and
merges). Shares are run in one process here; tests/test_finetune_distributed.py runs them under torchrun."""

import pytest
import torch

from beit3core.tasks import TASK_NAMES, TASKS, settings_for
from beit3core.tasks.common import EvalContext, merge_outputs

pytestmark = pytest.mark.usefixtures("one_thread")


def _setup(root, task):
    from beit3core import data
    from beit3core.data.task_stream import SplitSource
    from beit3core.task_checkpoint import build_task_model_for_init
    from beit3core.tokenizers import TextTokenizer

    tokenizer = TextTokenizer.load(str(root / "tok"))
    uri = str(root / "synth" / "tasks" / task)
    header = data.read_header(uri)
    # one row a batch: a row's outputs then do not depend on which rows share its batch
    settings = settings_for(task).replace(arch="beit3_tiny_patch8_64", img_size=32, max_len=12, eval_batch_size=1,
                                          num_beams=2)
    torch.manual_seed(0)
    model, _ = build_task_model_for_init(task, settings, header, "random", vocab_size=tokenizer.vocab_size)
    source = SplitSource(uri, "val", header)
    return model.eval(), source, header, tokenizer, settings


def _scored(task, model, source, header, tokenizer, settings, shares: int, max_rows: int = 0, samples: int = 2**62):
    contexts = [EvalContext(source=source, header=header, tokenizer=tokenizer, settings=settings, device="cpu",
                            max_rows=max_rows, num_samples=samples, progress=False, rank=r, world_size=shares)
                for r in range(shares)]
    outputs = [TASKS[task].predict(model, ev) for ev in contexts]
    return TASKS[task].score(merge_outputs(outputs), contexts[0])


@pytest.mark.parametrize("task", TASK_NAMES)
def test_shares_score_as_one_process(task_synth, task):
    """3 shares of the val split (blocks cut through the rows of one image in retrieval and captioning, whose
    images are then met by two shares and kept once) give the metrics and samples of one process."""
    model, source, header, tokenizer, settings = _setup(task_synth, task)
    whole = _scored(task, model, source, header, tokenizer, settings, shares=1)
    split = _scored(task, model, source, header, tokenizer, settings, shares=3)
    assert split == whole
    if task in ("retrieval", "captioning"):
        assert whole[0]["num_images"] < source.rows  # several rows an image: share edges cut through images


def test_a_share_with_no_rows_and_capped_samples(task_synth):
    """More shares than rows leave some empty; each share's first samples, joined, are still the first overall."""
    model, source, header, tokenizer, settings = _setup(task_synth, "classification")
    whole = _scored("classification", model, source, header, tokenizer, settings, shares=1, max_rows=2, samples=1)
    split = _scored("classification", model, source, header, tokenizer, settings, shares=3, max_rows=2, samples=1)
    assert split == whole and whole[0]["num_examples"] == 2 and len(whole[1]) == 1


def test_shares_read_disjoint_blocks_covering_the_rows(task_synth):
    from beit3core.errors import UserError

    _, source, header, tokenizer, settings = _setup(task_synth, "vqa")
    seen = []
    for rank in range(4):
        ev = EvalContext(source=source, header=header, tokenizer=tokenizer, settings=settings, device="cpu",
                         max_rows=7, progress=False, rank=rank, world_size=4)
        seen.append([row["id"] for row, _ in ev.stream("x")])
    first = [row["id"] for row, _ in EvalContext(source=source, header=header, tokenizer=tokenizer,
                                                  settings=settings, device="cpu", max_rows=7,
                                                  progress=False).stream("x")]
    assert [i for share in seen for i in share] == first and [len(s) for s in seen] == [1, 2, 2, 2]
    with pytest.raises(UserError, match="rank 4 is outside world size 4"):
        EvalContext(source=source, header=header, tokenizer=tokenizer, settings=settings, device="cpu", rank=4,
                    world_size=4)


def test_joined_index_keeps_an_image_met_by_two_shares_once_where_first_met():
    """Shares [a a b] and [b c]: image b straddles the edge, so both shares encoded it; the join keeps share 0's
    (position 1 of image_rows, not 2), and every row points at its image's one entry. The comparison with one
    process above cannot see a wrong position: one process goes through joined_index as well."""
    from beit3core.tasks.data import ImageIndex, joined_index

    rows = [{"id": i, "image_id": img} for i, img in enumerate("aabbc")]
    shares = [ImageIndex(), ImageIndex()]
    new = [shares[0].add(r) for r in rows[:3]] + [shares[1].add(r) for r in rows[3:]]
    assert new == [True, False, True, True, True]
    image_rows = shares[0].images + shares[1].images
    kept, index = joined_index(image_rows, shares[0].rows + shares[1].rows)
    assert kept == [0, 1, 3]
    assert [r["id"] for r in index.images] == [0, 2, 4] and index.owner == [0, 0, 1, 1, 2] and index.rows == rows
