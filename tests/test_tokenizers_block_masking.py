"""BlockMaskGenerator: exact counts, shape, blockiness, determinism under a seed."""

import numpy as np
import pytest

from beit3core.errors import UserError
from beit3core.tokenizers.block_masking import BlockMaskGenerator


@pytest.mark.parametrize(
    "grid,num,min_num",
    [((14, 14), 75, 16), ((8, 8), 26, 16), ((16, 16), 102, 16), ((14, 14), 0, 16), ((14, 14), 196, 16), ((6, 10), 7, 4)],
)
def test_exact_count_and_shape(grid, num, min_num):
    gen = BlockMaskGenerator(grid, num_masking=num, min_num=min_num)
    rng = np.random.default_rng(0)
    for _ in range(200):
        mask = gen(rng)
        assert mask.dtype == bool and mask.shape == grid
        assert int(mask.sum()) == num


def test_deterministic_under_seed_and_varies_across_draws():
    gen = BlockMaskGenerator((14, 14), num_masking=75, min_num=16)
    a = [gen(np.random.default_rng(123)) for _ in range(2)]
    assert np.array_equal(a[0], a[1])
    rng = np.random.default_rng(123)
    draws = [gen(rng) for _ in range(5)]
    assert np.array_equal(draws[0], a[0])
    assert len({d.tobytes() for d in draws}) == 5


def test_masks_are_blockwise_not_scattered():
    # A block mask has far fewer masked/unmasked neighbour pairs than uniform random masking.
    gen = BlockMaskGenerator((14, 14), num_masking=75, min_num=16)
    rng = np.random.default_rng(0)

    def boundary(m):
        return int((m[1:] != m[:-1]).sum() + (m[:, 1:] != m[:, :-1]).sum())

    block = np.mean([boundary(gen(rng)) for _ in range(100)])
    scattered = []
    for _ in range(100):
        m = np.zeros(196, dtype=bool)
        m[rng.choice(196, 75, replace=False)] = True
        scattered.append(boundary(m.reshape(14, 14)))
    assert block < 0.6 * np.mean(scattered)


def test_from_ratio_and_bad_parameters():
    assert BlockMaskGenerator.from_ratio((14, 14), 0.4).num_masking == 78
    assert BlockMaskGenerator.from_ratio((8, 8), 0.4).num_masking == 26
    with pytest.raises(UserError):
        BlockMaskGenerator((4, 4), num_masking=17)
    with pytest.raises(UserError):
        BlockMaskGenerator((4, 4), num_masking=4, min_aspect=0)
    with pytest.raises(UserError):
        BlockMaskGenerator.from_ratio((4, 4), 1.5)


def test_block_area_is_drawn_between_min_and_remaining_as_released():
    """microsoft/unilm beit2/masking_generator.py `_mask`: `target_area = random.uniform(self.min_num_patches,
    max_mask_patches)` also when fewer than min_num_patches cells remain (Python's uniform(a, b) with a > b
    draws in [b, a]); the area is never simply set to the remaining count."""
    gen = BlockMaskGenerator((14, 14), num_masking=75, min_num=16)
    calls = []

    class Recording:
        def __init__(self):
            self.rng = np.random.default_rng(0)

        def uniform(self, a, b):
            calls.append((a, b))
            return self.rng.uniform(a, b)

        def integers(self, *args):
            return self.rng.integers(*args)

    mask = np.zeros((14, 14), dtype=bool)
    gen._place_block(mask, 5, Recording())
    assert calls and calls[0] == (5, 16)  # the area's range; the aspect draw follows
