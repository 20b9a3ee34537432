"""The WIDER FACE evaluation protocol (easy / medium / hard AP).

Yang et al., "WIDER FACE: A Face Detection Benchmark", CVPR 2016. This reimplements the reference
evaluator (the official MATLAB toolbox, as ported to Python by ``wondervictor/WiderFace-Evaluation``
and to numpy in ``opencv_zoo``) with its quirks, which change the numbers and so must be kept:

* scores are min-max normalised over the *whole* prediction set before thresholding;
* 1000 score thresholds ``t = 1 - (i + 1) / 1000``;
* IoU with the "+1 pixel" convention (``w = x2 - x1 + 1``) on ``x y w h`` boxes;
* a setting (easy / medium / hard) keeps the faces listed in its ``gt_list``; the other faces of an
  image are *ignore* faces: a prediction whose best match (IoU >= 0.5) is an ignore face is dropped
  from the proposals;
* several predictions may match one face; only the first counts toward recall and the others stay
  in the proposals (as false positives);
* predictions of a file are assumed sorted by descending score (the recall at threshold ``t`` is
  read at the *last* prediction scoring ``>= t``);
* AP is the VOC area under the interpolated precision envelope.

Prediction folder layout (WIDER submission format): ``<event>/<image_name>.txt`` holding the image
name, the number of boxes, then ``x y w h score`` lines.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

__all__ = ["read_predictions", "load_ground_truth", "evaluate_widerface", "write_prediction_file"]

SETTINGS = ("easy", "medium", "hard")
THRESH_NUM = 1000


def read_prediction_file(path: Path) -> tuple[str, np.ndarray]:
    """``(image name, (K, 5) [x, y, w, h, score])`` of one submission file."""
    lines = path.read_text().splitlines()
    if len(lines) < 2:
        raise ValueError(f"{path}: a WIDER prediction file needs the image name and a box count")
    name = lines[0].strip().split("/")[-1].removesuffix(".jpg")
    rows = [ln.split() for ln in lines[2:] if ln.strip()]
    for i, r in enumerate(rows):
        if len(r) < 5:
            raise ValueError(f"{path}: line {i + 3} has {len(r)} values, expected 'x y w h score'")
    boxes = np.array([[float(v) for v in r[:5]] for r in rows], dtype=np.float64).reshape(-1, 5)
    return name, boxes


def read_predictions(pred_dir: str | Path) -> dict[str, dict[str, np.ndarray]]:
    """``{event: {image_name: (K, 5)}}`` from a submission folder."""
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise FileNotFoundError(f"prediction folder not found: {pred_dir}")
    out: dict[str, dict[str, np.ndarray]] = {}
    for event in sorted(p for p in pred_dir.iterdir() if p.is_dir()):
        out[event.name] = dict(read_prediction_file(f) for f in sorted(event.glob("*.txt")))
    return out


def load_ground_truth(gt_dir: str | Path) -> dict:
    """The official ``wider_{face,easy,medium,hard}_val.mat`` files as plain Python lists."""
    from scipy.io import loadmat

    gt_dir = Path(gt_dir)
    face = loadmat(gt_dir / "wider_face_val.mat")
    events = [str(e[0][0]) for e in face["event_list"]]
    files = [[str(f[0][0]) for f in fl[0]] for fl in face["file_list"]]
    boxes = [[np.asarray(b[0], dtype=np.float64).reshape(-1, 4) for b in bl[0]] for bl in face["face_bbx_list"]]
    keep = {}
    for s in SETTINGS:
        m = loadmat(gt_dir / f"wider_{s}_val.mat")
        keep[s] = [[np.asarray(k[0], dtype=np.int64).reshape(-1) for k in gl[0]] for gl in m["gt_list"]]
    return {"events": events, "files": files, "boxes": boxes, "keep": keep}


def _iou_plus1(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """``(P, G)`` IoU of xyxy boxes with the +1 pixel convention."""
    iw = np.minimum(pred[:, None, 2], gt[None, :, 2]) - np.maximum(pred[:, None, 0], gt[None, :, 0]) + 1
    ih = np.minimum(pred[:, None, 3], gt[None, :, 3]) - np.maximum(pred[:, None, 1], gt[None, :, 1]) + 1
    inter = np.where((iw > 0) & (ih > 0), iw * ih, 0.0)
    pa = (pred[:, 2] - pred[:, 0] + 1) * (pred[:, 3] - pred[:, 1] + 1)
    ga = (gt[:, 2] - gt[:, 0] + 1) * (gt[:, 3] - gt[:, 1] + 1)
    ua = pa[:, None] + ga[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(inter > 0, inter / ua, 0.0)


def _image_eval(pred: np.ndarray, gt: np.ndarray, kept: np.ndarray, iou_thresh: float):
    """Per prediction (in file order): recall count so far and whether it stays a proposal."""
    p = pred[:, :4].copy()
    p[:, 2:] += p[:, :2]
    g = gt.copy()
    g[:, 2:] += g[:, :2]
    ov = _iou_plus1(p, g)
    best = ov.argmax(axis=1)
    best_ov = ov[np.arange(len(p)), best]
    recall = np.zeros(len(g))
    proposal = np.ones(len(p))
    pred_recall = np.zeros(len(p))
    for h in range(len(p)):  # sequential by definition: "first match counts"
        if best_ov[h] >= iou_thresh:
            j = best[h]
            if not kept[j]:
                recall[j] = -1
                proposal[h] = -1
            elif recall[j] == 0:
                recall[j] = 1
        pred_recall[h] = np.count_nonzero(recall == 1)
    return pred_recall, proposal


def _image_pr(scores: np.ndarray, proposal: np.ndarray, pred_recall: np.ndarray) -> np.ndarray:
    """``(1000, 2)`` [proposals, recalled faces] at each threshold, read at the last prediction
    scoring >= the threshold (vectorised over thresholds)."""
    thresh = 1 - (np.arange(THRESH_NUM) + 1) / THRESH_NUM
    # last index h with scores[h] >= t == last h with suffix-max(scores)[h] >= t (suffix max is non-increasing)
    suffix_max = np.maximum.accumulate(scores[::-1])[::-1]
    count = np.searchsorted(-suffix_max, -thresh, side="right")  # number of h with suffix_max[h] >= t
    out = np.zeros((THRESH_NUM, 2))
    has = count > 0
    last = count[has] - 1
    cum_prop = np.cumsum(proposal == 1)
    out[has, 0] = cum_prop[last]
    out[has, 1] = pred_recall[last]
    return out


def _voc_ap(rec: np.ndarray, prec: np.ndarray) -> float:
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def evaluate_widerface(pred_dir: str | Path, gt_dir: str | Path, iou_thresh: float = 0.5) -> dict[str, float]:
    """Easy / medium / hard AP of a WIDER FACE val submission folder (see module docstring)."""
    preds = read_predictions(pred_dir)
    gt = load_ground_truth(gt_dir)
    # min-max normalisation over the whole set
    all_scores = [v[:, 4] for ev in preds.values() for v in ev.values() if len(v)]
    if not all_scores:
        return {s: 0.0 for s in SETTINGS}
    lo = min(float(s.min()) for s in all_scores)
    hi = max(float(s.max()) for s in all_scores)
    diff = hi - lo
    for ev in preds.values():
        for v in ev.values():
            if len(v):
                v[:, 4] = (v[:, 4] - lo) / diff if diff > 0 else 1.0
    missing = []
    aps = {}
    for s in SETTINGS:
        count_face = 0
        pr = np.zeros((THRESH_NUM, 2))
        for ei, event in enumerate(gt["events"]):
            ev_pred = preds.get(event, {})
            for j, name in enumerate(gt["files"][ei]):
                keep = gt["keep"][s][ei][j]
                count_face += len(keep)
                boxes = gt["boxes"][ei][j]
                pred = ev_pred.get(name)
                if pred is None:
                    if s == "easy":
                        missing.append(f"{event}/{name}")
                    continue
                if len(boxes) == 0 or len(pred) == 0:
                    continue
                kept = np.zeros(len(boxes), dtype=bool)
                if len(keep):
                    kept[keep - 1] = True
                pred_recall, proposal = _image_eval(pred, boxes, kept, iou_thresh)
                pr += _image_pr(pred[:, 4], proposal, pred_recall)
        with np.errstate(divide="ignore", invalid="ignore"):
            precision = pr[:, 1] / pr[:, 0]
        recall = pr[:, 1] / max(count_face, 1)
        aps[s] = _voc_ap(recall, precision)
    if missing:
        aps["num_missing_images"] = float(len(missing))
    return aps


def write_prediction_file(out_dir: str | Path, event: str, image_name: str, boxes_xyxy, scores) -> Path:
    """Write one image's detections in the WIDER submission format (sorted by score, descending)."""
    boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    order = np.argsort(-scores, kind="stable")
    d = Path(out_dir) / event
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{image_name}.txt"
    lines = [image_name, str(len(order))]
    for i in order:
        x1, y1, x2, y2 = boxes[i]
        lines.append(f"{x1:.1f} {y1:.1f} {x2 - x1:.1f} {y2 - y1:.1f} {scores[i]:.5f}")
    path.write_text("\n".join(lines) + "\n")
    return path


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pred", required=True, help="prediction folder (<event>/<image>.txt)")
    p.add_argument("--gt", required=True, help="folder with wider_{face,easy,medium,hard}_val.mat")
    p.add_argument("--iou", type=float, default=0.5, help="IoU threshold (default 0.5)")
    p.add_argument("--json", default=None, help="also write the APs to this JSON file")


def cmd(args: argparse.Namespace) -> int:
    aps = evaluate_widerface(args.pred, args.gt, args.iou)
    print("| setting | AP |\n|---|---|")
    for s in SETTINGS:
        print(f"| {s} | {aps[s]:.4f} |")
    if "num_missing_images" in aps:
        print(f"warning: {int(aps['num_missing_images'])} ground-truth images have no prediction file")
    if args.json:
        Path(args.json).write_text(json.dumps(aps, indent=2))
    return 0
