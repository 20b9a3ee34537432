"""The training configuration: one flat, validated dataclass.

A run is fully described by a :class:`TrainConfig`. It is built from three layers, later ones
winning: the dataclass defaults, an optional YAML file (``--config cfg.yaml``), and command-line
overrides. Everything is validated *before* any data is read or any model is built, so a typo
fails in a second with the list of names that would have been accepted::

    >>> load_train_config(None, {"epoch": 3})
    Traceback (most recent call last):
    ConfigError: unknown config key 'epoch' (did you mean 'epochs'?); allowed keys: amp, assigner, ...

The assigner is checked against :data:`assignlab.assigners.ASSIGNERS` and its options against the
constructor signature of the chosen class (``inspect.signature``), so ``--assigner atss
--assigner-opt topk=9`` is accepted and ``--assigner-opt top_k=9`` is refused with the valid option
names. Option values given as strings (``"9"``, ``"[1, 2]"``, ``"true"``) are parsed with
``yaml.safe_load``. The loss name and options are checked the same way against
:class:`assignlab.losses.detection.DetectionLoss`.

The effective configuration is written as ``config.yaml`` in the run folder
(:func:`save_train_config`) and stored in every checkpoint.
"""

from __future__ import annotations

import difflib
import inspect
import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "ConfigError",
    "TrainConfig",
    "load_train_config",
    "save_train_config",
    "parse_kv",
    "loss_names",
    "loss_table",
    "assigner_table",
]


class ConfigError(ValueError):
    """A configuration value or key was refused (the message lists what is allowed)."""


