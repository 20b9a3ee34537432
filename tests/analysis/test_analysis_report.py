"""``assignlab compare``: a tiny end-to-end comparison (report, results.json, figures, HTML,
reuse of finished runs), config validation, reproduce commands and the seed-spread verdicts."""

from __future__ import annotations

import base64
import json
import math
import re
import shlex
import statistics
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from assignlab.analysis import report as R

REPO = Path(__file__).resolve().parents[2]

TINY = {
    "title": "tiny comparison",
    "data": {"format": "synthetic",
             "synthetic": {"num_train": 8, "num_val": 4, "image_size": 64, "max_objects": 6, "min_size": 6,
                           "seed": 0, "num_classes": 2}},
    "seeds": [0, 1],
    "stats_images": 8,
    "draw_images": 2,
    "draw_conf": 0.05,
    "threads": 1,
    "base": {"img": 64, "epochs": 1, "batch": 4, "width": 0.25, "warmup_epochs": 0.5, "device": "cpu"},
    "runs": [
        {"name": "yolov5", "assigner": "yolov5", "loss": "yolov5", "head": "anchor", "note": "baseline"},
        {"name": "atss-focal", "assigner": "atss", "assigner_opts": {"topk": 5}, "loss": "focal", "head": "free"},
    ],
}


def _quiet(msg: str) -> None:
    pass


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """One tiny comparison (2 runs x 2 seeds, 1 epoch at 64 px), shared by the tests below."""
    import torch

    threads = torch.get_num_threads()
    out = tmp_path_factory.mktemp("compare") / "out"
    cfg = R.load_compare_config({**TINY, "out": str(out)})
    res = R.compare(cfg, log=_quiet)
    assert res["timing"]["threads"] == 1 and torch.get_num_threads() == threads  # set, then restored
    return cfg, res, out


# ---------------------------------------------------------------------------------- outputs
def test_report_results_and_figures(tiny):
    cfg, res, out = tiny
    md = (out / "report.md").read_text()
    assert md.startswith("# tiny comparison")
    for heading in ("## Accuracy", "## Training time", "## Assignment statistics", "## Loss curves",
                    "## Detections", "## Reproduce"):
        assert heading in md
    # the accuracy table: header and one row per run with mean ± spread cells
    assert "| run | AP | AP50 | AP75 | AP_small | AP_medium | AP_large | ΔAP50 | verdict | settings |" in md
    assert re.search(r"\| \*{0,2}yolov5\*{0,2} \| [\d.]+ ± [\d.]+ \|", md)
    assert "cells claimed by > 1 GT" in md and "GTs with 0 positives, all" in md
    # every linked figure exists
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert {"figures/loss_curves.png", "figures/detections.png", "figures/positives_per_gt.png"} <= set(links)
    for link in links:
        assert (out / link).is_file()

    j = json.loads((out / "results.json").read_text())
    assert [x["name"] for x in j["runs"]] == ["yolov5", "atss-focal"]
    assert j["metric"] == "AP50" and j["baseline"] == "yolov5"
    assert j["timing"]["trained"] == 4 and j["timing"]["reused"] == 0 and j["timing"]["wall_seconds"] > 0
    for x in j["runs"]:
        assert [s["seed"] for s in x["seeds"]] == [0, 1]
        for s in x["seeds"]:
            assert set(R.COCO_KEYS) <= set(s["metrics"])
            assert s["command"].startswith("assignlab train ") and f"--seed {s['seed']}" in s["command"]
            assert s["train_seconds"] > 0 and s["images_per_second"] > 0 and s["epochs"] == 1
        st = x["stats"]
        assert st["images"] == 8 and st["gts"] > 0
        assert 0 <= st["zero_positive_share_all"] <= 1 and st["positives_per_gt_all"] > 0
        assert st["multi_claimed_cells"] >= 0
    # YOLOv5's centre + neighbour sampling gives several positives per GT and can claim a cell twice
    y, a = j["runs"]
    assert y["stats"]["positives_per_gt_all"] > 1
    assert a["stats"]["multi_claimed_cells"] == 0  # one-to-one assigner
    assert a["settings"] == {"assigner": "atss", "assigner_opts": {"topk": 5}, "loss": "focal", "head": "free"}


