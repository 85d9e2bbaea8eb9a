"""`--lanes 0` (the default): the lane count is chosen at the first start and kept by every resume."""

from __future__ import annotations

import pytest
from test_pretrain_run import argv_for, inputs  # noqa: F401 - the module fixture

from beit3core import io
from beit3core.data.lanes import auto_lanes, check_layout
from beit3core.errors import UserError


@pytest.mark.parametrize(("batches", "world", "workers", "expected"), [
    ({"images": 16, "texts": 16, "pairs": 32}, 1, 2, 8),  # the demo: 4 lanes per worker
    ({"images": 4, "texts": 4, "pairs": 4}, 2, 0, 4),  # the local pipeline run: 2 ranks of 2
    ({"images": 2048, "texts": 2048, "pairs": 2048}, 128, 8, 4096 // 2),  # the paper's batches, 1024 processes
    ({"images": 12, "texts": 0, "pairs": 18}, 1, 0, 3),  # a stream turned off does not count
])
def test_auto_lanes_is_the_largest_fitting_count(batches, world, workers, expected):
    lanes = auto_lanes(batches, world, workers)
    assert lanes == expected
    check_layout(lanes, world, workers, batches)  # and the loader accepts it


def test_auto_lanes_refuses_a_layout_nothing_fits():
    with pytest.raises(UserError, match="--lanes: no lane count fits"):
        auto_lanes({"images": 6}, 4, 1)


def test_default_lanes_are_chosen_once_and_kept_on_resume(inputs, tmp_path):  # noqa: F811
    """The first start records the chosen lanes in the checkpoint's data position; a resume with other
    loader workers keeps them, although auto would now pick another count (that would change the order)."""
    import shutil

    from beit3train import checkpointing
    from beit3train.pretrain import main

    out = str(tmp_path / "run")
    argv = argv_for(inputs, out, steps=4)
    i = argv.index("--lanes")
    del argv[i:i + 2]
    for flag in ("--batch-images", "--batch-texts", "--batch-pairs"):
        argv[argv.index(flag) + 1] = "8"
    assert main(argv) == 0  # 1 process, 0 workers: gcd 8, at most 4 lanes per process -> 4

    def lanes_at(step):
        (uri,) = [u for s, u, ok in checkpointing.list_checkpoints(out) if ok and s == step]
        return checkpointing.load_checkpoint(uri)["data_position"]["lanes"]

    assert lanes_at(4) == 4
    shutil.rmtree(dict((s, u) for s, u, _ in checkpointing.list_checkpoints(out))[4])  # resume from step 2
    argv[argv.index("--num-workers") + 1] = "2"  # auto would now pick 8 (2 lanes x 2 workers x 2)
    assert main(argv) == 0
    assert lanes_at(4) == 4
