"""Test helpers shared by the assigner tests: random boxes (static assigners), a host read-back guard."""

from __future__ import annotations

import sys

import torch
from torch import Tensor


def random_boxes(
    counts: list[int], size: tuple[int, int], seed: int, div: float = 2, min_side: float = 2, integer: bool = False
) -> list[Tensor]:
    """Per image ``counts[b]`` random xyxy boxes inside an ``(H, W)`` image: top-left corner in
    ``[0, W - 4) x [0, H - 4)``, sides ``rand * (W / div, H / div) + min_side``, clipped to the
    image; rounded to whole pixels with ``integer``. Deterministic in ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    H, W = size
    out = []
    for n in counts:
        xy = torch.rand(n, 2, generator=gen) * torch.tensor([W - 4.0, H - 4.0])
        wh = torch.rand(n, 2, generator=gen) * torch.tensor([W / div, H / div]) + min_side
        b = torch.cat([xy, torch.minimum(xy + wh, torch.tensor([float(W), float(H)]))], 1)
        out.append(b.round() if integer else b)
    return out


class NoHostSync:
    """Inside this context every tensor -> host read-back raises: ``.item()``, ``.tolist()``,
    ``nonzero`` (method and function), ``bool()``, ``int()``, ``float()``, ``__index__`` -- what
    would stall a CUDA stream. Read-backs made (directly or indirectly) from a function named in
    ``allowed`` pass: the documented ones, e.g. the GT label range check."""

    NAMES = ("item", "tolist", "nonzero", "__bool__", "__int__", "__float__", "__index__")

    def __init__(self, allowed: tuple[str, ...] = ()) -> None:
        self.allowed = set(allowed)

    def _permitted(self) -> bool:
        f = sys._getframe(2)
        while f is not None:
            if f.f_code.co_name in self.allowed:
                return True
            f = f.f_back
        return False

    def __enter__(self) -> NoHostSync:
        self.saved = {n: getattr(torch.Tensor, n) for n in self.NAMES}
        self.saved_fn = torch.nonzero
        guard = self

        def wrap(original):
            def read_back(*args, **kwargs):
                if guard._permitted():
                    return original(*args, **kwargs)
                raise AssertionError("host synchronisation on the sync-free path")
            return read_back

        for n, f in self.saved.items():
            setattr(torch.Tensor, n, wrap(f))
        torch.nonzero = wrap(self.saved_fn)
        return self

    def __exit__(self, *exc) -> bool:
        for n, f in self.saved.items():
            setattr(torch.Tensor, n, f)
        torch.nonzero = self.saved_fn
        return False
