"""The result every assigner returns: one dense row per prior, plus an optional sparse match list.

Dense view, for a batch of ``B`` images and ``N`` priors (all ``(B, N)``):

=============  =======  ==============================================================
field          dtype    meaning
=============  =======  ==============================================================
gt_index       long     GT row the prior is assigned to, ``-1`` where none
positive       bool     the prior is a positive (trains box and class toward its GT)
ignore         bool     the prior is neither positive nor negative (no loss at all)
quality        float    soft classification / objectness target in [0, 1] (1 for hard)
box_weight     float    weight of the prior's box loss (0 on non-positives)
cls_weight     float    weight of the prior's classification loss (0 on ignored priors)
=============  =======  ==============================================================

A prior is *negative* when it is neither positive nor ignored. Invariants (checked by
:meth:`Assignment.validate`): ``positive & ignore`` is empty, ``gt_index >= 0`` exactly on
positives, ``quality`` and ``box_weight`` are 0 off the positives.

Some assigners (YOLOv5) let one prior serve several GTs. They also return :class:`Matches`, a
sparse list of ``(batch, prior, gt, weight)`` rows kept *with* its duplicates, from which the
dense view is derived by an explicit policy (:func:`dense_from_matches`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from .groundtruth import GroundTruth

__all__ = ["Assignment", "Matches", "dense_from_matches", "select_best_per_prior"]


@dataclass(frozen=True)
class Matches:
    """Sparse many-to-many matches, ``M`` rows (duplicates allowed).

    Attributes:
        batch: ``(M,)`` image index.
        prior: ``(M,)`` prior index.
        gt: ``(M,)`` GT row.
        weight: ``(M,)`` float weight of the match (1 for plain YOLOv5).
        center: ``(M,)`` bool, True when the prior's cell contains the GT center (False for
            neighbour cells). Used by the drawing tools.
        score: ``(M,)`` float used to choose between matches of one prior (e.g. anchor IoU).
    """

    batch: Tensor
    prior: Tensor
    gt: Tensor
    weight: Tensor
    center: Tensor
    score: Tensor

    def __len__(self) -> int:
        return int(self.batch.shape[0])

    def select(self, keep: Tensor) -> Matches:
        return Matches(*(getattr(self, f)[keep] for f in ("batch", "prior", "gt", "weight", "center", "score")))


@dataclass(frozen=True)
class Assignment:
    """Dense per-prior assignment of a batch (see module docstring).

    ``extras`` holds assigner-specific tensors that are not part of the common contract, e.g.
    ``"overlaps"`` (IoU of each positive with its GT) or ``"metrics"`` (TAL alignment metric).
    """

    gt_index: Tensor
    positive: Tensor
    ignore: Tensor
    quality: Tensor
    box_weight: Tensor
    cls_weight: Tensor
    matches: Matches | None = None
    extras: dict[str, Tensor] = field(default_factory=dict)

    @property
    def negative(self) -> Tensor:
        return ~(self.positive | self.ignore)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.gt_index.shape)  # type: ignore[return-value]

    def num_positives(self) -> Tensor:
        """``(B,)`` positives per image."""
        return self.positive.sum(dim=1)

    def labels(self, gt: GroundTruth, background: int = -1) -> Tensor:
        """``(B, N)`` class of each positive's GT, ``background`` elsewhere."""
        if gt.max_boxes == 0:
            return torch.full_like(self.gt_index, background)
        lab = torch.gather(gt.labels, 1, self.gt_index.clamp(min=0))
        return torch.where(self.positive, lab, torch.full_like(lab, background))

    def target_boxes(self, gt: GroundTruth) -> Tensor:
        """``(B, N, 4)`` the assigned GT box of each prior (zeros off the positives)."""
        B, N = self.gt_index.shape
        if gt.max_boxes == 0:
            return gt.boxes.new_zeros(B, N, 4)
        idx = self.gt_index.clamp(min=0)[..., None].expand(B, N, 4)
        out = torch.gather(gt.boxes, 1, idx)
        return out * self.positive[..., None]

    def validate(self, gt: GroundTruth | None = None) -> None:
        """Raise ``AssertionError`` if an invariant of the contract is broken (tests use this)."""
        assert self.gt_index.dtype == torch.long
        for name in ("positive", "ignore"):
            assert getattr(self, name).dtype == torch.bool, name
        shp = self.gt_index.shape
        for name in ("positive", "ignore", "quality", "box_weight", "cls_weight"):
            assert getattr(self, name).shape == shp, f"{name} has shape {getattr(self, name).shape}, want {shp}"
        assert not bool((self.positive & self.ignore).any()), "a prior is both positive and ignored"
        assert bool(((self.gt_index >= 0) == self.positive).all()), "gt_index >= 0 must equal positive"
        for name in ("quality", "box_weight", "cls_weight"):
            t = getattr(self, name)
            assert bool(torch.isfinite(t).all()), f"{name} has non-finite values"
            assert bool((t >= 0).all()), f"{name} has negative values"
        assert bool((self.quality <= 1 + 1e-6).all()), "quality above 1"
        assert bool((self.quality[~self.positive] == 0).all()), "quality must be 0 off the positives"
        assert bool((self.box_weight[~self.positive] == 0).all()), "box_weight must be 0 off the positives"
        assert bool((self.cls_weight[self.ignore] == 0).all()), "cls_weight must be 0 on ignored priors"
        if gt is not None:
            assert shp[0] == gt.batch_size
            if gt.max_boxes:
                valid = torch.gather(gt.mask, 1, self.gt_index.clamp(min=0))
                assert bool(valid[self.positive].all()), "a positive points at a padded / invalid GT"
            else:
                assert not bool(self.positive.any())

    @staticmethod
    def from_gt_index(
        gt_index: Tensor,
        ignore: Tensor | None = None,
        quality: Tensor | None = None,
        box_weight: Tensor | None = None,
        cls_weight: Tensor | None = None,
        matches: Matches | None = None,
        extras: dict[str, Tensor] | None = None,
    ) -> Assignment:
        """Build the dense result from ``gt_index`` (``-1`` = not positive) and optional parts.

        Missing parts take the hard-assignment defaults: ``quality`` 1 on positives,
        ``box_weight`` 1 on positives, ``cls_weight`` 1 except on ignored priors. Given parts are
        zeroed where the contract says they must be 0.
        """
        positive = gt_index >= 0
        if ignore is None:
            ignore = torch.zeros_like(positive)
        ignore = ignore & ~positive
        pos_f = positive.to(torch.float32)
        quality = pos_f if quality is None else torch.where(positive, quality.float(), 0.0)
        box_weight = pos_f if box_weight is None else torch.where(positive, box_weight.float(), 0.0)
        cls_weight = (~ignore).float() if cls_weight is None else torch.where(ignore, 0.0, cls_weight.float())
        return Assignment(
            gt_index=gt_index,
            positive=positive,
            ignore=ignore,
            quality=quality,
            box_weight=box_weight,
            cls_weight=cls_weight,
            matches=matches,
            extras=dict(extras or {}),
        )

    @staticmethod
    def empty(batch_size: int, num_priors: int, device: torch.device | str | None = None) -> Assignment:
        """All priors negative."""
        gi = torch.full((batch_size, num_priors), -1, dtype=torch.long, device=device)
        return Assignment.from_gt_index(gi)

    def replace(self, **changes) -> Assignment:
        return replace(self, **changes)


