"""Assignment statistics against hand-counted values on a 2-image fixture."""

import pytest
import torch

from assignlab import Assignment, GroundTruth, make_priors
from assignlab.analysis.stats import StatsAccumulator, markdown_report, positives_per_gt, size_bucket
from assignlab.core.assignment import Matches


def test_size_bucket_edges():
    boxes = torch.tensor([[0, 0, 7.9, 7.9], [0, 0, 8, 8], [0, 0, 16, 16], [0, 0, 31, 31], [0, 0, 64, 64],
                          [0, 0, 127, 127], [0, 0, 128, 128], [0, 0, 4, 100]])
    # sqrt(4*100) = 20 -> 16-32
    assert size_bucket(boxes).tolist() == [0, 1, 2, 2, 4, 4, 5, 2]


def _fixture():
    # 64x64 image, stride 16 and 32: level 0 has 16 priors, level 1 has 4
    priors = make_priors((64, 64), strides=(16, 32))
    gt = GroundTruth.from_lists(
        boxes=[torch.tensor([[0.0, 0, 10, 10], [16, 16, 56, 56]]), torch.tensor([[40.0, 0, 44, 4]])],
        labels=[torch.tensor([0, 0]), torch.tensor([0])],
    )
    gi = torch.full((2, 20), -1)
    gi[0, 0] = 0  # GT 0 (10 px) -> one positive on level 0
    gi[0, 5] = 1  # GT 1 (40 px) -> three positives: two on level 0, one on level 1
    gi[0, 10] = 1
    gi[0, 16 + 3] = 1
    ign = torch.zeros(2, 20, dtype=torch.bool)
    ign[1, :3] = True  # image 1: its 4 px GT gets nothing, 3 priors ignored
    return priors, gt, Assignment.from_gt_index(gi, ignore=ign)


def test_hand_counted_summary():
    priors, gt, res = _fixture()
    assert positives_per_gt(res, gt).tolist() == [[1, 3], [0, 0]]
    acc = StatsAccumulator(num_levels=2)
    acc.update(priors, gt, res)
    s = acc.summary()
    assert s["images"] == 2 and s["gts"] == 3
    assert s["gts_by_size"] == {"<8": 1, "8-16": 1, "16-32": 0, "32-64": 1, "64-128": 0, ">=128": 0}
    assert s["positives_per_gt"]["<8"] == 0.0
    assert s["positives_per_gt"]["8-16"] == 1.0
    assert s["positives_per_gt"]["32-64"] == 3.0
    assert s["positives_per_gt"]["16-32"] is None
    assert s["positives_per_gt_all"] == pytest.approx(4 / 3)
    assert s["zero_positive_share"]["<8"] == 1.0
    assert s["zero_positive_share_all"] == pytest.approx(1 / 3)
    assert s["positives_by_level"] == [3, 1]
    assert s["positives_by_size_and_level"]["32-64"] == [2, 1]
    assert s["ignored_priors"] == 3
    assert s["ignored_share"] == pytest.approx(3 / 40)
    # prior 0: center (8, 8), 8*16 = 128 px square [-56, -56, 72, 72] vs GT [0, 0, 10, 10]: 100 / 16384
    assert sum(s["positive_iou_hist"]) == 4
    assert s["multi_claimed_cells"] == 0
    md = markdown_report({"a": s, "b": s})
    assert "| positives / GT, 32-64 px (n=1) | 3.00 | 3.00 |" in md


def test_matches_count_duplicates_and_multi_claimed():
    priors, gt, _ = _fixture()
    m = Matches(batch=torch.tensor([0, 0, 0, 0]), prior=torch.tensor([5, 5, 5, 6]), gt=torch.tensor([0, 0, 1, 1]),
                weight=torch.ones(4), center=torch.tensor([True, True, False, True]), score=torch.ones(4))
    gi = torch.full((2, 20), -1)
    gi[0, 5] = 0
    gi[0, 6] = 1
    res = Assignment.from_gt_index(gi, matches=m)
    assert positives_per_gt(res, gt).tolist() == [[2, 2], [0, 0]]  # duplicates count, as the loss sees them
    acc = StatsAccumulator(num_levels=2)
    acc.update(priors, gt, res)
    assert acc.summary()["multi_claimed_cells"] == 1  # prior 5 serves GT 0 and GT 1


def test_plots_and_drawing_are_real_images(tmp_path):
    import matplotlib.image as mpimg

    from assignlab.analysis.draw import draw_assignment, draw_heatmaps
    from assignlab.analysis.plots import plot_inspect

    priors, gt, res = _fixture()
    acc = StatsAccumulator(num_levels=2)
    acc.update(priors, gt, res)
    paths = plot_inspect({"a": acc.summary(), "b": acc.summary()}, tmp_path)
    assert len(paths) == 4
    for p in paths:
        img = mpimg.imread(p)
        assert img.shape[0] == 400 and img.shape[1] == 700  # 7x4 in at 100 dpi
        assert img[..., :3].std() > 0.01  # not blank
    image = torch.rand(3, 64, 64)
    draw_assignment(image, priors, gt, res, b=0, title="t", out=str(tmp_path / "show.png"))
    img = mpimg.imread(tmp_path / "show.png")
    assert img.shape[1] == 840 and img.shape[0] > 300
    scores = torch.zeros(20)
    scores[5] = 1.0
    draw_heatmaps(image, priors, scores, out=str(tmp_path / "heat.png"))
    assert mpimg.imread(tmp_path / "heat.png").shape[1] == 840
