"""TrainConfig loading: precedence, validation messages listing the allowed names, CLI parsing."""

from __future__ import annotations

import argparse

import pytest
import yaml

from assignlab.engine import config as config_mod
from assignlab.engine.cli import add_train_args, train_overrides
from assignlab.engine.config import ConfigError, TrainConfig, load_train_config, parse_kv, save_train_config


class FakeATSS:
    def __init__(self, topk: int = 9, max_pairs: int = 2**25) -> None:
        self.topk = topk


class FakeYolo:
    def __init__(self, anchor_t: float = 4.0, *, neighbours: str = "2", **kwargs) -> None:
        pass


@pytest.fixture(autouse=True)
def fake_assigners(monkeypatch):
    monkeypatch.setattr(config_mod, "assigner_table", lambda: {"atss": FakeATSS, "yolov5": FakeYolo})


def test_defaults_validate():
    c = load_train_config(None, None)
    assert isinstance(c, TrainConfig)
    assert c.assigner == "atss" and c.epochs == TrainConfig().epochs


def test_unknown_key_lists_allowed_names():
    with pytest.raises(ConfigError) as ei:
        load_train_config(None, {"epoch": 3})
    msg = str(ei.value)
    assert "'epoch'" in msg and "did you mean 'epochs'" in msg
    for name in ("epochs", "assigner", "lr", "warmup_epochs", "resume"):
        assert name in msg


def test_yaml_file_unknown_key_names_file(tmp_path):
    p = tmp_path / "cfg.yaml"
    p.write_text("epochs: 2\nlearning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"cfg\.yaml.*'learning_rate'.*allowed: .*\blr\b"):
        load_train_config(p, None)


def test_yaml_not_a_mapping(tmp_path):
    p = tmp_path / "cfg.yaml"
    p.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_train_config(p, None)


def test_precedence_defaults_yaml_overrides(tmp_path):
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump({"epochs": 5, "lr": 0.02, "assigner_opts": {"topk": 7}}))
    c = load_train_config(p, {"lr": 0.05, "batch": None})
    assert c.epochs == 5 and c.lr == 0.05 and c.batch == TrainConfig().batch
    assert c.assigner_opts == {"topk": 7}


@pytest.mark.parametrize(
    "ov, pattern",
    [
        ({"epochs": 0}, r"epochs must be >= 1"),
        ({"optimizer": "adam"}, r"optimizer must be one of sgd, adamw"),
        ({"head": "yolo"}, r"head must be one of anchor, free"),
        ({"img": 100}, r"multiple of 32"),
        ({"lr": "fast"}, r"lr must be a finite number"),
        ({"ema": "maybe"}, r"ema must be true or false"),
        ({"device": "tpu"}, r"device must be one of auto, cpu, cuda"),
        ({"anchors": [[[10, -1]]]}, r"anchors must be"),
        ({"batch": 2.5}, r"batch must be an integer"),
    ],
)
def test_bad_values_refused(ov, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_train_config(None, ov)


def test_string_values_parsed():
    c = load_train_config(None, {"epochs": "3", "ema": "false", "lr": "1e-3", "amp": None})
    assert c.epochs == 3 and c.ema is False and c.lr == pytest.approx(1e-3)


def test_unknown_assigner_lists_names():
    with pytest.raises(ConfigError, match=r"unknown assigner 'atsss' \(did you mean 'atss'\?\); allowed: atss, yolov5"):
        load_train_config(None, {"assigner": "atsss"})


def test_assigner_options_checked_against_signature():
    c = load_train_config(None, {"assigner": "ATSS", "assigner_opts": {"topk": "5"}})
    assert c.assigner == "atss" and c.assigner_opts == {"topk": 5}
    with pytest.raises(ConfigError, match=r"unknown assigner option of atss 'top_k'.*allowed: max_pairs, topk"):
        load_train_config(None, {"assigner_opts": {"top_k": 5}})
    # **kwargs in the signature accepts anything
    c = load_train_config(None, {"assigner": "yolov5", "assigner_opts": {"whatever": "[1, 2]"}})
    assert c.assigner_opts == {"whatever": [1, 2]}


def test_unknown_loss_lists_names():
    with pytest.raises(ConfigError) as ei:
        load_train_config(None, {"loss": "nope"})
    msg = str(ei.value)
    assert "unknown loss 'nope'" in msg
    for n in config_mod.loss_names():
        assert n in msg


def test_parse_kv():
    assert parse_kv(["a=1", "b=[1, 2]", "c=true", "d=x", "e-f=0.5"]) == {
        "a": 1, "b": [1, 2], "c": True, "d": "x", "e_f": 0.5}
    with pytest.raises(ConfigError, match="key=value"):
        parse_kv(["oops"])


def test_cli_overrides():
    ap = argparse.ArgumentParser()
    add_train_args(ap)
    args = ap.parse_args(["--assigner", "atss", "--assigner-opt", "topk=5", "--epochs", "2",
                          "--set", "ema=false", "--img", "64", "--resume"])
    ov = train_overrides(args)
    assert ov == {"assigner": "atss", "assigner_opts": {"topk": 5}, "epochs": 2, "ema": False, "img": 64,
                  "resume": True}
    c = load_train_config(None, ov)
    assert c.ema is False and c.assigner_opts == {"topk": 5}


def test_save_roundtrip(tmp_path):
    c = load_train_config(None, {"epochs": 2, "assigner_opts": {"topk": 4}, "anchors": [[[10, 13]], [[30, 61]], [[62, 45]]]})
    save_train_config(c, tmp_path / "config.yaml")
    c2 = load_train_config(tmp_path / "config.yaml", None)
    assert c2 == c


def test_real_assigners_and_losses(monkeypatch):
    monkeypatch.undo()  # the real ASSIGNERS table
    from assignlab.assigners import ASSIGNERS

    c = load_train_config(None, {"assigner": "atss", "assigner_opts": {"topk": "5"}})
    assert c.assigner_opts == {"topk": 5} and "atss" in ASSIGNERS
    with pytest.raises(ConfigError, match=r"unknown assigner option of atss 'top_k'.*allowed: .*topk"):
        load_train_config(None, {"assigner": "atss", "assigner_opts": {"top_k": 5}})
    with pytest.raises(ConfigError, match=r"assigner 'atss': topk must be a positive integer"):
        load_train_config(None, {"assigner": "atss", "assigner_opts": {"topk": -1}})
    with pytest.raises(ConfigError, match=r"unknown loss option of focal 'box'.*allowed: .*box_loss"):
        load_train_config(None, {"loss": "focal", "loss_opts": {"box": "giou"}})
    with pytest.raises(ConfigError, match=r"loss 'focal': box_loss must be one of"):
        load_train_config(None, {"loss": "focal", "loss_opts": {"box_loss": "l1"}})
    assert {"bce", "focal", "qfl", "vfl", "yolov5", "v8"} <= set(config_mod.loss_names())
