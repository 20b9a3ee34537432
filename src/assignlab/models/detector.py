"""The detector: MiniVGG backbone -> FPN -> dense head, plus decoding and NMS post-processing.

``Detector(num_classes, head="anchor" | "free")`` predicts one box per prior of
``assignlab.make_priors(image_size, strides=(8, 16, 32), anchors=model.anchors, offset=0.5)`` (the
anchor head's anchors: one per level by default, or ``A`` per level, YOLOv5 style, with e.g.
``anchors=[[(w, h)] * 3, ...]``), so the assigners, the loss and the decoder all index the same priors.

Decoding (``decode``, differentiable; ``p`` = prior point, ``s`` = its stride)
------------------------------------------------------------------------------
Anchor head, YOLOv5 (Jocher et al., 2020; ``utils/general.py`` / ``models/yolo.py``)::

    center = p + (2 * sigmoid(t_xy) - 1) * s          # within +-1 stride of the prior point
    wh     = (2 * sigmoid(t_wh)) ** 2 * anchor_wh     # 0 .. 4x the anchor
    score  = sigmoid(cls) * sigmoid(obj)

Worked example: prior point (12, 4) at stride 8 with anchor (15, 17) and ``t = 0`` gives center
(12, 4), wh (15, 17), box ``(4.5, -4.5, 19.5, 12.5)``; ``t_x = logit(0.75) = 1.0986`` moves the
center by half a stride to x = 16.

Free head (FCOS / GFL)::

    (l, t, r, b) = softplus(box)  or  DFL expectation over 0..reg_max     # stride units
    box   = (p_x - l s, p_y - t s, p_x + r s, p_y + b s)
    score = sigmoid(cls)

Default anchors (anchor head, one per level)
---------------------------------------------
``DEFAULT_ANCHORS = [[(15, 17)], [(30, 34)], [(60, 68)]]`` pixels at strides 8 / 16 / 32: each is
about 2 strides wide, with the median face aspect w/h = 0.9 of the facemask set, and consecutive
levels are spaced geometrically by x2 in side (x4 in area), like the strides. With YOLOv5's shape
rule (a GT matches an anchor if ``max(w/a_w, a_w/w, h/a_h, a_h/h) < anchor_t = 4``) the levels'
matching windows are ``[a/4, 4a]``: a GT of side g is *best* matched by level l when
``g`` is in ``[a_l / sqrt2, a_l * sqrt2]`` (the boundary between two levels sits at the geometric
midpoint ``sqrt2 * a_l``, about 23 px between P3 and P4 and 45 px between P4 and P5), and the three
windows together cover faces of 4 .. 270 px -- at 320 px input the facemask faces are 4 .. 110 px
(1st..99th percentile), at 640 px 9 .. 220 px. Pass ``anchors=`` (e.g. from k-means) to change them.

Several anchors per location (YOLOv5 style): ``anchors`` with ``A`` ``(w, h)`` per level (the
same ``A`` on every level, as YOLOv5 requires; e.g. ``assignlab anchors --evolve --per-level 3``).
Each location then predicts ``A`` boxes (the head's 1x1 convolutions get ``A`` times the
channels), prior ``level_start + (row * cols + col) * A + a`` being anchor ``a`` of cell ``(row,
col)``; everything downstream (assigners, losses, decoding, NMS, export) works on these priors
unchanged. ``A = 3`` adds ``2 (5 + C) (F + 1)`` parameters per level (``F`` = FPN width) and few
MACs: ``num_classes=1``, 320x320, 312.3 -> 313.3 M (+0.3 %) at ``width=1.0``, 75.7 -> 76.1 M
(+0.5 %) at ``width=0.5``.

Cost
----
Measured with ``torch.utils.flop_counter.FlopCounterMode`` (conv + matmul FLOPs; MACs = FLOPs / 2,
BatchNorm/ReLU/upsample not counted), one image, ``num_classes=1``, default settings (``width=1.0``:
MiniVGG 16-24-48-96-192, FPN 40 channels, 2-conv towers per level)::

    config                     224x224    320x320    640x640    params
    head="anchor"              153.0 M    312.3 M    1249.0 M   1.14 M
      (backbone 105.7 M, FPN 17.5 M, head 29.9 M at 224)
    head="free"                153.0 M    312.2 M    1248.7 M   1.14 M
    head="free", reg_max=16    155.6 M    317.5 M    1270.2 M   1.14 M
    head="anchor", width=0.5    37.1 M     75.7 M     302.8 M   0.27 M

(Regenerate with ``python -c "from assignlab.models.detector import _report; _report()"``.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.ops import batched_nms

from ..core.priors import Priors, make_priors
from .fpn import FPN
from .heads import HEAD_KINDS, DetectionHead, box_distances
from .mini_vgg import MiniVGG, init_weights, scale_channels

__all__ = ["DEFAULT_ANCHORS", "Detector", "HeadOutput", "count_macs"]

# one (w, h) anchor per level, pixels, for strides 8 / 16 / 32 -- see the module docstring
DEFAULT_ANCHORS: list[list[tuple[float, float]]] = [[(15.0, 17.0)], [(30.0, 34.0)], [(60.0, 68.0)]]


@dataclass
class HeadOutput:
    """Raw, flattened head outputs of a batch (``N`` priors in :func:`make_priors` order).

    Attributes:
        cls: ``(B, N, C)`` class logits.
        box: ``(B, N, 4)`` raw regression (``tx, ty, tw, th`` for the anchor head, pre-softplus
            ``l, t, r, b`` for the free head), or ``(B, N, 4 * (reg_max + 1))`` DFL logits (free
            head with ``reg_max > 0``, layout ``view(B, N, 4, reg_max + 1)``).
        obj: ``(B, N)`` objectness logits (anchor head) or ``None``.
        kind: ``"anchor"`` or ``"free"``.
        reg_max: 0 = no DFL.
    """

    cls: Tensor
    box: Tensor
    obj: Tensor | None
    kind: str
    reg_max: int


def _normalize_anchors(anchors: Any, num_levels: int) -> list[list[tuple[float, float]]]:
    """Accept ``[[(w, h), ...], ...]`` (``A`` anchors per level) or ``[(w, h), ...]`` (one per level).

    Returns per level a list of ``A`` ``(w, h)`` float pairs; every level must have the same ``A``
    (YOLOv5's rule: the head predicts ``A`` boxes at every location of every level).
    """
    levels = list(anchors)
    if len(levels) != num_levels:
        raise ValueError(f"anchors must give one list of (w, h) per level ({num_levels} levels), got {len(levels)}")
    out = []
    for li, a in enumerate(levels):
        a = list(a)
        if len(a) == 2 and all(isinstance(v, (int, float)) for v in a):  # bare (w, h)
            a = [a]
        if not a:
            raise ValueError(f"anchors: level {li} has no (w, h) anchor")
        lv = []
        for k, wh in enumerate(a):
            wh = list(wh) if isinstance(wh, (list, tuple)) else [wh]
            if len(wh) != 2:
                raise ValueError(f"anchors: level {li} anchor {k} must be a (w, h) pair, got {wh!r}")
            w, h = (float(v) for v in wh)
            if not (w > 0 and h > 0):
                raise ValueError(f"anchors: level {li} anchor must have positive size, got {(w, h)}")
            lv.append((w, h))
        out.append(lv)
    counts = [len(lv) for lv in out]
    if len(set(counts)) != 1:
        raise ValueError(f"anchors: every level must have the same number of (w, h) anchors (the head predicts "
                         f"that many boxes per location, as in YOLOv5), got {counts} per level")
    return out


class Detector(nn.Module):
    """MiniVGG + FPN + dense head with one prediction per prior.

    Args:
        num_classes: number of classes ``C``.
        head: ``"anchor"`` (YOLOv5-style, objectness) or ``"free"`` (FCOS/GFL-style).
        width: channel multiplier of backbone, FPN and head (1.0 ~ 150 M MACs at 224x224).
        anchors: per level a list of ``A`` ``(w, h)`` anchors in pixels, the same ``A`` on every
            level (anchor head only; default :data:`DEFAULT_ANCHORS`, ``A = 1``); a bare ``(w, h)``
            per level means ``A = 1``. Must be ``None`` for the free head.
        reg_max: DFL bins - 1 for the free head (0 = softplus distances).
        strides: must be ``(8, 16, 32)`` (the backbone's output strides).
        fpn_channels: base FPN / head-tower channels, scaled by ``width``.
        tower_depth: 3x3 convs per level in the head tower.
        fuse: FPN fusion, ``"add"`` or ``"concat"``.
        downsample: backbone downsampling, ``"conv"`` or ``"maxpool"``.
        prior_prob: initial ``cls`` / ``obj`` probability.

    Example::

        >>> model = Detector(num_classes=3)
        >>> out = model(torch.rand(2, 3, 64, 96))
        >>> out.cls.shape, out.box.shape, out.obj.shape      # N = 8*12 + 4*6 + 2*3 = 126
        (torch.Size([2, 126, 3]), torch.Size([2, 126, 4]), torch.Size([2, 126]))
        >>> boxes, scores = model.decode(out, model.priors((64, 96)))
    """

    def __init__(
        self,
        num_classes: int,
        head: str = "anchor",
        width: float = 1.0,
        anchors: list[list[tuple[float, float]]] | None = None,
        reg_max: int = 0,
        strides: Sequence[int] = (8, 16, 32),
        fpn_channels: int = 40,
        tower_depth: int = 2,
        fuse: str = "add",
        downsample: str = "conv",
        prior_prob: float = 0.01,
    ) -> None:
        super().__init__()
        if head not in HEAD_KINDS:
            raise ValueError(f"head must be one of {HEAD_KINDS}, got {head!r}")
        if tuple(int(s) for s in strides) != MiniVGG.strides:
            raise ValueError(f"strides must be {MiniVGG.strides} (the MiniVGG output strides), got {tuple(strides)}")
        if head == "free" and anchors is not None:
            raise ValueError("anchors must be None for head='free' (anchor-free priors)")
        if head == "anchor" and reg_max != 0:
            raise ValueError(f"reg_max must be 0 for head='anchor', got {reg_max}")
        self.num_classes = int(num_classes)
        self.kind = head
        self.width = float(width)
        self.reg_max = int(reg_max)
        self.strides = tuple(int(s) for s in strides)
        self.anchors = (
            _normalize_anchors(DEFAULT_ANCHORS if anchors is None else anchors, len(self.strides))
            if head == "anchor"
            else None
        )
        #: anchors per location (1 for the free head)
        self.num_anchors = len(self.anchors[0]) if self.anchors is not None else 1
        self._extra = {
            "fpn_channels": int(fpn_channels),
            "tower_depth": int(tower_depth),
            "fuse": fuse,
            "downsample": downsample,
            "prior_prob": float(prior_prob),
        }
        self.backbone = MiniVGG(width=width, downsample=downsample)
        c = scale_channels(fpn_channels, width)
        self.neck = FPN(self.backbone.out_channels, c, fuse=fuse)
        init_weights(self.backbone)
        init_weights(self.neck)
        self.head = DetectionHead(
            num_classes, c, num_levels=len(self.strides), kind=head, reg_max=reg_max,
            tower_depth=tower_depth, prior_prob=prior_prob, num_anchors=self.num_anchors,
        )
        init_weights(self.head.towers)
        # NHWC activations and weights: oneDNN's convolutions (forward and backward) run 1.3-1.7x
        # faster in this layout on the CPU (docs/benchmarks.md); the values differ from the
        # NCHW ones only by rounding. Kept by ``.to(device)`` and by checkpoints.
        self.to(memory_format=torch.channels_last)
        # inference metadata, filled by Detector.load (not part of config / state_dict)
        self.names: list[str] = [str(i) for i in range(self.num_classes)]
        self.img_size: int | None = None
        self._priors_cache: dict[tuple[int, int, str, torch.dtype], Priors] = {}

    # ------------------------------------------------------------------ forward / priors
    def forward(self, images: Tensor) -> HeadOutput:
        """``images (B, 3, H, W)`` float -> :class:`HeadOutput` with ``N = A * sum ceil(H/s) ceil(W/s)``."""
        images = images.contiguous(memory_format=torch.channels_last)  # a no-op when already NHWC
        cls, box, obj = self.head(self.neck(self.backbone(images)))
        return HeadOutput(cls=cls, box=box, obj=obj, kind=self.kind, reg_max=self.reg_max)

    def priors(self, image_size: int | tuple[int, int], device: torch.device | str | None = None,
               dtype: torch.dtype = torch.float32) -> Priors:
        """The priors of an input of ``image_size = (H, W)``, cached per (size, device, dtype).

        ``device`` defaults to the model's parameters' device.
        """
        if isinstance(image_size, int):
            image_size = (image_size, image_size)
        h, w = int(image_size[0]), int(image_size[1])
        if device is None:
            device = next(self.parameters()).device
        key = (h, w, str(torch.device(device)), dtype)
        pri = self._priors_cache.get(key)
        if pri is None:
            pri = make_priors(
                (h, w), strides=self.strides, anchors=self.anchors, offset=0.5, device=device, dtype=dtype
            )
            self._priors_cache[key] = pri
        return pri

    # ------------------------------------------------------------------ decode / NMS
    def decode(self, out: HeadOutput, priors: Priors) -> tuple[Tensor, Tensor]:
        """Differentiable decoding -> ``pred_boxes (B, N, 4)`` xyxy px, ``pred_scores (B, N, C)``.

        See the module docstring for the formulas. Scores are probabilities:
        ``sigmoid(cls) * sigmoid(obj)`` (anchor head) or ``sigmoid(cls)`` (free head).
        """
        return decode_output(out, priors)

    @torch.no_grad()
    def postprocess(
        self,
        out: HeadOutput,
        priors: Priors,
        conf: float = 0.001,
        iou: float = 0.6,
        max_det: int = 300,
        max_nms: int = 30000,
        multi_label: bool = True,
    ) -> list[dict[str, Tensor]]:
        """Decode, threshold, class-wise NMS; per image ``{"boxes" (K,4), "scores" (K,), "labels" (K,)}``.

        Boxes are in the (letterboxed) input's pixels, clipped to ``priors.image_size``, sorted by
        decreasing score. See :func:`postprocess_boxes` for the parameters.
        """
        boxes, scores = self.decode(out, priors)
        return postprocess_boxes(
            boxes, scores, image_size=priors.image_size, conf=conf, iou=iou, max_det=max_det,
            max_nms=max_nms, multi_label=multi_label,
        )

    # ------------------------------------------------------------------ config / I/O
    def config(self) -> dict[str, Any]:
        """Constructor kwargs (plain Python types), so ``Detector(**model.config())`` rebuilds it."""
        return {
            "num_classes": self.num_classes,
            "head": self.kind,
            "width": self.width,
            "anchors": [[list(a) for a in lvl] for lvl in self.anchors] if self.anchors is not None else None,
            "reg_max": self.reg_max,
            "strides": list(self.strides),
            **self._extra,
        }

    @classmethod
    def load(cls, path: str, map_location: str | torch.device = "cpu", use_ema: bool = True) -> Detector:
        """Rebuild a model from a checkpoint (see :func:`assignlab.models.predictor.load_detector`)."""
        from .predictor import load_detector

        return load_detector(path, map_location=map_location, use_ema=use_ema)

    def predict(self, images: Any, img_size: int | None = None, conf: float = 0.25, iou: float = 0.5,
                max_det: int = 300) -> list[dict[str, Any]]:
        """Detect on paths / PIL / numpy / tensors (see :func:`assignlab.models.predictor.predict`)."""
        from .predictor import predict

        return predict(self, images, img_size=img_size, conf=conf, iou=iou, max_det=max_det)

    def _apply(self, fn, *args, **kwargs):  # type: ignore[override]
        self._priors_cache = {}  # moving/casting the model invalidates cached priors' device
        return super()._apply(fn, *args, **kwargs)


def decode_output(out: HeadOutput, priors: Priors) -> tuple[Tensor, Tensor]:
    """Functional form of :meth:`Detector.decode` (also used by the ONNX export wrapper)."""
    n = out.cls.shape[1]
    if n != priors.num_priors:
        raise ValueError(f"head output has {n} priors but priors has {priors.num_priors} (wrong image size?)")
    pts = priors.points.to(out.box.dtype)  # (N, 2)
    s = priors.strides.to(out.box.dtype)[:, None]  # (N, 1)
    if out.kind == "anchor":
        if priors.anchors is None:
            raise ValueError("anchor head needs anchor priors")
        if out.obj is None:
            raise ValueError("anchor head output has no objectness")
        anc = priors.anchors.to(out.box.dtype)
        anchor_wh = anc[:, 2:] - anc[:, :2]  # (N, 2)
        t = out.box.sigmoid()
        center = pts + (2.0 * t[..., :2] - 1.0) * s
        wh = (2.0 * t[..., 2:]) ** 2 * anchor_wh
        boxes = torch.cat([center - wh / 2, center + wh / 2], dim=-1)
        scores = out.cls.sigmoid() * out.obj.sigmoid()[..., None]
    elif out.kind == "free":
        d = box_distances(out.box, out.reg_max) * s  # (B, N, 4) px
        boxes = torch.cat([pts - d[..., :2], pts + d[..., 2:]], dim=-1)
        scores = out.cls.sigmoid()
    else:
        raise ValueError(f"unknown head kind {out.kind!r}")
    return boxes, scores


def postprocess_boxes(
    boxes: Tensor,
    scores: Tensor,
    image_size: tuple[int, int] | None = None,
    conf: float = 0.001,
    iou: float = 0.6,
    max_det: int = 300,
    max_nms: int = 30000,
    multi_label: bool = True,
) -> list[dict[str, Tensor]]:
    """Score threshold + class-wise NMS on decoded ``boxes (B, N, 4)``, ``scores (B, N, C)``.

    All images are processed together (no per-image loop): the top ``max_nms`` (prior, class)
    candidates of each image above ``conf`` go through one ``torchvision.ops.batched_nms`` whose
    groups are ``image * C + class``; the survivors are then cut to ``max_det`` per image.

    Args:
        image_size: ``(H, W)`` to clip boxes to, or None.
        conf: keep candidates with score ``> conf``.
        iou: NMS IoU threshold (a box is removed if IoU ``> iou`` with a higher-scoring one).
        max_det: maximum detections per image.
        max_nms: maximum candidates per image entering NMS.
        multi_label: one candidate per (prior, class) above ``conf`` (YOLOv5 eval) if True, else
            only each prior's best class.

    Example: two boxes of the same class with IoU 0.82 and scores 0.9 / 0.8 -> only the 0.9 one
    survives ``iou=0.6``; with different classes both survive.
    """
    b, n, c = scores.shape
    boxes = boxes.detach()
    scores = scores.detach()
    if image_size is not None:
        h, w = image_size
        boxes = torch.stack(
            [boxes[..., 0].clamp(0, w), boxes[..., 1].clamp(0, h), boxes[..., 2].clamp(0, w), boxes[..., 3].clamp(0, h)],
            dim=-1,
        )
    if multi_label:
        flat = scores.reshape(b, n * c)  # index = prior * C + class
    else:
        best, best_cls = scores.max(-1)  # (B, N)
        flat = best
    k = min(int(max_nms), flat.shape[1])
    top_s, top_i = flat.topk(k, dim=1)  # (B, k) sorted
    if multi_label:
        prior_idx, labels = top_i // c, top_i % c
    else:
        prior_idx = top_i
        labels = best_cls.gather(1, top_i)
    img_idx = torch.arange(b, device=scores.device)[:, None].expand(b, k)
    keep = top_s > conf
    cand_boxes = boxes[img_idx, prior_idx][keep]  # (M, 4)
    cand_scores, cand_labels, cand_img = top_s[keep], labels[keep], img_idx[keep]
    kept = batched_nms(cand_boxes, cand_scores, cand_img * c + cand_labels, iou)  # sorted by score
    # per-image cap: stable sort survivors by image, rank within image
    kept_img = cand_img[kept]
    kept_img, order = torch.sort(kept_img, stable=True)
    kept = kept[order]
    counts = torch.bincount(kept_img, minlength=b)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(kept.numel(), device=kept.device) - starts[kept_img]
    sel = rank < max_det
    kept, kept_img = kept[sel], kept_img[sel]
    per_image = torch.bincount(kept_img, minlength=b).tolist()
    res = []
    for ix in torch.split(kept, per_image):
        res.append({"boxes": cand_boxes[ix], "scores": cand_scores[ix], "labels": cand_labels[ix]})
    return res


@torch.no_grad()
def count_macs(model: nn.Module, size: int | tuple[int, int] = 224, batch: int = 1) -> int:
    """Multiply-accumulates of one forward pass on ``batch`` images of ``size`` (``(H, W)`` or int).

    Counted by ``torch.utils.flop_counter.FlopCounterMode`` (convolutions and matmuls), MACs =
    FLOPs / 2. The model is run in eval mode and its training flag restored afterwards.
    """
    from torch.utils.flop_counter import FlopCounterMode

    if isinstance(size, int):
        size = (size, size)
    p = next(model.parameters())
    x = torch.zeros(batch, 3, int(size[0]), int(size[1]), device=p.device, dtype=p.dtype)
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as fc:
            model(x)
    finally:
        model.train(was_training)
    return int(fc.get_total_flops()) // 2


def _report() -> None:  # pragma: no cover - documentation helper
    from torch.utils.flop_counter import FlopCounterMode

    for kw in ({"head": "anchor"}, {"head": "free"}, {"head": "free", "reg_max": 16}, {"width": 0.5}):
        m = Detector(num_classes=1, **kw)
        print(kw, f"{count_macs(m, 224) / 1e6:.1f} M MACs @224,", f"{count_macs(m, 320) / 1e6:.1f} @320,",
              f"{count_macs(m, 640) / 1e6:.1f} @640,", f"{sum(p.numel() for p in m.parameters()) / 1e6:.2f} M params")
    m = Detector(num_classes=1).eval()
    x = torch.zeros(1, 3, 224, 224)
    with FlopCounterMode(display=False) as fc:
        feats = m.backbone(x)
    bb = fc.get_total_flops() // 2
    with FlopCounterMode(display=False) as fc:
        p = m.neck(feats)
    nk = fc.get_total_flops() // 2
    with FlopCounterMode(display=False) as fc:
        m.head(p)
    hd = fc.get_total_flops() // 2
    print(f"backbone {bb / 1e6:.1f} M, FPN {nk / 1e6:.1f} M, head {hd / 1e6:.1f} M")
