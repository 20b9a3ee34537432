"""Matplotlib figures for the ``inspect`` statistics (side by side per assigner)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .stats import IOU_EDGES, SIZE_NAMES  # noqa: E402

__all__ = ["plot_inspect"]


def _bars(ax, summaries: dict[str, dict], key: str, ylabel: str) -> None:
    names = list(summaries)
    x = np.arange(len(SIZE_NAMES))
    w = 0.8 / max(len(names), 1)
    for i, n in enumerate(names):
        vals = [summaries[n][key][b] for b in SIZE_NAMES]
        ax.bar(x + i * w - 0.4 + w / 2, [v if v is not None else 0 for v in vals], w, label=n)
    ax.set_xticks(x, [f"{b}\n(n={next(iter(summaries.values()))['gts_by_size'][b]})" for b in SIZE_NAMES], fontsize=8)
    ax.set_xlabel("GT size sqrt(area), px")
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)


def plot_inspect(summaries: dict[str, dict], out_dir: str | Path, dpi: int = 100) -> list[Path]:
    """Write ``positives_per_gt.png``, ``zero_positive_share.png``, ``positive_iou.png`` and
    ``positives_by_level.png`` into ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []

    fig, ax = plt.subplots(figsize=(7, 4))
    _bars(ax, summaries, "positives_per_gt", "positives per GT")
    ax.legend(fontsize=8)
    ax.set_title("Positives per GT by size")
    fig.tight_layout()
    paths.append(out_dir / "positives_per_gt.png")
    fig.savefig(paths[-1], dpi=dpi)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    _bars(ax, summaries, "zero_positive_share", "share of GTs with no positive")
    ax.legend(fontsize=8)
    ax.set_title("GTs that get no positive at all")
    fig.tight_layout()
    paths.append(out_dir / "zero_positive_share.png")
    fig.savefig(paths[-1], dpi=dpi)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    centers = (np.array(IOU_EDGES[:-1]) + np.array(IOU_EDGES[1:])) / 2
    for n, s in summaries.items():
        h = np.asarray(s["positive_iou_hist"], dtype=float)
        ax.plot(centers, h / max(h.sum(), 1), marker="o", label=n)
    ax.set_xlabel("IoU(prior box, assigned GT)")
    ax.set_ylabel("share of positives")
    ax.set_title("Quality of positives")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    paths.append(out_dir / "positive_iou.png")
    fig.savefig(paths[-1], dpi=dpi)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    names = list(summaries)
    nl = len(next(iter(summaries.values()))["positives_by_level"]) if summaries else 0
    x = np.arange(nl)
    w = 0.8 / max(len(names), 1)
    for i, n in enumerate(names):
        ax.bar(x + i * w - 0.4 + w / 2, summaries[n]["positives_by_level"], w, label=n)
    ax.set_xticks(x, [f"level {i}" for i in range(nl)])
    ax.set_ylabel("positives")
    ax.set_title("Positives per level")
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(out_dir / "positives_by_level.png")
    fig.savefig(paths[-1], dpi=dpi)
    plt.close(fig)
    return paths
