"""Dense prediction heads, one prediction per prior (one or several anchors per location).

Two kinds share one structure -- per pyramid level a small tower of ``tower_depth`` 3x3
conv-BN-ReLU layers (shared by all branches of that level), then 1x1 prediction convolutions:

``kind="anchor"`` -- YOLO-style (Redmon & Farhadi, "YOLO9000", CVPR 2017; Jocher et al., YOLOv5,
2020): per prior ``obj`` (1 objectness logit), ``cls`` (C class logits) and ``box`` = ``(tx, ty, tw,
th)``, offsets relative to the prior's anchor, decoded by
:meth:`assignlab.models.Detector.decode` with the YOLOv5 formula. With ``num_anchors = A > 1``
(YOLOv5's usual 3 anchors per level) every location predicts ``A`` such sets: the 1x1 convolutions
give ``A * C`` / ``A * 4`` / ``A`` channels, anchor-major (channel ``a * K + k`` is component ``k``
of anchor ``a``, like YOLOv5's ``view(bs, na, no, ny, nx)``).

``kind="free"`` -- FCOS / GFL style (Tian et al., "FCOS", ICCV 2019; Li et al., "Generalized Focal
Loss", NeurIPS 2020): per prior ``cls`` (C class-or-quality logits, no objectness) and the four
distances ``(l, t, r, b)`` from the prior point to the box sides, in stride units. With
``reg_max = 0`` the box branch gives 4 raw values mapped by ``softplus``; with ``reg_max > 0`` it
gives 4 x ``(reg_max + 1)`` logits, a discrete distribution over ``0, 1, ..., reg_max`` per side
(GFL's Distribution Focal Loss representation), decoded as its expectation (:func:`dfl_integral`).
Layout of the DFL logits: ``box.view(B, N, 4, reg_max + 1)`` -- side-major, i.e. all bins of ``l``,
then all bins of ``t``, ``r``, ``b``.

Output flattening (matches :func:`assignlab.make_priors`): each level's map ``(B, A * K, H, W)``
becomes ``(B, H * W * A, K)`` -- row-major (``y`` outer, ``x`` inner), the ``A`` anchors of one
location consecutive -- and the levels are concatenated finest first, so prior
``n = level_start + (row * W + col) * A + a`` of the head is prior ``n`` of
``make_priors(image_size, strides, anchors)``. Example, ``A = 3``, a level of 2 x 2 cells: priors
0, 1, 2 are the three anchors of cell (row 0, col 0), prior 5 is anchor 2 of (0, 1), prior 6 is
anchor 0 of (1, 0).

Initialisation (RetinaNet, Lin et al., ICCV 2017, Sec. 4.1 "Initialization"): prediction
convolutions get weights ~ N(0, 0.01) so the first outputs are ~ their biases, and

* ``cls`` (free head) / ``obj`` (anchor head) bias ``= -log((1 - pi) / pi)`` with
  ``pi = prior_prob = 0.01``: every prior starts predicting probability 0.01, so the loss of the
  ~10^4 background priors does not swamp the first updates. Example: ``pi = 0.01 -> bias = -4.595``.
  With several anchors per location every anchor gets the same biases (YOLOv5's objectness prior
  ``log(8 / (640 / s)^2)`` is per anchor too, not divided by the anchor count).
* ``cls`` of the anchor head (a class probability *given* an object) ``= log(0.6 / (C - 0.99))`` as
  in YOLOv5: 4.09 (p = 0.98) for one class, whose logit a YOLOv5-style loss never trains.
* anchor ``box`` bias 0: ``t = 0`` decodes to the anchor itself, centred on its prior point.
* free ``box`` bias (``reg_max = 0``) ``= softplus^-1(init_distance)`` = ``log(expm1(1.0)) = 0.5413``
  for the default ``init_distance = 1`` stride: the first boxes are ``2 x 2`` stride squares, the
  same size as the default face anchors of the anchor head. DFL logits start at 0 (uniform, mean
  ``reg_max / 2``), as in GFL.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .mini_vgg import ConvBNReLU

__all__ = ["DetectionHead", "box_distances", "dfl_integral", "flatten_levels"]

HEAD_KINDS = ("anchor", "free")


def flatten_levels(maps: Sequence[Tensor], num_anchors: int = 1) -> Tensor:
    """Concatenate per-level maps ``(B, A * K, H_l, W_l)`` into ``(B, sum_l H_l * W_l * A, K)``.

    Row-major, the ``A = num_anchors`` anchors of a location consecutive; channel ``a * K + k`` of
    a map is component ``k`` of anchor ``a``. Example (``A = 1``): maps of shapes ``(2, 5, 4, 4)``
    and ``(2, 5, 2, 2)`` give ``(2, 20, 5)``; entry ``[:, 16 + 1 * 2 + 0]`` is level 1, row 1,
    column 0. With ``A = 3`` and maps ``(2, 15, 4, 4)``: ``(2, 48, 5)``, entry ``[:, (1 * 4 + 2) * 3
    + 1]`` is row 1, column 2, anchor 1, i.e. channels ``5 .. 9`` of the map at ``[..., 1, 2]``.
    """
    if num_anchors == 1:
        return torch.cat([m.flatten(2).transpose(1, 2) for m in maps], dim=1)
    out = []
    for m in maps:
        b, ak, h, w = m.shape
        if ak % num_anchors:
            raise ValueError(f"a map with {ak} channels cannot hold {num_anchors} anchors")
        k = ak // num_anchors
        out.append(m.reshape(b, num_anchors, k, h, w).permute(0, 3, 4, 1, 2).reshape(b, h * w * num_anchors, k))
    return torch.cat(out, dim=1)


def dfl_integral(logits: Tensor, reg_max: int) -> Tensor:
    """Expected distance of a DFL distribution: ``(..., 4 * (reg_max + 1)) -> (..., 4)``.

    ``d = sum_i softmax(logits)_i * i`` for ``i = 0 .. reg_max`` (GFL, Eq. 5), in stride units.
    Example with ``reg_max = 2``: logits ``[0, 0, 0]`` (uniform) give ``1.0``; a one-hot-ish
    ``[-inf, 0, -inf]`` gives ``1.0``; ``[-inf, -inf, 0]`` gives ``2.0``.
    """
    if logits.shape[-1] != 4 * (reg_max + 1):
        raise ValueError(f"expected last dim 4 * (reg_max + 1) = {4 * (reg_max + 1)}, got {logits.shape[-1]}")
    prob = logits.unflatten(-1, (4, reg_max + 1)).softmax(-1)
    bins = torch.arange(reg_max + 1, dtype=prob.dtype, device=prob.device)
    return (prob * bins).sum(-1)


class DetectionHead(nn.Module):
    """Per-level conv tower + 1x1 predictions; returns flattened ``(cls, box, obj)``.

    Args:
        num_classes: number of classes ``C``.
        in_channels: channels of every input level (the FPN width).
        num_levels: number of pyramid levels.
        kind: ``"anchor"`` (obj + cls + tx,ty,tw,th) or ``"free"`` (cls + l,t,r,b [DFL]).
        reg_max: DFL bins - 1 for the free head (0 = plain softplus distances). Must be 0 for
            ``kind="anchor"``.
        num_anchors: anchors per location ``A`` (anchor head; every level the same). Must be 1 for
            ``kind="free"``.
        tower_depth: number of 3x3 conv-BN-ReLU layers per level before the predictions.
        tower_channels: channels of the tower (default ``in_channels``).
        prior_prob: initial probability of ``cls`` and ``obj``.
        init_distance: initial softplus distance (stride units) of the free head with ``reg_max=0``.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        num_levels: int = 3,
        kind: str = "anchor",
        reg_max: int = 0,
        tower_depth: int = 2,
        tower_channels: int | None = None,
        prior_prob: float = 0.01,
        init_distance: float = 1.0,
        num_anchors: int = 1,
    ) -> None:
        super().__init__()
        if kind not in HEAD_KINDS:
            raise ValueError(f"kind must be one of {HEAD_KINDS}, got {kind!r}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if reg_max < 0 or (kind == "anchor" and reg_max != 0):
            raise ValueError(f"reg_max must be 0 for the anchor head and >= 0 for the free head, got {reg_max}")
        if not 0.0 < prior_prob < 1.0:
            raise ValueError(f"prior_prob must be in (0, 1), got {prior_prob}")
        if tower_depth < 0:
            raise ValueError(f"tower_depth must be >= 0, got {tower_depth}")
        if init_distance <= 0:
            raise ValueError(f"init_distance must be > 0, got {init_distance}")
        if num_anchors < 1 or (kind == "free" and num_anchors != 1):
            raise ValueError(f"num_anchors must be 1 for the free head and >= 1 for the anchor head, got {num_anchors}")
        self.kind = kind
        self.num_anchors = int(num_anchors)
        self.num_classes = int(num_classes)
        self.reg_max = int(reg_max)
        tc = int(tower_channels or in_channels)
        box_dim = 4 * (reg_max + 1) if (kind == "free" and reg_max > 0) else 4
        self.box_dim = box_dim

        def tower() -> nn.Sequential:
            chans = [in_channels] + [tc] * tower_depth
            return nn.Sequential(*[ConvBNReLU(chans[i], chans[i + 1], 3) for i in range(tower_depth)])

        c_last = tc if tower_depth > 0 else in_channels
        self.towers = nn.ModuleList(tower() for _ in range(num_levels))
        na = self.num_anchors
        self.cls_preds = nn.ModuleList(nn.Conv2d(c_last, na * num_classes, 1) for _ in range(num_levels))
        self.box_preds = nn.ModuleList(nn.Conv2d(c_last, na * box_dim, 1) for _ in range(num_levels))
        self.obj_preds = (
            nn.ModuleList(nn.Conv2d(c_last, na, 1) for _ in range(num_levels)) if kind == "anchor" else None
        )
        self._init_predictions(prior_prob, init_distance)

    @torch.no_grad()
    def _init_predictions(self, prior_prob: float, init_distance: float) -> None:
        logit = -math.log((1.0 - prior_prob) / prior_prob)
        box_bias = 0.0
        if self.kind == "free" and self.reg_max == 0:
            box_bias = math.log(math.expm1(init_distance))  # softplus^-1
        cls_logit = logit
        if self.obj_preds is not None:
            # objectness carries the prior; the class logits are P(class | object), started as in
            # YOLOv5 (``log(0.6 / (C - 0.99))``: 0.98 for one class, whose logit a YOLOv5-style loss
            # never trains, so that scores = obj * cls are not capped at 0.01)
            cls_logit = math.log(0.6 / (self.num_classes - 0.99))
        groups = [(self.cls_preds, cls_logit), (self.box_preds, box_bias)]
        if self.obj_preds is not None:
            groups.append((self.obj_preds, logit))
        for convs, bias in groups:
            for conv in convs:
                nn.init.normal_(conv.weight, std=0.01)
                nn.init.constant_(conv.bias, bias)

    def forward(self, feats: Sequence[Tensor]) -> tuple[Tensor, Tensor, Tensor | None]:
        """``feats`` finest first -> ``cls (B, N, C)``, ``box (B, N, 4 | 4 (R+1))``, ``obj (B, N) | None``.

        ``N = sum_l H_l * W_l * num_anchors`` in :func:`assignlab.make_priors` order.
        """
        if len(feats) != len(self.towers):
            raise ValueError(f"expected {len(self.towers)} feature maps, got {len(feats)}")
        cls_maps, box_maps, obj_maps = [], [], []
        for i, f in enumerate(feats):
            t = self.towers[i](f)
            cls_maps.append(self.cls_preds[i](t))
            box_maps.append(self.box_preds[i](t))
            if self.obj_preds is not None:
                obj_maps.append(self.obj_preds[i](t))
        na = self.num_anchors
        cls = flatten_levels(cls_maps, na)
        box = flatten_levels(box_maps, na)
        obj = flatten_levels(obj_maps, na).squeeze(-1) if self.obj_preds is not None else None
        return cls, box, obj


def box_distances(box: Tensor, reg_max: int) -> Tensor:
    """Free-head side distances ``(l, t, r, b) >= 0`` in stride units, ``(..., 4)``.

    ``reg_max = 0``: ``softplus(box)`` (``box`` is ``(..., 4)``; e.g. raw ``0 -> 0.6931``,
    ``log(e - 1) = 0.5413 -> 1.0``). ``reg_max > 0``: :func:`dfl_integral` of ``(..., 4 (R+1))`` logits.
    """
    if reg_max > 0:
        return dfl_integral(box, reg_max)
    return F.softplus(box)
