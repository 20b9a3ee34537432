"""End-to-end training on tiny synthetic data: outputs, exact resume after SIGKILL, DDP, faults."""

from __future__ import annotations

import csv
import importlib
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from assignlab.engine.checkpoint import load_checkpoint
from assignlab.engine.cli import add_train_args, cmd_train
from assignlab.engine.config import ConfigError, load_train_config
from assignlab.engine.evaluate import evaluate_checkpoint

# ``assignlab.engine.train`` the attribute is the function; the module is in sys.modules
train_mod = importlib.import_module("assignlab.engine.train")

DATA = {"format": "synthetic", "synthetic": {"num_train": 8, "num_val": 4, "image_size": 64, "max_objects": 8}}
ARGS = ["--assigner", "yolov5", "--loss", "yolov5", "--head", "anchor", "--img", "64", "--batch", "4",
        "--set", "width=0.25", "--set", "warmup_epochs=0.5"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


@pytest.fixture(scope="module")
def data_yaml(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("data") / "syn.yaml"
    p.write_text(yaml.safe_dump(DATA))
    return p


def _cfg(data_yaml: Path, out: Path, **kw):
    ov = {"data": str(data_yaml), "assigner": "yolov5", "loss": "yolov5", "head": "anchor", "img": 64,
          "batch": 4, "width": 0.25, "warmup_epochs": 0.5, "epochs": 2, "out": str(out)}
    ov.update(kw)
    return load_train_config(None, ov)


def _cli(data_yaml: Path, out: Path, epochs: int, *extra: str, fault: str | None = None,
         timeout: float = 150) -> subprocess.CompletedProcess:
    env = dict(ENV)
    env.pop("ASSIGNLAB_FAULT", None)
    if fault:
        env["ASSIGNLAB_FAULT"] = fault
    cmd = [sys.executable, "-m", "assignlab", "train", "--data", str(data_yaml), *ARGS,
           "--epochs", str(epochs), "--out", str(out), *extra]
    return _run(cmd, env, timeout)


def _run(cmd: list[str], env: dict, timeout: float) -> subprocess.CompletedProcess:
    """Run in a new process group; on timeout kill the whole group (torchrun's workers too)."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                         start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        pytest.fail(f"timed out after {timeout} s: {' '.join(cmd)}\n{err[-3000:]}")
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)


def _rows(path: Path) -> list[dict]:
    with open(path) as f:
        return [{k: v for k, v in r.items() if k != "time"} for r in csv.DictReader(f)]


def _assert_same_state(a: Path, b: Path) -> None:
    ca, cb = load_checkpoint(a), load_checkpoint(b)
    assert ca["epoch"] == cb["epoch"] and ca["step"] == cb["step"]
    for key in ("model",):
        for k, v in ca[key].items():
            assert torch.equal(v, cb[key][k]), f"{key}.{k} differs"
    for k, v in ca["ema"]["module"].items():
        assert torch.equal(v, cb["ema"]["module"][k]), f"ema.{k} differs"
    assert ca["ema"]["updates"] == cb["ema"]["updates"]
    sa, sb = ca["optimizer"]["state"], cb["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        assert torch.equal(sa[i]["momentum_buffer"], sb[i]["momentum_buffer"])


def test_tiny_run_outputs(data_yaml, tmp_path):
    out = tmp_path / "run"
    cfg = _cfg(data_yaml, out)
    res = train_mod.train(cfg, progress=False)
    for name in ("last.pt", "best.pt", "results.csv", "config.yaml"):
        assert (out / name).is_file(), name
    assert load_train_config(out / "config.yaml", None) == cfg
    rows = _rows(out / "results.csv")
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert {"train/box", "train/obj", "train/loss", "val/AP", "val/AP50", "lr"} <= set(rows[0])
    ck = load_checkpoint(out / "last.pt")
    assert ck["epoch"] == 2 and ck["step"] == 4 and ck["names"] == ["object"]
    assert ck["model_config"]["head"] == "anchor"
    assert res["history"][-1]["val/AP50"] == pytest.approx(res["metrics"]["AP50"])
    # the checkpoint evaluates to the same numbers as during training (EMA weights)
    m = evaluate_checkpoint(out / "last.pt", batch=4, device="cpu")
    assert m["AP50"] == pytest.approx(res["metrics"]["AP50"])
    assert m["AP"] == pytest.approx(res["metrics"]["AP"])
    # a new run refuses to overwrite it
    with pytest.raises(ConfigError, match="already holds a run.*--resume"):
        train_mod.train(cfg, progress=False)
    # --resume of a finished run trains nothing more and keeps the weights
    before = (out / "last.pt").read_bytes()
    res2 = train_mod.train(_cfg(data_yaml, out, resume=True), progress=False)
    assert res2["step"] == 4 and (out / "last.pt").read_bytes() == before
    # the run's own settings (data included) are used when only --out --resume is given
    res3 = train_mod.train(load_train_config(None, {"out": str(out), "resume": True}), progress=False)
    assert res3["step"] == 4 and (out / "last.pt").read_bytes() == before
    assert load_train_config(out / "config.yaml", None).data == str(data_yaml)


def test_resume_refuses_changed_settings(data_yaml, tmp_path, capsys):
    out = tmp_path / "run"
    train_mod.train(_cfg(data_yaml, out, epochs=1, eval_every=0), progress=False)
    import argparse

    ap = argparse.ArgumentParser()
    add_train_args(ap)
    args = ap.parse_args(["--data", str(data_yaml), *ARGS, "--epochs", "1", "--out", str(out), "--resume",
                          "--lr", "0.5", "--no-progress"])
    assert cmd_train(args) == 2
    err = capsys.readouterr().err
    assert "cannot change settings" in err and "lr: run has 0.01, given 0.5" in err


def test_non_finite_loss_skips_then_stops(data_yaml, tmp_path, monkeypatch):
    real = train_mod.build_loss

    def nan_loss(cfg):
        inner = real(cfg)

        def f(*a):
            total, parts = inner(*a)
            return total * float("nan"), parts
        return f

    monkeypatch.setattr(train_mod, "build_loss", nan_loss)
    monkeypatch.setattr(train_mod, "MAX_BAD_STEPS", 3)
    with warnings.catch_warnings(record=True) as w, pytest.raises(FloatingPointError, match="3 consecutive"):
        warnings.simplefilter("always")
        train_mod.train(_cfg(data_yaml, tmp_path / "nan"), progress=False)
    assert any("non-finite" in str(x.message) and "synthetic://train/" in str(x.message) for x in w)


@pytest.mark.slow
def test_sigkill_and_resume_is_exact(data_yaml, tmp_path):
    """3 epochs x 2 steps. A run is SIGKILLed after step 3 (mid epoch 2), its resumption is
    SIGKILLed half-way through writing its first checkpoint, and a second resumption finishes: the
    result must be bit-identical to an uninterrupted run with the same seed."""
    ref = tmp_path / "ref"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # same float reduction order as the OMP_NUM_THREADS=1 subprocesses
    try:
        train_mod.train(_cfg(data_yaml, ref, epochs=3), progress=False)
    finally:
        torch.set_num_threads(threads)

    run = tmp_path / "killed"
    r = _cli(data_yaml, run, 3, fault="step:3")
    assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
    assert "killing process" in r.stderr
    assert load_checkpoint(run / "last.pt")["epoch"] == 1

    r = _cli(data_yaml, run, 3, "--resume", fault="save.partial:1")
    assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
    assert "resuming" in r.stdout
    assert any(p.name.startswith(".") and p.name.endswith(".tmp") for p in run.iterdir())  # torn temp file
    assert load_checkpoint(run / "last.pt")["epoch"] == 1  # the previous checkpoint is intact

    r = _cli(data_yaml, run, 3, "--resume")
    assert r.returncode == 0, r.stderr[-3000:]
    _assert_same_state(ref / "last.pt", run / "last.pt")
    _assert_same_state(ref / "best.pt", run / "best.pt")
    assert _rows(ref / "results.csv") == _rows(run / "results.csv")
    assert not any(p.name.endswith(".tmp") for p in run.iterdir())


@pytest.mark.slow
def test_ddp_two_processes(data_yaml, tmp_path):
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed not available")
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "assignlab", "train", "--data", str(data_yaml), *ARGS, "--epochs", "1", "--out", str(out),
           "--device", "cpu"]
    r = _run(cmd, ENV, timeout=85)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-3000:])
    ck = load_checkpoint(out / "last.pt")
    assert ck["world_size"] == 2 and ck["step"] == 2  # 8 images, 2 processes x 2 images per step
    assert (out / "results.csv").is_file()
    assert r.stdout.count("epoch 1/1") == 1 and r.stdout.count("done:") == 1  # only rank 0 reports
