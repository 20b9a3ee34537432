"""core.chunking: GT chunks and (image x GT) blocks cover the grid exactly once, under the budget."""

from __future__ import annotations

import pytest

from assignlab.core.chunking import chunk_slices, gt_chunks, image_gt_chunks


@pytest.mark.parametrize("B,G,N,budget", [(4, 10, 100, 2000), (2, 10, 100, 400), (3, 7, 5, 1), (16, 100, 8400, 2**20),
                                          (5, 0, 10, 100), (2, 1, 1000, 10), (1, 9, 3, 10**9)])
def test_image_gt_chunks_cover_once_under_budget(B, G, N, budget):
    seen = [[0] * G for _ in range(B)]
    for bs, gs in image_gt_chunks(B, G, N, budget):
        assert (bs.stop - bs.start) * (gs.stop - gs.start) * N <= budget or (bs.stop - bs.start == 1 and gs.stop - gs.start <= 1)
        for b in range(bs.start, bs.stop):
            for g in range(gs.start, gs.stop):
                seen[b][g] += 1
    assert all(c == 1 for row in seen for c in row)


def test_image_gt_chunks_examples_and_errors():
    assert image_gt_chunks(4, 10, 100, 2000) == [(slice(0, 2), slice(0, 10)), (slice(2, 4), slice(0, 10))]
    assert image_gt_chunks(2, 10, 100, 400)[:2] == [(slice(0, 1), slice(0, 4)), (slice(0, 1), slice(4, 8))]
    with pytest.raises(ValueError, match="max_pairs"):
        image_gt_chunks(1, 1, 1, 0)
    assert gt_chunks(2, 10, 5, 30) == chunk_slices(10, 10, 30)
