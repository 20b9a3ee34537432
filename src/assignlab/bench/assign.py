"""Assignment speed and memory benchmark.

For every assigner: B images of ``size x size`` (default 16 x 640 x 640: 8400 anchor-free priors at
strides 8/16/32, or the same grid with one anchor per location for anchor-based assigners), G random
GTs per image (sizes log-uniform 4-320 px), and for prediction-aware assigners predicted boxes
jittered around the GTs plus random scores. Reports the median wall time of the batched call, of a
per-image loop over the same assigner, and the peak *extra* memory of one call.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated``; on CPU each measurement runs in a fresh
subprocess and reports the growth of its peak resident set size (``ru_maxrss``) during the call.
"""

from __future__ import annotations

import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

from ..assigners import ASSIGNERS
from ..assigners.base import call_assigner
from ..core import GroundTruth, make_priors

FACE_ANCHORS = [[(16.0, 16.0)], [(48.0, 48.0)], [(144.0, 144.0)]]


def make_inputs(name: str, batch: int, num_gts: int, size: int = 640, num_classes: int = 1, seed: int = 0,
                device: str = "cpu"):
    """Priors, ground truth and predictions for one benchmark point (deterministic)."""
    g = torch.Generator().manual_seed(seed)
    anchored = name in ("yolov5",)
    priors = make_priors((size, size), anchors=FACE_ANCHORS if anchored else None, device=device)
    side = torch.exp(torch.empty(batch, num_gts).uniform_(math.log(4), math.log(320), generator=g))
    aspect = torch.empty(batch, num_gts).uniform_(0.6, 1.6, generator=g)
    w, h = side * aspect.sqrt(), side / aspect.sqrt()
    cx = torch.rand(batch, num_gts, generator=g) * size
    cy = torch.rand(batch, num_gts, generator=g) * size
    boxes = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1).clamp(0, size)
    labels = torch.randint(0, num_classes, (batch, num_gts), generator=g)
    mask = (boxes[..., 2] - boxes[..., 0] > 1) & (boxes[..., 3] - boxes[..., 1] > 1)
    gt = GroundTruth(boxes.to(device), labels.to(device), mask.to(device))
    n = priors.num_priors
    # predictions: each prior predicts a jittered copy of a random GT of its image, or a random box
    pick = torch.randint(0, max(num_gts, 1), (batch, n), generator=g)
    if num_gts:
        base = torch.gather(boxes, 1, pick[..., None].expand(batch, n, 4))
    else:
        base = torch.zeros(batch, n, 4)
    jitter = torch.randn(batch, n, 4, generator=g) * 4
    pts = priors.points.cpu()[None].expand(batch, n, 2)
    rnd = torch.cat([pts - 16, pts + 16], -1)
    use_gt = torch.rand(batch, n, generator=g) < 0.3
    pred_boxes = torch.where(use_gt[..., None], base + jitter, rnd)
    pred_boxes = torch.cat([pred_boxes[..., :2], torch.maximum(pred_boxes[..., 2:], pred_boxes[..., :2] + 1)], -1)
    pred_scores = torch.rand(batch, n, num_classes, generator=g) * 0.9 + 0.05
    preds = {"pred_boxes": pred_boxes.to(device), "pred_scores": pred_scores.to(device)}
    return priors, gt, preds


def _call(assigner, priors, gt, preds):
    return call_assigner(assigner, priors, gt, **preds)


def time_point(name: str, batch: int, num_gts: int, repeats: int = 3, loop: bool = True, device: str = "cpu",
               size: int = 640) -> dict:
    """Median seconds of the batched call (and of a per-image loop), plus peak extra memory."""
    cls = ASSIGNERS[name]
    assigner = cls()
    priors, gt, preds = make_inputs(name, batch, num_gts, size=size, device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        base_mem = torch.cuda.memory_allocated()
    # inputs exist; everything the calls allocate beyond this is the assigner's (peak RSS is monotone,
    # so the baseline must be read before the warm-up call)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    _call(assigner, priors, gt, preds)  # warm-up
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        _call(assigner, priors, gt, preds)
        sync()
        times.append(time.perf_counter() - t0)
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() - base_mem
    else:
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) * 1024
    out = {"assigner": name, "batch": batch, "gts": num_gts, "priors": priors.num_priors, "device": device,
           "median_s": statistics.median(times), "peak_extra_bytes": int(peak)}
    if loop:
        loop_times = []
        for _ in range(max(1, repeats // 2)):
            t0 = time.perf_counter()
            for b in range(batch):
                sub = gt.select_images(slice(b, b + 1))
                p = {k: v[b: b + 1] for k, v in preds.items()}
                _call(assigner, priors, sub, p)
            sync()
            loop_times.append(time.perf_counter() - t0)
        out["loop_median_s"] = statistics.median(loop_times)
        out["speedup"] = out["loop_median_s"] / max(out["median_s"], 1e-12)
    return out


def run_isolated(name: str, batch: int, num_gts: int, repeats: int, loop: bool, device: str) -> dict:
    """Run one point in a fresh interpreter so its peak RSS is its own."""
    code = (
        "import json,sys; from assignlab.bench.assign import time_point; "
        f"print(json.dumps(time_point({name!r}, {batch}, {num_gts}, {repeats}, {loop}, {device!r})))"
    )
    env = dict(os.environ)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        return {"assigner": name, "batch": batch, "gts": num_gts, "error": r.stderr.strip().splitlines()[-1:]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def markdown_table(rows: list[dict]) -> str:
    lines = ["| assigner | GTs/image | priors | batched median (s) | per-image loop (s) | speedup | peak extra memory (MiB) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['assigner']} | {r['gts']} | | error: {r['error']} | | | |")
            continue
        loop = f"{r['loop_median_s']:.3f}" if "loop_median_s" in r else "-"
        sp = f"{r['speedup']:.1f}x" if "speedup" in r else "-"
        lines.append(f"| {r['assigner']} | {r['gts']} | {r['priors']} | {r['median_s']:.3f} | {loop} | {sp} | "
                     f"{r['peak_extra_bytes'] / 2**20:.0f} |")
    return "\n".join(lines)