def select_best_per_prior(batch: Tensor, prior: Tensor, score: Tensor, num_priors: int) -> Tensor:
    """Among match rows, pick one per ``(batch, prior)``: the highest ``score``, and among equal
    scores the first row. Returns a bool keep mask ``(M,)``. Pure tensor ops, no loop.

    Example::

        batch  [0, 0, 0, 1]     prior [5, 5, 7, 5]     score [0.3, 0.9, 0.1, 0.2]
        -> keep [False, True, True, True]
    """
    M = batch.shape[0]
    if M == 0:
        return torch.zeros(0, dtype=torch.bool, device=batch.device)
    key = batch * num_priors + prior
    uniq, inv = torch.unique(key, return_inverse=True)
    best = torch.full((uniq.shape[0],), float("-inf"), dtype=score.dtype, device=score.device)
    best = best.scatter_reduce(0, inv, score, reduce="amax")
    is_best = score >= best[inv]
    rows = torch.arange(M, device=batch.device)
    big = torch.full((uniq.shape[0],), M, dtype=torch.long, device=batch.device)
    first = big.scatter_reduce(0, inv, torch.where(is_best, rows, M), reduce="amin")
    return rows == first[inv]


def dense_from_matches(
    matches: Matches,
    batch_size: int,
    num_priors: int,
    score: Tensor | None = None,
    ignore: Tensor | None = None,
) -> Assignment:
    """Dense view of a sparse match list: each prior takes the match with the highest ``score``
    (default: ``matches.score``); ``weight`` goes to ``quality``, ``box_weight`` and ``cls_weight``.

    The sparse list itself is kept on the result unchanged, so a loss that wants every duplicate
    (YOLOv5's) can still iterate over it.
    """
    device = matches.batch.device
    s = matches.score if score is None else score
    keep = select_best_per_prior(matches.batch, matches.prior, s, num_priors)
    b, p = matches.batch[keep], matches.prior[keep]
    gt_index = torch.full((batch_size, num_priors), -1, dtype=torch.long, device=device)
    gt_index[b, p] = matches.gt[keep]
    w = torch.zeros(batch_size, num_priors, dtype=torch.float32, device=device)
    w[b, p] = matches.weight[keep].float()
    positive = gt_index >= 0
    ign = torch.zeros_like(positive) if ignore is None else ignore & ~positive
    cls_w = torch.where(positive, w, (~ign).float())
    return Assignment(
        gt_index=gt_index,
        positive=positive,
        ignore=ign,
        quality=w.clamp(0, 1),
        box_weight=w,
        cls_weight=cls_w,
        matches=matches,
    )
