"""Block-wise masking of a patch grid (BEiT, BEiT v2 `masking_generator.py`).

Masked image modeling in BEiT-3 hides 40% of the patches in rectangular blocks rather than one by one:
single patches are too easy to predict from their neighbours. Blocks of random area and aspect ratio are
placed until the target count is reached, and the result is then forced to the *exact* count (BEiT v2
behaviour) so every sample in a batch masks the same number of patches and the prediction targets stack.
"""

from __future__ import annotations

import math

import numpy as np

from beit3core.errors import UserError

_TRIES_PER_BLOCK = 10  # as in BEiT: a block that does not fit after 10 draws is given up


class BlockMaskGenerator:
    """Draw a boolean (H, W) mask with exactly `num_masking` True cells, built from random blocks.

    grid: (H, W) patch grid. num_masking: cells to mask (75 of 14x14 is the BEiT v2 40% recipe).
    min_num / max_num: smallest / largest block area in cells (max defaults to num_masking).
    min_aspect / max_aspect: block aspect ratio range (max defaults to 1 / min_aspect).
    Call it with a numpy Generator; the same generator state gives the same mask.
    """

    def __init__(
        self,
        grid: tuple[int, int] = (14, 14),
        num_masking: int = 75,
        min_num: int = 16,
        max_num: int | None = None,
        min_aspect: float = 0.3,
        max_aspect: float | None = None,
    ):
        height, width = (grid, grid) if isinstance(grid, int) else tuple(grid)
        if height < 1 or width < 1:
            raise UserError(f"mask grid must be positive, got {height}x{width}")
        if not 0 <= num_masking <= height * width:
            raise UserError(f"num_masking={num_masking} must be within 0..{height * width} for a {height}x{width} grid")
        if min_num < 1:
            raise UserError(f"min_num={min_num} must be >= 1")
        if not min_aspect > 0:
            raise UserError(f"min_aspect={min_aspect} must be > 0")
        max_aspect = max_aspect if max_aspect is not None else 1.0 / min_aspect
        if not min_aspect <= max_aspect:
            raise UserError(f"aspect range must satisfy 0 < min_aspect <= max_aspect, got {min_aspect}..{max_aspect}")
        self.height, self.width = height, width
        self.num_masking = int(num_masking)
        self.min_num = int(min_num)
        self.max_num = int(max_num) if max_num is not None else self.num_masking
        self.log_aspect = (math.log(min_aspect), math.log(max_aspect))

    @classmethod
    def from_ratio(cls, grid: tuple[int, int], ratio: float = 0.4, **kwargs) -> "BlockMaskGenerator":
        """A generator masking round(ratio * H * W) cells (BEiT-3: 0.4)."""
        height, width = (grid, grid) if isinstance(grid, int) else tuple(grid)
        if not 0.0 <= ratio <= 1.0:
            raise UserError(f"mask ratio must be within [0, 1], got {ratio}")
        return cls((height, width), num_masking=int(round(ratio * height * width)), **kwargs)

    def __repr__(self) -> str:
        return (
            f"BlockMaskGenerator(grid=({self.height}, {self.width}), num_masking={self.num_masking}, "
            f"min_num={self.min_num}, max_num={self.max_num}, "
            f"aspect=({math.exp(self.log_aspect[0]):.3f}, {math.exp(self.log_aspect[1]):.3f}))"
        )

    def _place_block(self, mask: np.ndarray, budget: int, rng: np.random.Generator) -> int:
        """Try to mask one new block adding 1..budget cells; return how many cells it added (0 = gave up)."""
        for _ in range(_TRIES_PER_BLOCK):
            # As released (`random.uniform(min_num, budget)`): below min_num cells left, the area falls in
            # [budget, min_num] (numpy wants low <= high) and a block that adds too much is retried.
            area = rng.uniform(min(self.min_num, budget), max(self.min_num, budget))
            aspect = math.exp(rng.uniform(*self.log_aspect))
            h = int(round(math.sqrt(area * aspect)))
            w = int(round(math.sqrt(area / aspect)))
            if not (0 < h < self.height and 0 < w < self.width):
                continue
            top = int(rng.integers(0, self.height - h + 1))
            left = int(rng.integers(0, self.width - w + 1))
            block = mask[top : top + h, left : left + w]
            added = h * w - int(block.sum())
            if 0 < added <= budget:
                block[...] = True
                return added
        return 0

    def __call__(self, rng: np.random.Generator) -> np.ndarray:
        mask = np.zeros((self.height, self.width), dtype=bool)
        count = 0
        while count < self.num_masking:
            budget = min(self.num_masking - count, self.max_num)
            added = self._place_block(mask, budget, rng)
            if added == 0:
                break
            count += added
        # Force the exact count: blocks may stop short (no fitting block) or, never by construction, overshoot.
        flat = mask.reshape(-1)
        if count < self.num_masking:
            free = np.flatnonzero(~flat)
            flat[rng.choice(free, self.num_masking - count, replace=False)] = True
        elif count > self.num_masking:
            taken = np.flatnonzero(flat)
            flat[rng.choice(taken, count - self.num_masking, replace=False)] = False
        return mask