@dataclass
class TrainConfig:
    """Everything a training run needs (see the module docstring for how it is loaded).

    Data:
        data: data YAML (``None`` = synthetic data). train_split / val_split: split names.
        merge_classes: merge all classes into one (e.g. "face"). strict: refuse bad annotations
            instead of dropping them with a warning.
    Augmentation and data loading (training split; the defaults keep the plain letterbox + scale
    jitter + flip pipeline unchanged):
        mosaic: probability of a 4-image mosaic sample (0 = off; Ultralytics uses 1.0);
        close_mosaic: no mosaic in the last N epochs (Ultralytics 10); hsv: ``[h, s, v]`` colour
        jitter amplitudes (None = off; Ultralytics ``[0.015, 0.7, 0.4]``); cache: decode all images
        into RAM at start, false | true (= "ram", bit-identical samples) | "resize" (long side =
        img), also for the validation split; cache_max_mb: refuse a cache estimated larger than
        this (``assignlab.data.cache``).
    Assignment and loss:
        assigner: CLI name from ``assignlab.assigners.ASSIGNERS``; assigner_opts: constructor kwargs.
        loss: loss name (a preset of ``assignlab.losses.detection`` or a classification loss
            "bce" / "focal" / "qfl" / "vfl"); loss_opts: extra ``DetectionLoss`` kwargs.
    Model:
        head: "anchor" (YOLOv5-style, with objectness) or "free" (FCOS / YOLOv8-style).
        reg_max: DFL bins of the free head (0 = plain distances). width: channel multiplier.
        anchors: per-level anchor ``(w, h)`` lists for the anchor head (None = model default); several
            per level (YOLOv5's 3) are allowed, the same number on every level.
        img: square input size in pixels (multiple of 32).
    Optimisation:
        epochs, batch (global batch size; split over DDP processes), workers (loader processes),
        lr (peak learning rate), final_lr_ratio (cosine/linear end value = lr * ratio),
        optimizer "sgd" | "adamw", momentum (SGD momentum / AdamW beta1), weight_decay (not on
        biases and norm weights), warmup_epochs (linear warmup, may be fractional), cosine (cosine
        decay, else linear), ema + ema_decay + ema_tau (EMA of weights, YOLOv5 ramp), grad_clip
        (max gradient L2 norm, 0 = off), amp (mixed precision; None = on iff CUDA; never on CPU).
    Reproducibility:
        seed; deterministic (deterministic algorithms; with ``seed`` the run is bit-reproducible on
        one device and a resumed run ends on the same weights as an uninterrupted one).
    Output:
        out: run folder; resume: continue ``out/last.pt``; eval_every: validate every N epochs
        (the last epoch is always validated; 0 = only the last); conf / iou / max_det:
        post-processing for validation; device: "auto" | "cpu" | "cuda" | "cuda:K".
    """

    data: str | None = None
    train_split: str = "train"
    val_split: str = "val"
    merge_classes: bool = False
    strict: bool = False
    mosaic: float = 0.0
    close_mosaic: int = 0
    hsv: list[float] | None = None
    cache: bool | str = False
    cache_max_mb: float = 4096.0

    assigner: str = "atss"
    assigner_opts: dict[str, Any] = field(default_factory=dict)
    loss: str = "focal"
    loss_opts: dict[str, Any] = field(default_factory=dict)

    head: str = "free"
    reg_max: int = 0
    width: float = 0.5
    anchors: list[list[list[float]]] | None = None
    img: int = 320

    epochs: int = 30
    batch: int = 16
    workers: int = 0
    lr: float = 0.01
    final_lr_ratio: float = 0.01
    optimizer: str = "sgd"
    momentum: float = 0.937
    weight_decay: float = 5e-4
    warmup_epochs: float = 1.0
    cosine: bool = True
    ema: bool = True
    ema_decay: float = 0.9999
    ema_tau: float = 2000.0
    grad_clip: float = 10.0
    amp: bool | None = None

    seed: int = 0
    deterministic: bool = True

    out: str = "runs/train"
    resume: bool = False
    eval_every: int = 1
    conf: float = 0.001
    iou: float = 0.6
    max_det: int = 300
    device: str = "auto"

    def to_dict(self) -> dict[str, Any]:
        """Plain ``dict`` of built-in types (YAML- and ``weights_only``-safe)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        """Build and validate from a mapping (unknown keys refused)."""
        return load_train_config(None, d)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------

_CHOICES: dict[str, tuple[Any, ...]] = {
    "head": ("anchor", "free"),
    "optimizer": ("sgd", "adamw"),
}

#: Keys that may differ between a run and its resumption (they do not change the result).
RESUME_MUTABLE = frozenset({"resume", "workers", "device", "out", "data", "cache_max_mb"})


def allowed_keys() -> list[str]:
    return sorted(f.name for f in fields(TrainConfig))


def _unknown(kind: str, name: str, allowed: list[str]) -> ConfigError:
    close = difflib.get_close_matches(name, allowed, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"unknown {kind} {name!r}{hint}; allowed: {', '.join(allowed) or '(none)'}")


def parse_kv(items: list[str] | None, what: str = "option") -> dict[str, Any]:
    """``["k=v", ...]`` -> ``{k: yaml.safe_load(v)}`` (``"9"`` -> 9, ``"[1,2]"`` -> [1, 2])."""
    out: dict[str, Any] = {}
    for it in items or []:
        if "=" not in it:
            raise ConfigError(f"{what} {it!r} must look like key=value")
        k, v = it.split("=", 1)
        k = k.strip().replace("-", "_")
        if not k:
            raise ConfigError(f"{what} {it!r} has an empty key")
        out[k] = _parse_value(v)
    return out


_SCI = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _parse_value(v: Any) -> Any:
    if not isinstance(v, str):
        return v
    if _SCI.fullmatch(v.strip()):
        return float(v)  # YAML 1.1 reads "1e-3" (no dot) as a string
    try:
        return yaml.safe_load(v)
    except yaml.YAMLError as e:
        raise ConfigError(f"cannot parse value {v!r}: {e}") from None


def _as_bool(name: str, v: Any, allow_none: bool = False) -> bool | None:
    if v is None and allow_none:
        return None
    if isinstance(v, str):
        v = _parse_value(v)
    if isinstance(v, bool):
        return v
    raise ConfigError(f"{name} must be true or false{' or null' if allow_none else ''}, got {v!r}")


def _as_int(name: str, v: Any, lo: int | None = None) -> int:
    if isinstance(v, str):
        v = _parse_value(v)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not v.is_integer()):
        raise ConfigError(f"{name} must be an integer, got {v!r}")
    v = int(v)
    if lo is not None and v < lo:
        raise ConfigError(f"{name} must be >= {lo}, got {v}")
    return v


def _as_float(name: str, v: Any, lo: float | None = None, hi: float | None = None, lo_open=False) -> float:
    if isinstance(v, str):
        try:
            v = float(v)  # YAML 1.1 reads "1e-3" (no dot) as a string
        except ValueError:
            v = _parse_value(v)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
        raise ConfigError(f"{name} must be a finite number, got {v!r}")
    v = float(v)
    if lo is not None and (v < lo or (lo_open and v == lo)):
        raise ConfigError(f"{name} must be {'>' if lo_open else '>='} {lo}, got {v}")
    if hi is not None and v > hi:
        raise ConfigError(f"{name} must be <= {hi}, got {v}")
    return v


def _as_hsv(v: Any) -> list[float] | None:
    """``hsv``: null or three amplitudes ``[h, s, v]`` in [0, 1] (``"[0.015, 0.7, 0.4]"`` parsed)."""
    v = _parse_value(v)
    if v is None:
        return None
    if not isinstance(v, (list, tuple)) or len(v) != 3:
        raise ConfigError(f"hsv must be null or a list of three gains [h, s, v] in [0, 1], got {v!r}")
    return [_as_float(f"hsv[{k}] ({'hsv'[k]})", x, lo=0.0, hi=1.0) for k, x in enumerate(v)]


def _as_cache(v: Any) -> bool | str:
    """``cache``: false | true (= "ram") | "ram" | "resize" -> False, "ram" or "resize"."""
    from ..data.cache import cache_mode

    try:
        m = cache_mode(v)  # also reads the strings "true" / "false" / "off"
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return False if m is None else m


def _as_str(name: str, v: Any, allow_none: bool = False) -> str | None:
    if v is None and allow_none:
        return None
    if not isinstance(v, str) or not v:
        raise ConfigError(f"{name} must be a non-empty string, got {v!r}")
    return v


def _signature_params(cls: Any) -> tuple[list[str], bool]:
    """Keyword parameter names of ``cls.__init__`` and whether it takes ``**kwargs``."""
    sig = inspect.signature(cls.__init__ if inspect.isclass(cls) else cls)
    names, var_kw = [], False
    for p in sig.parameters.values():
        if p.name == "self":
            continue
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            var_kw = True
        elif p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY):
            names.append(p.name)
    return names, var_kw


def _check_opts(kind: str, owner: str, cls: Any, opts: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(opts, Mapping):
        raise ConfigError(f"{kind} options must be a mapping of name: value, got {opts!r}")
    names, var_kw = _signature_params(cls)
    out = {}
    for k, v in opts.items():
        k = str(k).replace("-", "_")
        if k not in names and not var_kw:
            raise _unknown(f"{kind} option of {owner}", k, sorted(names))
        out[k] = _parse_value(v)
    return out


def assigner_table() -> dict[str, type]:
    from ..assigners import ASSIGNERS

    return dict(ASSIGNERS)


def loss_table() -> dict[str, tuple[Any, dict[str, Any]]]:
    """``name -> (factory, base kwargs)`` of the losses ``--loss`` accepts.

    * every classification loss of ``DetectionLoss`` (``bce``, ``focal``, ``qfl``, ``vfl``):
      ``DetectionLoss(cls_loss=name, **loss_opts)``;
    * ``yolov5``: the exact YOLOv5 ``ComputeLoss`` over many-to-many rows (needs the yolov5
      assigner and the anchor head); ``v8``: Ultralytics' ``v8DetectionLoss`` preset;
    * any ``LOSS_PRESETS`` of :mod:`assignlab.losses.detection` (name -> kwargs or factory).
    """
    from ..losses import detection

    table: dict[str, tuple[Any, dict[str, Any]]] = {
        name: (detection.DetectionLoss, {"cls_loss": name}) for name in detection.LOSSES
    }
    try:
        from ..losses.yolov5 import YOLOv5Loss

        table["yolov5"] = (YOLOv5Loss, {})
    except ImportError:  # pragma: no cover
        pass
    try:
        from ..losses.ultralytics import V8DetectionLoss

        table["v8"] = (V8DetectionLoss, {})
    except ImportError:  # pragma: no cover
        pass
    for name, p in (getattr(detection, "LOSS_PRESETS", None) or {}).items():
        table[str(name)] = (detection.DetectionLoss, dict(p)) if isinstance(p, Mapping) else (p, {})
    return table


def loss_names() -> list[str]:
    """Valid ``loss`` names (see :func:`loss_table`)."""
    return sorted(loss_table())


def _validate(d: dict[str, Any]) -> TrainConfig:
    c = TrainConfig(**d)
    c.data = _as_str("data", c.data, allow_none=True)
    if c.data is not None and c.data.lower() in ("synthetic", "none", "null"):
        c.data = None
    c.train_split = _as_str("train_split", c.train_split)
    c.val_split = _as_str("val_split", c.val_split)
    c.merge_classes = _as_bool("merge_classes", c.merge_classes)
    c.strict = _as_bool("strict", c.strict)
    c.mosaic = _as_float("mosaic", c.mosaic, lo=0.0, hi=1.0)
    c.close_mosaic = _as_int("close_mosaic", c.close_mosaic, lo=0)
    c.hsv = _as_hsv(c.hsv)
    c.cache = _as_cache(c.cache)
    c.cache_max_mb = _as_float("cache_max_mb", c.cache_max_mb, lo=0.0, lo_open=True)

    for k, choices in _CHOICES.items():
        v = getattr(c, k)
        if v not in choices:
            raise ConfigError(f"{k} must be one of {', '.join(choices)}; got {v!r}")

    c.reg_max = _as_int("reg_max", c.reg_max, lo=0)
    c.width = _as_float("width", c.width, lo=0.0, lo_open=True)
    c.img = _as_int("img", c.img, lo=32)
    if c.img % 32:
        raise ConfigError(f"img must be a multiple of 32 (the largest stride), got {c.img}")
    if c.anchors is not None:
        a = _parse_value(c.anchors)
        ok = isinstance(a, list) and a and all(
            isinstance(lv, list) and lv and all(
                isinstance(wh, (list, tuple)) and len(wh) == 2 and all(
                    isinstance(x, (int, float)) and x > 0 for x in wh) for wh in lv) for lv in a)
        if not ok:
            raise ConfigError(f"anchors must be a per-level list of [w, h] pairs (pixels, > 0), got {a!r}")
        counts = [len(lv) for lv in a]
        if len(set(counts)) != 1:
            raise ConfigError(f"anchors must have the same number of [w, h] pairs on every level (the head "
                              f"predicts that many boxes per location, as in YOLOv5), got {counts} per level")
        c.anchors = [[[float(x) for x in wh] for wh in lv] for lv in a]

    c.epochs = _as_int("epochs", c.epochs, lo=1)
    c.batch = _as_int("batch", c.batch, lo=1)
    c.workers = _as_int("workers", c.workers, lo=0)
    c.lr = _as_float("lr", c.lr, lo=0.0, lo_open=True)
    c.final_lr_ratio = _as_float("final_lr_ratio", c.final_lr_ratio, lo=0.0, hi=1.0)
    c.momentum = _as_float("momentum", c.momentum, lo=0.0, hi=0.9999)
    c.weight_decay = _as_float("weight_decay", c.weight_decay, lo=0.0)
    c.warmup_epochs = _as_float("warmup_epochs", c.warmup_epochs, lo=0.0)
    c.cosine = _as_bool("cosine", c.cosine)
    c.ema = _as_bool("ema", c.ema)
    c.ema_decay = _as_float("ema_decay", c.ema_decay, lo=0.0, hi=1.0)
    c.ema_tau = _as_float("ema_tau", c.ema_tau, lo=0.0)
    c.grad_clip = _as_float("grad_clip", c.grad_clip, lo=0.0)
    c.amp = _as_bool("amp", c.amp, allow_none=True)
    c.seed = _as_int("seed", c.seed, lo=0)
    c.deterministic = _as_bool("deterministic", c.deterministic)
    c.out = _as_str("out", str(c.out) if isinstance(c.out, Path) else c.out)
    c.resume = _as_bool("resume", c.resume)
    c.eval_every = _as_int("eval_every", c.eval_every, lo=0)
    c.conf = _as_float("conf", c.conf, lo=0.0, hi=1.0)
    c.iou = _as_float("iou", c.iou, lo=0.0, hi=1.0)
    c.max_det = _as_int("max_det", c.max_det, lo=1)
    c.device = _as_str("device", c.device)
    if not (c.device in ("auto", "cpu", "cuda") or (c.device.startswith("cuda:") and c.device[5:].isdigit())):
        raise ConfigError(f"device must be one of auto, cpu, cuda, cuda:K; got {c.device!r}")

    # assigner: name and constructor options
    table = assigner_table()
    name = str(c.assigner).lower()
    if name not in table:
        raise _unknown("assigner", name, sorted(table))
    c.assigner = name
    c.assigner_opts = _check_opts("assigner", name, table[name], c.assigner_opts or {})

    # loss: name and options
    ltable = loss_table()
    lname = str(c.loss).lower()
    if lname not in ltable:
        raise _unknown("loss", lname, sorted(ltable))
    c.loss = lname
    factory, base = ltable[lname]
    c.loss_opts = _check_opts("loss", lname, factory, c.loss_opts or {})

    # build both once: a bad option *value* fails now, not after the data is loaded
    try:
        table[name](**c.assigner_opts)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"assigner {name!r}: {e}") from None
    try:
        factory(**{**base, **c.loss_opts})
    except (TypeError, ValueError) as e:
        raise ConfigError(f"loss {lname!r}: {e}") from None
    return c


def load_train_config(
    yaml_path: str | Path | None = None, overrides: Mapping[str, Any] | None = None
) -> TrainConfig:
    """Defaults <- YAML file <- ``overrides``; validated (raises :class:`ConfigError`).

    ``overrides`` values that are ``None`` are ignored (argparse leaves unset options at None),
    except where the key is explicitly meant to be set to null via the YAML file.
    ``assigner_opts`` / ``loss_opts`` given in ``overrides`` are *merged* into those of the file.
    """
    d: dict[str, Any] = TrainConfig().to_dict()
    allowed = allowed_keys()
    layers: list[tuple[str, Mapping[str, Any]]] = []
    if yaml_path is not None:
        p = Path(yaml_path)
        try:
            raw = yaml.safe_load(p.read_text())
        except OSError as e:
            raise ConfigError(f"cannot read config file {p}: {e.strerror or e}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {p} is not valid YAML: {e}") from None
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {p} must hold a mapping of key: value, got {type(raw).__name__}")
        layers.append((f"config file {p}", raw))
    if overrides:
        layers.append(("overrides", {k: v for k, v in overrides.items() if v is not None}))
    for where, layer in layers:
        for k, v in layer.items():
            key = str(k).replace("-", "_")
            if key not in allowed:
                e = _unknown("config key", key, allowed)
                raise ConfigError(f"{where}: {e}") from None
            if key in ("assigner_opts", "loss_opts") and where == "overrides" and isinstance(v, Mapping):
                d[key] = {**(d.get(key) or {}), **v}
            else:
                d[key] = v
    return _validate(d)


def save_train_config(cfg: TrainConfig, path: str | Path) -> None:
    """Write the effective configuration as YAML (keys sorted)."""
    from .checkpoint import atomic_write_bytes

    text = yaml.safe_dump(cfg.to_dict(), sort_keys=True, default_flow_style=None)
    atomic_write_bytes(path, text.encode())