def _png(path: Path) -> np.ndarray:
    import matplotlib.image as mpimg

    img = mpimg.imread(str(path))
    assert img.ndim == 3 and img.shape[2] in (3, 4)
    rgb = img[..., :3]
    assert rgb.std() > 0.02, f"{path.name} looks blank"
    assert len(np.unique((rgb * 255).astype(np.uint8).reshape(-1, 3), axis=0)) > 20
    return img


def test_pngs_are_real_and_sized(tiny):
    cfg, res, out = tiny
    fig = out / "figures"
    assert _png(fig / "loss_curves.png").shape[:2] == (400, 1000)  # 10 x 4 in at 100 dpi
    # detection grid: 2 runs x 2 images, 2.6 x 2.8 in per cell
    assert _png(fig / "detections.png").shape[:2] == (560, 520)
    for name in ("positives_per_gt", "zero_positive_share", "positive_iou", "positives_by_level"):
        assert _png(fig / f"{name}.png").shape[:2] == (400, 700)


def test_reproduce_commands_round_trip(tiny):
    from assignlab.__main__ import build_parser
    from assignlab.engine.cli import train_overrides
    from assignlab.engine.config import load_train_config

    cfg, res, out = tiny
    ap = build_parser(only="train")
    for run, x in zip(cfg.runs, res["runs"]):
        for s in x["seeds"]:
            argv = shlex.split(s["command"])
            assert argv[:2] == ["assignlab", "train"]
            args = ap.parse_args(argv[1:])
            got = load_train_config(args.config, train_overrides(args))
            assert got.to_dict() == cfg.train_config(run, s["seed"]).to_dict()
            # the command trains on the data of the run folder
            assert Path(got.data).read_text() == Path(out / "data.yaml").read_text()


def test_seed_spread_and_verdicts_hand_checked(tiny):
    """The report's mean / spread / verdict recomputed by hand from the per-seed numbers."""
    cfg, res, out = tiny
    j = json.loads((out / "results.json").read_text())
    base = j["runs"][0]
    for x in j["runs"]:
        vals = [s["metrics"]["AP50"] for s in x["seeds"]]
        m, sd = statistics.mean(vals), statistics.stdev(vals)
        assert x["mean"]["AP50"] == pytest.approx(m)
        assert x["spread"]["AP50"] == pytest.approx(sd)
    other = j["runs"][1]
    delta = other["mean"]["AP50"] - base["mean"]["AP50"]
    assert other["delta"] == pytest.approx(delta)
    thr = max(other["spread"]["AP50"], base["spread"]["AP50"])
    expect = "no difference" if abs(delta) < thr else ("better" if delta > 0 else "worse")
    assert other["verdict"] == expect and base["verdict"] == "baseline"
    md = (out / "report.md").read_text()
    row = next(ln for ln in md.splitlines() if ln.startswith("| atss-focal") or ln.startswith("| **atss-focal"))
    assert f"| {expect} |" in row


def test_mean_spread_hand_values():
    m, s = R.mean_spread([0.50, 0.54])
    assert m == pytest.approx(0.52) and s == pytest.approx(math.sqrt(2 * 0.02**2 / 1))  # 0.0283
    assert R.mean_spread([0.3]) == (pytest.approx(0.3), None)
    assert R.mean_spread([]) == (None, None)
    assert R.mean_spread([float("nan"), 0.2, None]) == (pytest.approx(0.2), None)
    m3, s3 = R.mean_spread([1.0, 2.0, 3.0])
    assert m3 == 2.0 and s3 == pytest.approx(1.0)  # sample std, n - 1


def test_verdict_rule_hand_checked():
    # module docstring example: baseline 0.50/0.54 (spread 0.0283); A 0.55/0.57 (spread 0.0141)
    _, sb = R.mean_spread([0.50, 0.54])
    _, sa = R.mean_spread([0.55, 0.57])
    assert R.verdict(0.56 - 0.52, sa, sb) == "better"          # 0.04 >= 0.0283
    assert R.verdict(0.54 - 0.52, 0.0141, sb) == "no difference"  # 0.02 < 0.0283
    assert R.verdict(-0.04, sa, sb) == "worse"
    assert R.verdict(0.02, 0.03, None) == "no difference"      # one spread known: that one
    assert R.verdict(0.02, 0.01, None) == "better"
    assert R.verdict(0.02, None, None) is None                 # single seed: no verdict
    assert R.verdict(None, 0.1, 0.1) is None
    assert R.verdict(0.0283, 0.0283, 0.01) == "better"         # equal to the spread counts


