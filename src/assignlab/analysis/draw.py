"""Pictures of assignment: one image's positives per level (``show``) and score maps (``heatmap``).

``draw_assignment`` draws, for each level, the image with its GT boxes and the positive cells of
that level coloured by which GT they serve, their weight as the fill opacity, the cell that holds the
GT centre with a solid edge and neighbour cells with a dashed edge, and ignored cells hatched. This
is the picture people draw by hand to understand YOLOv5's centre + neighbour sampling.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from torch import Tensor  # noqa: E402

from ..core import Assignment, GroundTruth, Priors  # noqa: E402

__all__ = ["draw_assignment", "draw_heatmaps", "gt_colors"]


def gt_colors(n: int) -> np.ndarray:
    """``(n, 4)`` distinct RGBA colours (tab20 cycled)."""
    cmap = plt.get_cmap("tab20")
    return np.array([cmap(i % 20) for i in range(max(n, 1))])


def _image_np(image: Tensor) -> np.ndarray:
    img = image.detach().float().cpu()
    if img.dim() == 3 and img.shape[0] in (1, 3):
        img = img.permute(1, 2, 0)
    img = img.numpy()
    if img.max() > 1.5:
        img = img / 255.0
    return np.clip(img, 0, 1)


def _cell_rects(priors: Priors, idx: Tensor) -> np.ndarray:
    """``(k, 4)`` [x0, y0, w, h] of the grid cells of the given priors."""
    s = priors.strides[idx]
    xy = priors.grid_xy[idx].to(s.dtype) * s[:, None]
    return torch.cat([xy, s[:, None], s[:, None]], 1).cpu().numpy()


def _center_flags(priors: Priors, gt_boxes: Tensor, idx: Tensor, gidx: Tensor) -> Tensor:
    """True where the prior's cell contains the centre of its GT."""
    c = (gt_boxes[gidx, :2] + gt_boxes[gidx, 2:]) / 2
    cell = torch.floor(c / priors.strides[idx][:, None]).long()
    return (cell == priors.grid_xy[idx]).all(1)


def draw_assignment(image: Tensor, priors: Priors, gt: GroundTruth, res: Assignment, b: int = 0,
                    title: str = "", out: str | None = None, dpi: int = 100):
    """Draw image ``b`` of a batch with its assignment, one panel per level. Returns the figure
    (and saves it to ``out`` when given)."""
    img = _image_np(image)
    H, W = img.shape[:2]
    nl = len(priors.num_level_priors)
    fig, axes = plt.subplots(1, nl, figsize=(4.2 * nl, 4.2 * H / max(W, 1) + 0.6), squeeze=False)
    boxes = gt.boxes[b].detach().cpu()
    valid = gt.mask[b].cpu()
    colors = gt_colors(gt.max_boxes)
    weight = torch.maximum(res.box_weight[b], res.quality[b]).detach().cpu()
    # positives: from the sparse matches (every GT a cell serves) or the dense view
    if res.matches is not None and len(res.matches):
        m = res.matches
        sel = (m.batch == b).cpu()
        pidx, gidx = m.prior.cpu()[sel], m.gt.cpu()[sel]
        w = m.weight.detach().cpu()[sel].float()
        center = m.center.cpu()[sel]
    else:
        pidx = res.positive[b].nonzero(as_tuple=True)[0].cpu()
        gidx = res.gt_index[b].cpu()[pidx]
        w = weight[pidx]
        center = _center_flags(priors.to("cpu"), boxes, pidx, gidx) if len(pidx) else torch.zeros(0, dtype=torch.bool)
    ign = res.ignore[b].nonzero(as_tuple=True)[0].cpu()
    pri = priors.to("cpu")
    for li, ax in enumerate(axes[0]):
        ax.imshow(img, extent=(0, W, H, 0))
        s = pri.level_strides[li]
        ax.set_title(f"level {li} (stride {s:g})", fontsize=9)
        on_level = pri.levels[pidx] == li
        rects = _cell_rects(pri, pidx[on_level])
        for (x, y, cw, ch), g, ww, c in zip(rects, gidx[on_level].tolist(), w[on_level].tolist(),
                                             center[on_level].tolist()):
            col = colors[g]
            ax.add_patch(Rectangle((x, y), cw, ch, facecolor=(*col[:3], 0.15 + 0.6 * min(max(ww, 0), 1)),
                                   edgecolor=col, lw=1.6 if c else 1.0, ls="-" if c else "--"))
        ign_l = ign[pri.levels[ign] == li]
        for x, y, cw, ch in _cell_rects(pri, ign_l):
            ax.add_patch(Rectangle((x, y), cw, ch, fill=False, hatch="///", edgecolor=(0.5, 0.5, 0.5, 0.8), lw=0.3))
        for g in valid.nonzero(as_tuple=True)[0].tolist():
            x1, y1, x2, y2 = boxes[g].tolist()
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=colors[g], lw=1.2))
        n_pos = int(on_level.sum())
        ax.set_xlabel(f"{n_pos} positives, {len(ign_l)} ignored", fontsize=8)
        ax.set_xlim(0, W)
        ax.set_ylim(H, 0)
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title + "   (solid edge: centre cell, dashed: neighbour; opacity: weight; hatched: ignored)",
                     fontsize=9)
    fig.tight_layout()
    if out:
        fig.savefig(out, dpi=dpi)
        plt.close(fig)
    return fig


def draw_heatmaps(image: Tensor, priors: Priors, scores: Tensor, out: str | None = None, title: str = "",
                  dpi: int = 100):
    """Overlay per-level score maps (``scores`` ``(N,)`` in [0, 1], e.g. objectness x best class
    probability, in prior order) on the image, one panel per level (max over a location's anchors)."""
    img = _image_np(image)
    H, W = img.shape[:2]
    nl = len(priors.num_level_priors)
    fig, axes = plt.subplots(1, nl, figsize=(4.2 * nl, 4.2 * H / max(W, 1) + 0.6), squeeze=False)
    scores = scores.detach().float().cpu()
    for li, (ax, sl) in enumerate(zip(axes[0], priors.level_slices())):
        rows, cols = priors.level_shapes[li]
        na = priors.num_anchors[li]
        m = scores[sl].view(rows, cols, na).amax(-1).numpy()
        ax.imshow(img, extent=(0, W, H, 0))
        s = priors.level_strides[li]
        im = ax.imshow(m, extent=(0, cols * s, rows * s, 0), cmap="inferno", alpha=0.55, vmin=0, vmax=1)
        ax.set_title(f"level {li} (stride {s:g}), max {m.max():.2f}", fontsize=9)
        ax.set_xlim(0, W)
        ax.set_ylim(H, 0)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=list(axes[0]), fraction=0.02)
    if title:
        fig.suptitle(title, fontsize=9)
    if out:
        fig.savefig(out, dpi=dpi)
        plt.close(fig)
    return fig
