"""Which code path a device takes: sparse (data-dependent sizes) or sync-free (fixed sizes).

Several assigners have two implementations with identical results (tested): a *sparse* one that
works on the pairs that can matter (windows of overlapping priors, overlap indexes, ``nonzero``
lists), whose tensor sizes depend on the data and so are read back to the host, and a *dense*
one over fixed-size ``(B, g, N)`` chunks under ``max_pairs``. On the CPU a read-back is free and
the sparse paths are much faster; on an accelerator (CUDA, MPS, XLA) every read-back stalls the
device's queue, so there the dense paths run, without host synchronisation.
"""

from __future__ import annotations

import torch

__all__ = ["sync_free"]


def sync_free(device: torch.device) -> bool:
    """Whether work on ``device`` must avoid host synchronisation (every device but the CPU).

    Example: ``sync_free(torch.device("cpu"))`` is False (sparse paths), ``sync_free(
    torch.device("cuda", 0))`` is True (dense, sync-free paths)."""
    return device.type != "cpu"