# ---------------------------------------------------------------------------------- reuse, HTML
def test_second_call_reuses_runs_and_html_is_self_contained(tiny, monkeypatch):
    cfg, res, out = tiny
    train_mod = sys.modules["assignlab.engine.train"]

    def boom(*a, **k):
        raise AssertionError("a finished run was retrained")

    monkeypatch.setattr(train_mod, "train", boom)
    before = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/seed*/last.pt")}
    assert len(before) == 4
    res2 = R.compare(cfg, html_report=True, log=_quiet)
    assert res2["timing"]["trained"] == 0 and res2["timing"]["reused"] == 4
    assert all(s["reused"] for x in res2["runs"] for s in x["seeds"])
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/*/seed*/last.pt")} == before
    # same numbers as the first call
    for a, b in zip(res["runs"], res2["runs"]):
        assert [s["metrics"] for s in a["seeds"]] == [s["metrics"] for s in b["seeds"]]

    page = (out / "report.html").read_text()
    assert res2["report"].endswith("report.html")
    assert "<link" not in page and "<script" not in page and "url(" not in page
    srcs = re.findall(r"""src=['"]([^'"]+)['"]""", page)
    assert len(srcs) >= 6 and all(s.startswith("data:image/png;base64,") for s in srcs)
    for s in srcs:
        assert base64.b64decode(s.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<table>" in page and res2["runs"][1]["verdict"] in page
    assert "assignlab train --data" in page


def test_changed_run_config_is_refused_before_training(tiny, monkeypatch):
    cfg, res, out = tiny
    train_mod = sys.modules["assignlab.engine.train"]
    monkeypatch.setattr(train_mod, "train", lambda *a, **k: pytest.fail("trained"))
    changed = json.loads(json.dumps(TINY))
    changed["runs"][1]["lr"] = 0.05
    cfg2 = R.load_compare_config({**changed, "out": str(out)})
    with pytest.raises(R.CompareConfigError, match=r"different configuration.*atss-focal.*\(lr\).*--force"):
        R.compare(cfg2, log=_quiet)
    with pytest.raises(R.CompareConfigError, match="unknown run"):
        R.compare(cfg, only=["nope"], log=_quiet)


def test_run_state(tiny):
    cfg, res, out = tiny
    tc = cfg.train_config(cfg.runs[0], 0)
    assert R.run_state(tc)[0] == "done"
    tc2 = cfg.train_config(cfg.runs[0], 0)
    tc2.epochs = 2
    assert R.run_state(tc2) == ("different", "epochs")
    tc3 = cfg.train_config(cfg.runs[0], 0)
    tc3.out = str(out / "runs" / "none" / "seed0")
    assert R.run_state(tc3) == ("new", "")


# ---------------------------------------------------------------------------------- validation
def _err(raw, match):
    with pytest.raises(R.CompareConfigError, match=match):
        R.load_compare_config(raw)


def test_config_validation_lists_allowed_keys():
    ok = {"runs": [{"name": "a", "assigner": "atss", "loss": "focal"}]}
    R.load_compare_config(ok)
    _err({**ok, "seed": [0]}, r"unknown key 'seed' \(did you mean 'seeds'\?\); allowed keys: title, data, out, "
                              r"seeds, metric, baseline, widerface_gt, stats_images, draw_images, draw_conf, threads, base, runs")
    _err({"runs": [{"name": "a", "assigner": "atss", "lossx": "focal"}]},
         r"runs\[0\] \('a'\): unknown key 'lossx' \(did you mean 'loss'\?\); allowed keys: name, note, .*assigner.*")
    _err({"runs": [{"name": "a", "out": "x"}]}, r"'out' is set by the comparison itself; allowed keys: name, note")
    _err({**ok, "base": {"seed": 3}}, r"base.seed is set by the comparison itself")
    _err({**ok, "base": {"epoch": 3}}, r"base: unknown key 'epoch' \(did you mean 'epochs'\?\); allowed keys: .*epochs")
    _err({"runs": [{"name": "a", "assigner": "atsss"}]}, r"run 'a' \(seed 0\): unknown assigner 'atsss'.*allowed: .*atss")
    _err({"runs": [{"name": "a", "assigner": "atss", "assigner_opts": {"top_k": 9}}]},
         r"unknown assigner option of atss 'top_k'.*allowed: .*topk")
    _err({"runs": [{"name": "a"}, {"name": "a"}]}, "duplicate run name 'a'")
    _err({"runs": [{"assigner": "atss"}]}, "'name' is required")
    _err({"runs": [{"name": "a/b"}]}, "'name' is required")
    _err({"runs": []}, "runs must be a non-empty list")
    _err({}, "'runs' is required")
    _err({**ok, "seeds": [0, 0]}, "duplicates")
    _err({**ok, "seeds": ["x"]}, "seeds must be a non-empty list of integers")
    _err({**ok, "metric": "AP40"}, "metric must be one of AP, AP50, AP75, AP_small, AP_medium, AP_large")
    _err({**ok, "baseline": "b"}, "baseline 'b' is not a run name; runs: a")
    _err({**ok, "widerface_gt": "somewhere"}, "widerface_gt is only used with WIDER FACE data")
    _err({**ok, "draw_images": -1}, "draw_images must be an integer in 0..12")
    _err({**ok, "data": 3}, "data must be null")
    _err({**ok, "threads": 0}, "threads must be an integer >= 1")
    _err({**ok, "data": {"format": "synthetic", "colour": 1}}, "data: .*colour")
    # the model is built once at validation: anchors on the anchor-free head are refused there
    _err({"runs": [{"name": "a", "assigner": "atss", "loss": "focal", "head": "free",
                    "anchors": [[[1, 2]], [[5, 6]], [[7, 8]]]}]}, r"run 'a': model: anchors must be None for head='free'")
    # and the train config refuses different anchor counts per level
    _err({"runs": [{"name": "a", "assigner": "yolov5", "loss": "yolov5", "head": "anchor",
                    "anchors": [[[1, 2], [3, 4]], [[5, 6]], [[7, 8]]]}]}, r"run 'a' \(seed 0\): anchors must have the same number")


def test_opts_merge_base_and_run(tmp_path):
    cfg = R.load_compare_config({
        "out": str(tmp_path), "base": {"loss_opts": {"box_loss": "giou"}, "epochs": 2},
        "runs": [{"name": "a", "assigner": "atss", "loss": "focal", "loss_opts": {"normalize": "target_sum"}}],
    })
    tc = cfg.train_config(cfg.runs[0], 0)
    assert tc.loss_opts == {"box_loss": "giou", "normalize": "target_sum"} and tc.epochs == 2
    assert Path(tc.out) == tmp_path / "runs" / "a" / "seed0" and tc.seed == 0 and tc.data is None


def test_relative_data_path_is_relative_to_the_config_file(tmp_path, monkeypatch):
    d = tmp_path / "cfgs" / "data"
    d.mkdir(parents=True)
    (d / "syn.yaml").write_text("format: synthetic\n")
    c = tmp_path / "cfgs" / "compare"
    c.mkdir()
    (c / "x.yaml").write_text(yaml.safe_dump({"data": "../data/syn.yaml", "runs": [{"name": "a"}]}))
    monkeypatch.chdir(tmp_path)
    cfg = R.load_compare_config(c / "x.yaml", out="o")
    assert cfg.data == str(Path("cfgs/data/syn.yaml")) and cfg.out == "o" and cfg.data_format == "synthetic"
    assert cfg.train_config(cfg.runs[0], 0).data == cfg.data


def test_builtin_config_is_the_shipped_quick_yaml():
    shipped = (REPO / "configs" / "compare" / "quick.yaml").read_text()
    assert yaml.safe_load(shipped) == yaml.safe_load(R.BUILTIN_CONFIG)
    cfg = R.load_compare_config(None)
    assert [r.name for r in cfg.runs] == ["yolov5", "atss-focal", "tal-qfl"]
    assert cfg.base["img"] <= 160 and cfg.data_inline["synthetic"]["num_train"] <= 128


def test_facemask_config_validates_every_run():
    """The issue-#8 face-mask comparison: every (run, seed) TrainConfig and model validate (no training)."""
    path = REPO / "configs" / "compare" / "facemask.yaml"
    cfg = R.load_compare_config(path)
    assert cfg.seeds == [0, 1] and cfg.data_format == "voc"
    assert Path(cfg.data).resolve() == (REPO / "configs" / "data" / "facemask.yaml").resolve()
    names = [r.name for r in cfg.runs]
    for n in ("yolov5", "yolov5-distance", "yolov5-adaptive", "yolov5-ignore0.6", "yolov5-dedup-unique",
              "yolov5-dedup-bestiou", "yolov5-recover", "yolov5-all", "yolov5-anchors-fit", "maxiou-0.5-0.4",
              "maxiou-0.35", "topk", "atss", "hambox", "noisy", "simota", "tal", "tal-focal", "tal-qfl", "tal-vfl"):
        assert n in names
    for r in cfg.runs:
        for s in cfg.seeds:
            tc = cfg.train_config(r, s)
            assert tc.merge_classes and tc.seed == s
    tcs = {r.name: cfg.train_config(r, 0) for r in cfg.runs}
    assert tcs["yolov5-ignore0.6"].assigner_opts == {"ignore_iou": 0.6}
    assert tcs["maxiou-0.35"].assigner_opts == {"pos_iou_thr": 0.35, "neg_iou_thr": 0.35}
    assert tcs["yolov5-all"].assigner_opts["dedup"] == "best_pred_iou"
    assert tcs["yolov5-anchors-fit"].anchors != tcs["yolov5"].anchors
    # the loss rows change only the classification term of YOLOv8's loss on TAL
    assert {tcs[n].loss for n in ("tal", "tal-focal", "tal-qfl", "tal-vfl", "simota")} == {"v8"}
    assert [tcs[n].loss_opts.get("cls_loss") for n in ("tal", "tal-focal", "tal-qfl", "tal-vfl")] == [
        None, "focal", "qfl", "vfl"]
    # the anchor-head assigners share YOLOv5's loss (only the sample selection differs)
    for n in ("yolov5", "maxiou-0.5-0.4", "maxiou-0.35", "topk", "atss", "hambox", "noisy", "yolov5-anchors3"):
        assert tcs[n].loss == "yolov5" and tcs[n].head == "anchor" and not tcs[n].loss_opts, n
    assert tcs["yolov5-focal"].loss_opts == {"fl_gamma": 1.5}
    assert [len(lvl) for lvl in tcs["yolov5-anchors3"].anchors] == [3, 3, 3]


def test_cli_check_and_errors(tmp_path, capsys):
    from assignlab.__main__ import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("runs: [{name: a}]\nepochs: 3\n")
    assert main(["compare", str(bad)]) == 2
    assert "unknown key 'epochs'; allowed keys: title, data" in capsys.readouterr().err
    assert main(["compare", str(REPO / "configs" / "compare" / "facemask.yaml"), "--check",
                 "--out", str(tmp_path / "fm")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "facemask.yaml: 22 run(s) x 2 seed(s), data " in lines[0]
    assert lines[0].endswith(f"(voc), out {tmp_path / 'fm'}")
    assert sum(ln.startswith("[") and "] new: assignlab train " in ln for ln in lines) == 44


# ---------------------------------------------------------------------------------- WIDER FACE
def _cell(items):
    a = np.empty((len(items), 1), dtype=object)
    for i, x in enumerate(items):
        a[i, 0] = x
    return a


def _wider_fixture(root: Path) -> tuple[Path, Path]:
    """A 4-image WIDER FACE set (RetinaFace label.txt layout, 2 train / 2 val images of one event)
    and the official-format ``.mat`` ground truth of its val split."""
    import scipy.io as sio
    from PIL import Image

    rng = np.random.default_rng(0)
    faces = {"train": {"t1": [[8, 8, 20, 24]], "t2": [[30, 20, 16, 16], [4, 40, 12, 14]]},
             "val": {"a": [[10, 10, 20, 24]], "b": [[5, 5, 16, 16], [30, 30, 20, 20]]}}
    for split, imgs in faces.items():
        lines = []
        for name, fs in imgs.items():
            arr = (rng.random((64, 64, 3)) * 60).astype(np.uint8)
            for x, y, w, h in fs:
                arr[y:y + h, x:x + w] = 230
            p = root / split / "images" / "0--Parade" / f"{name}.jpg"
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(p)
            lines.append(f"# 0--Parade/{name}.jpg")
            lines += [" ".join(map(str, f)) for f in fs]
        (root / split / "label.txt").write_text("\n".join(lines) + "\n")
    data = root / "wider.yaml"
    data.write_text("format: widerface\npath: .\ntrain: train/label.txt\nval: val/label.txt\n")
    gt = root / "gt"
    gt.mkdir()
    files = [list(faces["val"])]
    boxes = [[np.array(fs, dtype=float) for fs in faces["val"].values()]]
    sio.savemat(gt / "wider_face_val.mat", {"event_list": _cell(["0--Parade"]),
                                            "file_list": _cell([_cell(f) for f in files]),
                                            "face_bbx_list": _cell([_cell(b) for b in boxes])})
    for s in R.WIDER_KEYS:  # easy keeps only the first face of each image, medium / hard all
        keep = [_cell([np.arange(1, (1 if s == "easy" else len(b)) + 1).reshape(-1, 1) for b in bl]) for bl in boxes]
        sio.savemat(gt / f"wider_{s}_val.mat", {"gt_list": _cell(keep)})
    return data, gt


def test_widerface_data_gets_easy_medium_hard(tmp_path):
    from assignlab.engine.widerface_eval import evaluate_widerface

    data, gt = _wider_fixture(tmp_path / "wider")
    cfg_path = tmp_path / "wider.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "data": "wider/wider.yaml", "widerface_gt": "wider/gt", "seeds": [0], "stats_images": 2, "draw_images": 1,
        "base": {"img": 64, "epochs": 1, "batch": 2, "width": 0.25, "device": "cpu"},
        "runs": [{"name": "atss", "assigner": "atss", "loss": "focal", "head": "free"}],
    }))
    cfg = R.load_compare_config(cfg_path, out=str(tmp_path / "out"))
    assert cfg.data_format == "widerface" and cfg.primary == "hard"
    assert cfg.metric_keys == ("easy", "medium", "hard", "AP50")
    res = R.compare(cfg, log=_quiet)
    run_dir = tmp_path / "out" / "runs" / "atss" / "seed0"
    preds = sorted(p.name for p in (run_dir / "widerface_pred" / "0--Parade").glob("*.txt"))
    assert preds == ["a.txt", "b.txt"]  # one submission file per val image, even without detections
    m = res["runs"][0]["seeds"][0]["metrics"]
    assert m == {**m, **evaluate_widerface(run_dir / "widerface_pred", gt)}
    for s in R.WIDER_KEYS:
        assert 0.0 <= m[s] <= 1.0
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| run | easy | medium | hard | AP50 | Δhard | verdict | settings |" in md
    # refused: WIDER ground truth folder without the .mat files
    (tmp_path / "empty").mkdir()
    bad = yaml.safe_load(cfg_path.read_text())
    bad["widerface_gt"] = str(tmp_path / "empty")
    with pytest.raises(R.CompareConfigError, match="missing wider_face_val.mat, wider_easy_val.mat"):
        R.load_compare_config(bad | {"data": str(data)})


