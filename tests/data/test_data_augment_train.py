"""The augmentation keys of TrainConfig (validation, --set parsing) and a tiny training run with
mosaic + close_mosaic + HSV + cache that is interrupted mid-epoch and resumed exactly."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch
import yaml

import assignlab.data as data_mod
from assignlab.engine.checkpoint import load_checkpoint
from assignlab.engine.config import ConfigError, TrainConfig, load_train_config, parse_kv

train_mod = importlib.import_module("assignlab.engine.train")

DATA = {"format": "synthetic", "synthetic": {"num_train": 8, "num_val": 4, "image_size": [64, 48], "max_objects": 8}}
AUG = {"mosaic": 1.0, "close_mosaic": 1, "hsv": [0.015, 0.7, 0.4], "cache": True}


def test_config_defaults_and_set_parsing():
    c = TrainConfig()
    assert (c.mosaic, c.close_mosaic, c.hsv, c.cache, c.cache_max_mb) == (0.0, 0, None, False, 4096.0)
    c = load_train_config(None, parse_kv(["mosaic=1.0", "close_mosaic=10", "hsv=[0.015, 0.7, 0.4]", "cache=true"]))
    assert (c.mosaic, c.close_mosaic, c.hsv, c.cache) == (1.0, 10, [0.015, 0.7, 0.4], "ram")
    assert load_train_config(None, parse_kv(["cache=resize", "cache_max_mb=100"])).cache == "resize"
    assert load_train_config(None, parse_kv(["cache=false", "hsv=null"])).cache is False
    # the saved config (YAML) loads back to the same values
    assert load_train_config(None, yaml.safe_load(yaml.safe_dump(c.to_dict()))) == c


@pytest.mark.parametrize(
    "item, message",
    [
        ("mosaic=1.5", r"mosaic must be <= 1.0, got 1.5"),
        ("mosaic=-0.1", r"mosaic must be >= 0.0"),
        ("mosaic=yes", r"mosaic must be a finite number"),
        ("close_mosaic=2.5", r"close_mosaic must be an integer"),
        ("close_mosaic=-1", r"close_mosaic must be >= 0"),
        ("hsv=[0.1, 0.2]", r"hsv must be null or a list of three gains \[h, s, v\]"),
        ("hsv=[0.1, 0.2, 1.5]", r"hsv\[2\] \(v\) must be <= 1.0"),
        ("hsv=0.5", r"hsv must be null or a list"),
        ("cache=disk", r"cache must be one of false, true \(= ram\), ram, resize; got 'disk'"),
        ("cache_max_mb=0", r"cache_max_mb must be > 0.0"),
        ("mosiac=1", r"unknown config key 'mosiac' \(did you mean 'mosaic'\?\); allowed: .*close_mosaic.*hsv"),
    ],
)
def test_config_errors_name_the_key(item, message):
    with pytest.raises(ConfigError, match=message):
        load_train_config(None, parse_kv([item]))


def _cfg(data_yaml: Path, out: Path, **kw):
    ov = {"data": str(data_yaml), "assigner": "atss", "loss": "focal", "head": "free", "img": 64, "batch": 4,
          "width": 0.25, "warmup_epochs": 0.5, "epochs": 3, "out": str(out), **AUG}
    ov.update(kw)
    return load_train_config(None, ov)


class _Stop(Exception):
    pass


def test_train_passes_options_and_resumes_exactly(tmp_path, monkeypatch):
    data_yaml = tmp_path / "syn.yaml"
    data_yaml.write_text(yaml.safe_dump(DATA))
    seen: list[tuple[str, bool, dict]] = []
    real_build = data_mod.build_dataset

    def spy(cfg, split, img_size, train, **kw):
        seen.append((split, train, dict(kw)))
        return real_build(cfg, split, img_size, train, **kw)

    monkeypatch.setattr(data_mod, "build_dataset", spy)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ref = train_mod.train(_cfg(data_yaml, tmp_path / "ref"), progress=False)
        # the training split gets the augmentation, mosaic closed from epoch index 3 - 1 = 2 on;
        # both splits get the cache
        tr = next(kw for split, train, kw in seen if train)
        va = next(kw for split, train, kw in seen if not train)
        assert tr["mosaic"] == 1.0 and tr["mosaic_close_epoch"] == 2 and tr["hsv"] == (0.015, 0.7, 0.4)
        assert tr["cache"] == "ram" and va["cache"] == "ram" and "mosaic" not in va and "hsv" not in va
        assert ref["epochs"] == 3

        # a run that dies after its 3rd step (in epoch 2 of 3, 2 steps per epoch), then resumes
        calls = {"step": 0}

        def fault(point: str) -> None:
            if point == "step":
                calls["step"] += 1
                if calls["step"] == 3:
                    raise _Stop

        monkeypatch.setattr(train_mod, "fault_point", fault)
        run = tmp_path / "run"
        with pytest.raises(_Stop):
            train_mod.train(_cfg(data_yaml, run), progress=False)
        assert load_checkpoint(run / "last.pt")["epoch"] == 1
        train_mod.train(_cfg(data_yaml, run, resume=True), progress=False)
    finally:
        torch.set_num_threads(threads)
    a, b = load_checkpoint(tmp_path / "ref" / "last.pt"), load_checkpoint(run / "last.pt")
    assert a["step"] == b["step"] == 6
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k

    # the default configuration passes no augmentation or cache option at all
    seen.clear()
    monkeypatch.setattr(train_mod, "fault_point", lambda point: None)
    train_mod.train(_cfg(data_yaml, tmp_path / "plain", epochs=1, mosaic=0.0, close_mosaic=0, hsv=None,
                         cache=False), progress=False)
    assert all(set(kw) == {"merge_classes", "strict", "seed"} for _, _, kw in seen)
