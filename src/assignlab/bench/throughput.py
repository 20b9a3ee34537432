"""Training and inference throughput, and the share of a training step spent in assignment + loss.

One training step is timed in four parts: forward, decode + assignment, loss, backward + optimizer
step. Inputs are random images with ``gts`` random boxes each (default 100, the crowded-face case),
so the numbers do not depend on a dataset. Inference is forward + decode + NMS in ``eval`` mode.
"""

from __future__ import annotations

import statistics
import time

import torch

from ..assigners import ASSIGNERS
from ..assigners.base import call_assigner
from ..core import GroundTruth


def _random_gt(batch: int, gts: int, size: int, g: torch.Generator) -> GroundTruth:
    side = torch.exp(torch.empty(batch, gts).uniform_(1.5, 4.5, generator=g))  # ~4.5 to 90 px
    c = torch.rand(batch, gts, 2, generator=g) * size
    boxes = torch.cat([c - side[..., None] / 2, c + side[..., None] / 2], -1).clamp(0, size)
    mask = ((boxes[..., 2:] - boxes[..., :2]) > 1).all(-1)
    return GroundTruth(boxes, torch.zeros(batch, gts, dtype=torch.long), mask)


def bench_train_step(assigner: str, loss: str, head: str, reg_max: int = 0, width: float = 1.0, img: int = 320,
                     batch: int = 16, gts: int = 100, steps: int = 5, warmup: int = 1, seed: int = 0) -> dict:
    """Median seconds per training step and per part (forward / assign / loss / backward)."""
    from ..engine.config import TrainConfig
    from ..engine.train import build_assigner, build_loss, build_model

    cfg = TrainConfig(assigner=assigner, loss=loss, head=head, reg_max=reg_max, width=width, img=img, batch=batch)
    torch.manual_seed(seed)
    model = build_model(cfg, 1)
    model.train()
    asg = build_assigner(cfg)
    loss_fn = build_loss(cfg)
    if callable(getattr(loss_fn, "train", None)):
        loss_fn.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, img, img, generator=g)
    gt = _random_gt(batch, gts, img, g)
    parts: dict[str, list[float]] = {"forward": [], "assign": [], "loss": [], "backward": [], "step": []}
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        raw = model(images)
        t1 = time.perf_counter()
        priors = model.priors((img, img))
        pb, ps = model.decode(raw, priors)
        res = call_assigner(asg, priors, gt, pb, ps)
        t2 = time.perf_counter()
        total, _ = loss_fn(raw, pb, priors, gt, res)
        t3 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        t4 = time.perf_counter()
        if i >= warmup:
            for k, v in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0)):
                parts[k].append(v)
    med = {k: statistics.median(v) for k, v in parts.items()}
    return {
        "assigner": assigner, "loss": loss, "head": head, "img": img, "batch": batch, "gts": gts,
        **{f"{k}_s": v for k, v in med.items()},
        "train_images_per_s": batch / med["step"],
        "assign_loss_share": (med["assign"] + med["loss"]) / med["step"],
    }


@torch.no_grad()
def bench_inference(head: str = "anchor", reg_max: int = 0, width: float = 1.0, img: int = 320, batch: int = 16,
                    steps: int = 5, seed: int = 0) -> dict:
    """Images per second of forward + decode + NMS."""
    from ..models import Detector

    torch.manual_seed(seed)
    model = Detector(num_classes=1, head=head, width=width, reg_max=reg_max).eval()
    images = torch.rand(batch, 3, img, img)
    priors = model.priors((img, img))
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        out = model(images)
        model.postprocess(out, priors, conf=0.001, iou=0.6)
        if i:
            times.append(time.perf_counter() - t0)
    return {"head": head, "img": img, "batch": batch, "infer_images_per_s": batch / statistics.median(times)}


DEFAULT_PAIRS = (
    ("yolov5", "yolov5", "anchor", 0),
    ("maxiou", "focal", "free", 0),
    ("topk", "focal", "free", 0),
    ("atss", "focal", "free", 0),
    ("fcos", "focal", "free", 0),
    ("hambox", "focal", "free", 0),
    ("noisy", "focal", "free", 0),
    ("simota", "bce", "anchor", 0),
    ("tal", "v8", "free", 15),
    ("dsl", "qfl", "free", 0),
    ("centernet", "focal", "free", 0),
)


def markdown_table(rows: list[dict]) -> str:
    lines = ["| assigner | loss | head | step (s) | forward | assign | loss | backward+step | train img/s | "
             "assign+loss share |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['assigner']} | {r['loss']} | {r['head']} | error: {r['error']} |||||||")
            continue
        lines.append(f"| {r['assigner']} | {r['loss']} | {r['head']} | {r['step_s']:.3f} | {r['forward_s']:.3f} | "
                     f"{r['assign_s']:.3f} | {r['loss_s']:.3f} | {r['backward_s']:.3f} | "
                     f"{r['train_images_per_s']:.1f} | {100 * r['assign_loss_share']:.1f}% |")
    return "\n".join(lines)


def available_pairs() -> list[tuple[str, str, str, int]]:
    return [p for p in DEFAULT_PAIRS if p[0] in ASSIGNERS]
