"""Memory budgets: split the GT (or image) axis so no ``(B, G, N)`` tensor exceeds a pair budget.

Peers handle crowded images by catching out-of-memory errors and re-running on the CPU. We bound
memory by design: every assigner takes ``max_pairs``, the largest number of prior x GT pairs it
may hold in one intermediate tensor, and walks the GTs in chunks under it. Results are identical
to the unchunked path because every cross-GT decision (best GT of a prior, lowest cost, ...) is a
running reduction.

Example: B=16 images, N=8400 priors, G=1000 GTs and ``max_pairs=2**25`` (33.5 M pairs, 134 MB
per float32 tensor) gives chunks of ``2**25 // (16 * 8400) = 249`` GTs: 4 chunks.
"""

from __future__ import annotations

DEFAULT_MAX_PAIRS = 2**25

#: Work-chunk size (pairs) of the dense CPU paths: below the memory budget, a chunk this small keeps
#: its few float32 intermediates (1 MiB each) in the cache. Large chunks are *slower* per pair on a
#: CPU: a (16, 100, 8400) IoU tensor is 54 MB and every pass over it streams from memory.
CACHE_PAIRS = 2**20


def chunk_slices(total: int, cost_per_item: int, budget: int) -> list[slice]:
    """Split ``range(total)`` into consecutive slices whose ``len * cost_per_item <= budget``
    (at least one item per slice, whatever the budget). ``total == 0`` gives one empty slice so
    that callers still run their (empty) body once.

    >>> chunk_slices(10, 3, 9)
    [slice(0, 3, None), slice(3, 6, None), slice(6, 9, None), slice(9, 10, None)]
    """
    if budget <= 0:
        raise ValueError(f"budget must be positive, got {budget}")
    if total <= 0:
        return [slice(0, 0)]
    step = max(1, budget // max(1, cost_per_item))
    return [slice(i, min(i + step, total)) for i in range(0, total, step)]


def gt_chunks(batch_size: int, num_gts: int, num_priors: int, max_pairs: int) -> list[slice]:
    """Slices over the GT axis so that each chunk holds at most ``max_pairs`` (B x g x N) pairs."""
    return chunk_slices(num_gts, batch_size * num_priors, max_pairs)


def image_gt_chunks(batch_size: int, num_gts: int, num_priors: int, max_pairs: int) -> list[tuple[slice, slice]]:
    """``(images, gts)`` blocks covering the ``(B, G)`` grid, each holding at most ``max_pairs``
    (b x g x N) pairs (at least one image x one GT). For computations that are independent per image
    (every assigner's): whole images are grouped while they fit, else each image is split over GTs.

    >>> image_gt_chunks(4, 10, 100, 2000)   # two images of 10 GTs per block
    [(slice(0, 2, None), slice(0, 10, None)), (slice(2, 4, None), slice(0, 10, None))]
    >>> image_gt_chunks(2, 10, 100, 400)    # one image, 4 GTs per block
    [(slice(0, 1, None), slice(0, 4, None)), (slice(0, 1, None), slice(4, 8, None)), (slice(0, 1, None), slice(8, 10, None)), (slice(1, 2, None), slice(0, 4, None)), (slice(1, 2, None), slice(4, 8, None)), (slice(1, 2, None), slice(8, 10, None))]
    """
    if max_pairs <= 0:
        raise ValueError(f"max_pairs must be positive, got {max_pairs}")
    per_image = max(1, num_gts) * max(1, num_priors)
    if per_image <= max_pairs or num_gts <= 1:
        return [(b, slice(0, num_gts)) for b in chunk_slices(batch_size, per_image, max_pairs)]
    gs = chunk_slices(num_gts, num_priors, max_pairs)
    return [(slice(i, i + 1), g) for i in range(batch_size) for g in gs]