def test_unfinished_run_is_resumed(tiny, tmp_path, monkeypatch):
    """A run folder whose last.pt has fewer epochs than asked (an interrupted session) is resumed."""
    import shutil

    from assignlab.engine.checkpoint import load_checkpoint, save_checkpoint

    cfg, res, out = tiny
    one = {**TINY, "seeds": [0], "runs": TINY["runs"][:1], "draw_images": 0, "out": str(tmp_path / "o")}
    cfg1 = R.load_compare_config(one)
    src = out / "runs" / "yolov5" / "seed0"
    dst = tmp_path / "o" / "runs" / "yolov5" / "seed0"
    shutil.copytree(src, dst)
    ck = load_checkpoint(dst / "last.pt")
    ck["config"]["out"] = str(dst)
    ck["epoch"] = 0  # as if killed before the end of the first epoch
    save_checkpoint(dst / "last.pt", ck)
    assert R.run_state(cfg1.train_config(cfg1.runs[0], 0)) == ("partial", "0/1 epochs")
    calls = []
    monkeypatch.setattr(sys.modules["assignlab.engine.train"], "train",
                        lambda tc, progress=None: calls.append((tc.resume, tc.out)))
    logs: list[str] = []
    r = R.compare(cfg1, log=logs.append)
    assert calls == [(True, str(dst))]
    assert any("resuming" in m and "0/1 epochs" in m for m in logs)
    assert r["timing"]["trained"] == 1 and not r["runs"][0]["seeds"][0]["reused"]
    assert "--resume" not in r["runs"][0]["seeds"][0]["command"]
