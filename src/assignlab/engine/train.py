"""The training loop: data -> model -> decode -> assigner -> loss -> step, with exact resume and DDP.

One step, as wired here (the engine only connects the parts; it never assigns nor scores)::

    out = model(images)                                   # HeadOutput (B, N, ...)
    priors = model.priors((H, W))                         # shared prior order
    pred_boxes, pred_scores = model.decode(out, priors)   # (B, N, 4) px, (B, N, C) probabilities
    assignment = assigner(priors, gt, pred_boxes=pred_boxes.detach(), pred_scores=pred_scores.detach())
    loss, parts = loss_fn(out, pred_boxes, priors, gt, assignment)
    loss.backward(); clip; optimizer.step(); ema.update(model)

(predictions go to the assigner only when it declares ``requires_predictions``).

Reproducibility and resume
--------------------------
Every source of randomness is a function of ``(seed, epoch)``: at the start of each epoch the
global torch / numpy / Python generators are re-seeded with :func:`epoch_seed` (plus the DDP rank)
and the data loader is rebuilt with that seed (and ``sampler.set_epoch(epoch)``), and the learning
rate is a pure function of the global step (:class:`~assignlab.engine.schedule.WarmupCosineSchedule`).
``last.pt`` written after each epoch holds model, EMA, optimizer, AMP scaler, step, epoch and
history. A run killed at any moment (mid-epoch or while writing a checkpoint, see
:mod:`assignlab.engine.faults`) and restarted with ``resume`` redoes the unfinished epoch from the
last completed one and ends on bit-identical weights to an uninterrupted run with the same seed
(tested on CPU with ``deterministic``; on CUDA up to the determinism of the kernels).

On resume the configuration saved in the checkpoint is authoritative; only ``device``,
``workers``, ``data`` (e.g. a moved dataset) and ``out`` may change.

Distributed data parallel
-------------------------
``torchrun --nproc_per_node N -m assignlab train ...`` runs one process per device (``gloo`` on
CPU, ``nccl`` on CUDA). ``batch`` is the global batch, split evenly over the processes; the
loader uses a ``DistributedSampler``. Only rank 0 validates and writes files; the others wait at
a barrier.

Faults
------
* Non-finite gradients (NaN / inf loss) skip the optimizer step with a warning naming the images;
  after :data:`MAX_BAD_STEPS` consecutive such steps training stops with ``FloatingPointError``.
* A ``--resume`` with no ``last.pt`` in the run folder starts a new run (and says so); a new run
  refuses to overwrite a folder that already holds ``last.pt``.

Outputs in ``cfg.out``: ``config.yaml``, ``last.pt``, ``best.pt`` (best validation AP50),
``results.csv`` (one row per epoch), ``tensorboard/`` (if tensorboard is installed).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
import random
import sys
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..assigners.base import call_assigner
from ..losses.normalize import LossBalanceMonitor
from .checkpoint import (
    CheckpointError,
    atomic_write_bytes,
    get_rng_state,
    load_checkpoint,
    save_checkpoint,
    set_rng_state,
)
from .config import RESUME_MUTABLE, ConfigError, TrainConfig, load_train_config, save_train_config
from .ema import ModelEMA, unwrap_model
from .faults import fault_point
from .schedule import WarmupCosineSchedule

__all__ = [
    "MAX_BAD_STEPS",
    "build_assigner",
    "build_loss",
    "build_model",
    "build_model_from_checkpoint",
    "build_optimizer",
    "epoch_seed",
    "resolve_device",
    "seed_everything",
    "train",
    "write_results_csv",
]

#: consecutive non-finite steps after which training stops
MAX_BAD_STEPS = 20
FITNESS_KEY = "AP50"


# ---------------------------------------------------------------------------------------------
# devices, seeds, distributed
# ---------------------------------------------------------------------------------------------


def resolve_device(name: str = "auto", local_rank: int | None = None) -> torch.device:
    """``"auto"`` -> CUDA if available else CPU; ``"cuda"`` under DDP -> ``cuda:<local_rank>``."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} requested but CUDA is not available; use --device cpu")
        if dev.index is None:
            dev = torch.device("cuda", local_rank or 0)
    return dev


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, numpy and torch; with ``deterministic`` also select deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch ``epoch`` (0-based) of a run seeded with ``seed``: a fixed function, so a
    resumed run draws the same batches and augmentations as an uninterrupted one."""
    return (int(seed) * 1_000_003 + int(epoch) * 7_919 + 17) % (2**31 - 1)


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()


def _setup_distributed(cfg: TrainConfig) -> tuple[_Dist, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist(), resolve_device(cfg.device)
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    device = resolve_device(cfg.device, local)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    owns = False
    if not torch.distributed.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend=backend)
        owns = True
    return _Dist(rank=rank, world=world, local_rank=local, owns_group=owns), device


# ---------------------------------------------------------------------------------------------
# components
# ---------------------------------------------------------------------------------------------


def build_model(cfg: TrainConfig, num_classes: int) -> nn.Module:
    """The :class:`~assignlab.models.Detector` described by ``cfg``."""
    from ..models import Detector

    kw: dict[str, Any] = {"num_classes": num_classes, "head": cfg.head, "width": cfg.width, "reg_max": cfg.reg_max}
    if cfg.anchors is not None:
        kw["anchors"] = [[tuple(wh) for wh in lv] for lv in cfg.anchors]
    try:
        return Detector(**kw)
    except ValueError as e:
        raise ConfigError(f"model: {e}") from None


def build_model_from_checkpoint(ck: Mapping[str, Any], use_ema: bool = True) -> nn.Module:
    """Rebuild the detector of a checkpoint and load its (EMA, if present) weights (eval mode)."""
    from ..models import Detector

    mc = ck.get("model_config")
    if not isinstance(mc, Mapping):
        raise CheckpointError("checkpoint has no 'model_config' (Detector constructor arguments)")
    mc = dict(mc)
    if mc.get("anchors") is not None:
        mc["anchors"] = [[tuple(wh) for wh in lv] for lv in mc["anchors"]]
    model = Detector(**mc)
    sd = ck.get("ema") if use_ema and ck.get("ema") is not None else ck.get("model")
    if isinstance(sd, Mapping) and "module" in sd and "updates" in sd:
        sd = sd["module"]
    model.load_state_dict(sd)
    names = ck.get("names")
    if names:
        model.names = list(names)
    cfg = ck.get("config") or {}
    if cfg.get("img"):
        model.img_size = int(cfg["img"])
    return model.eval()


def build_assigner(cfg: TrainConfig):
    """``ASSIGNERS[cfg.assigner](**cfg.assigner_opts)`` (a bad option value -> ConfigError)."""
    from ..assigners import ASSIGNERS

    cls = ASSIGNERS[cfg.assigner]
    try:
        return cls(**cfg.assigner_opts)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"assigner {cfg.assigner!r}: {e}") from None


def build_loss(cfg: TrainConfig):
    """The loss of ``cfg`` (see :func:`~assignlab.engine.config.loss_table`): e.g.
    ``DetectionLoss(cls_loss=cfg.loss, **cfg.loss_opts)``."""
    from .config import loss_table

    factory, base = loss_table()[cfg.loss]
    try:
        return factory(**{**base, **cfg.loss_opts})
    except (TypeError, ValueError) as e:
        raise ConfigError(f"loss {cfg.loss!r}: {e}") from None


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD (Nesterov) or AdamW; weight decay on weights of rank >= 2 only (not biases / norms)."""
    decay, no_decay = [], []
    for _, p in unwrap_model(model).named_parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.momentum, 0.999))


def _loss_normalizers(loss: Any) -> dict[str, Any]:
    """Stateful running normalisers inside a loss (``loss.normalizer``, ``loss.loss.normalizer``)."""
    out = {}
    for path in ("normalizer", "loss.normalizer"):
        obj = loss
        for part in path.split("."):
            obj = getattr(obj, part, None)
        if obj is not None and hasattr(obj, "_ema"):
            out[path] = obj
    return out


def loss_state_dict(loss: Any) -> dict[str, Any]:
    """The training state of a loss (its own ``state_dict`` or its running normalisers)."""
    if callable(getattr(loss, "state_dict", None)):
        return {"state_dict": loss.state_dict()}
    return {path: n._ema for path, n in _loss_normalizers(loss).items()}


def load_loss_state_dict(loss: Any, state: Mapping[str, Any] | None) -> None:
    if not state:
        return
    if "state_dict" in state and callable(getattr(loss, "load_state_dict", None)):
        loss.load_state_dict(state["state_dict"])
        return
    for path, n in _loss_normalizers(loss).items():
        if path in state:
            n._ema = state[path]


# ---------------------------------------------------------------------------------------------
# outputs
# ---------------------------------------------------------------------------------------------


def write_results_csv(path: str | Path, history: list[Mapping[str, Any]]) -> None:
    """``results.csv`` (atomically) from the per-epoch rows; missing values are empty cells."""
    keys: list[str] = []
    for row in history:
        for k in row:
            if k not in keys:
                keys.append(k)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    w.writeheader()
    for row in history:
        w.writerow({k: _fmt(row.get(k)) for k in keys})
    atomic_write_bytes(path, buf.getvalue().encode())


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "nan" if math.isnan(v) else repr(v)
    return str(v)


def _tensorboard(out: Path, purge_step: int | None):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard is optional
        return None
    try:
        return SummaryWriter(log_dir=str(out / "tensorboard"), purge_step=purge_step)
    except Exception as e:  # pragma: no cover - e.g. read-only folder
        warnings.warn(f"TensorBoard logging disabled: {e}", stacklevel=2)
        return None


# ---------------------------------------------------------------------------------------------
# resume
# ---------------------------------------------------------------------------------------------


def _merge_resume_config(cfg: TrainConfig, saved: Mapping[str, Any]) -> TrainConfig:
    """The saved config, with the resume-mutable keys taken from ``cfg``; warn about ignored changes."""
    merged = dict(saved)
    default = TrainConfig()
    for k in RESUME_MUTABLE:
        # a mutable key left at its default means "not given": keep the run's value (e.g. its data)
        if k == "out" or getattr(cfg, k) != getattr(default, k) or k not in merged:
            merged[k] = getattr(cfg, k)
    merged["resume"] = True
    new = load_train_config(None, {k: v for k, v in merged.items()})
    ignored = [
        k for k in dataclasses.asdict(cfg)
        if k not in RESUME_MUTABLE and getattr(cfg, k) != getattr(new, k) and getattr(cfg, k) != getattr(TrainConfig(), k)
    ]
    if ignored:
        warnings.warn(
            f"resume: the checkpoint's values are used for {', '.join(sorted(ignored))} "
            "(only device, workers, data and out may change on resume)",
            stacklevel=3,
        )
    return new


def resume_conflicts(out: str | Path, explicit: Mapping[str, Any]) -> list[str]:
    """Keys of ``explicit`` (user-given settings) that differ from the run saved in ``out/last.pt``
    and may not change on resume (empty when there is no checkpoint)."""
    last = Path(out) / "last.pt"
    if not last.is_file():
        return []
    saved = load_checkpoint(last).get("config") or {}
    want = load_train_config(None, {**saved, **explicit})
    ref = load_train_config(None, saved)
    return [
        f"{k}: run has {getattr(ref, k)!r}, given {getattr(want, k)!r}"
        for k in sorted(explicit)
        if k not in RESUME_MUTABLE and k in saved and getattr(want, k) != getattr(ref, k)
    ]


# ---------------------------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------------------------


def _say(d: _Dist, msg: str) -> None:
    if d.main:
        print(msg, flush=True)


def _cast_out(out: Any) -> Any:
    """Float32 copy of a (mixed-precision) head output for decoding and the loss."""
    ch = {f.name: getattr(out, f.name).float() for f in dataclasses.fields(out)
          if isinstance(getattr(out, f.name), torch.Tensor) and getattr(out, f.name).is_floating_point()}
    return dataclasses.replace(out, **ch) if ch else out


def _grad_norm(params: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    if max_norm > 0:
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    if hasattr(torch.nn.utils, "get_total_norm"):
        return torch.nn.utils.get_total_norm(grads)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


def train(cfg: TrainConfig | Mapping[str, Any], progress: bool | None = None) -> dict[str, Any]:
    """Train a detector as described by ``cfg`` (see the module docstring). Returns a summary:
    ``out``, ``last``, ``best``, ``best_fitness`` (best val AP50), ``epochs`` completed, ``step``,
    ``metrics`` (last validation) and ``history`` (all rows of results.csv).

    ``progress``: show tqdm bars (default: when stderr is a terminal or ASSIGNLAB_PROGRESS=1).
    """
    if not isinstance(cfg, TrainConfig):
        cfg = load_train_config(None, cfg)
    from ..data import build_dataset, build_loader, load_data_config

    d, device = _setup_distributed(cfg)
    det = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    try:
        return _train(cfg, d, device, progress, build_dataset, build_loader, load_data_config)
    finally:
        torch.use_deterministic_algorithms(det[0], warn_only=det[1])
        if d.owns_group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _train(cfg, d: _Dist, device, progress, build_dataset, build_loader, load_data_config) -> dict[str, Any]:
    from .evaluate import evaluate

    out = Path(cfg.out)
    last_path, best_path = out / "last.pt", out / "best.pt"
    ck: dict[str, Any] | None = None
    if cfg.resume and last_path.is_file():
        ck = load_checkpoint(last_path)
        cfg = _merge_resume_config(cfg, ck.get("config") or {})
        _say(d, f"resuming {last_path} after epoch {ck['epoch']} (step {ck['step']})")
    elif cfg.resume:
        _say(d, f"--resume: no checkpoint at {last_path}; starting a new run")
    elif last_path.exists():
        raise ConfigError(
            f"{out} already holds a run ({last_path}); pass --resume to continue it or choose another --out"
        )
    if progress is None:
        progress = sys.stderr.isatty() or os.environ.get("ASSIGNLAB_PROGRESS") == "1"

    amp = (device.type == "cuda") if cfg.amp is None else bool(cfg.amp)
    if amp and device.type != "cuda":
        warnings.warn("amp is only used on CUDA; training in float32 on CPU", stacklevel=2)
        amp = False
    if cfg.batch % d.world:
        raise ConfigError(f"batch {cfg.batch} must be divisible by the number of processes ({d.world})")
    rank_batch = cfg.batch // d.world

    seed_everything(cfg.seed, cfg.deterministic)

    # data
    dcfg = load_data_config(cfg.data)
    kw = {"merge_classes": cfg.merge_classes, "strict": cfg.strict, "seed": cfg.seed}
    if cfg.cache:  # decoded images in RAM (built here, before any loader worker forks)
        kw.update(cache=cfg.cache, cache_max_mb=cfg.cache_max_mb)
    aug: dict[str, Any] = {}  # optional training augmentation; absent = the default pipeline
    if cfg.mosaic > 0:  # mosaic is off from epoch index epochs - close_mosaic on (set_epoch)
        aug.update(mosaic=cfg.mosaic, mosaic_close_epoch=cfg.epochs - cfg.close_mosaic if cfg.close_mosaic else None)
    if cfg.hsv and any(cfg.hsv):
        aug["hsv"] = tuple(cfg.hsv)
    train_ds = build_dataset(dcfg, cfg.train_split, cfg.img, train=True, **kw, **aug)
    val_ds = build_dataset(dcfg, cfg.val_split, cfg.img, train=False, **kw) if d.main else None
    names = list(train_ds.names)
    if ck is not None and ck.get("names") and list(ck["names"]) != names:
        raise CheckpointError(f"{last_path} was trained on classes {ck['names']}, the data now has {names}")
    if len(train_ds) == 0:
        raise ConfigError(f"split {cfg.train_split!r} of {cfg.data or 'synthetic data'} has no images")

    def make_loader(epoch: int):
        ld = build_loader(train_ds, rank_batch, shuffle=True, workers=cfg.workers,
                          seed=epoch_seed(cfg.seed, epoch), distributed=d.world > 1, drop_last=False)
        sampler = getattr(ld, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        if hasattr(train_ds, "set_epoch"):
            train_ds.set_epoch(epoch)
        return ld

    steps_per_epoch = len(make_loader(0))
    if steps_per_epoch == 0:
        raise ConfigError(f"no training batches: {len(train_ds)} images, batch {cfg.batch}")

    # model, assignment, loss, optimisation
    torch.manual_seed(cfg.seed)  # model init does not depend on what the data builders drew
    model = build_model(cfg, len(names)).to(device)
    assigner = build_assigner(cfg)
    loss_fn = build_loss(cfg)
    if isinstance(loss_fn, nn.Module):
        loss_fn = loss_fn.to(device)
    if callable(getattr(loss_fn, "train", None)):
        loss_fn.train()
    optimizer = build_optimizer(model, cfg)
    schedule = WarmupCosineSchedule.for_run(cfg.lr, cfg.epochs, steps_per_epoch, cfg.warmup_epochs,
                                            cfg.final_lr_ratio, cfg.cosine)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    ema = ModelEMA(model, cfg.ema_decay, cfg.ema_tau) if cfg.ema else None

    start_epoch, step, best_fitness = 0, 0, float("-inf")
    history: list[dict[str, Any]] = []
    if ck is not None:
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        if ema is not None and ck.get("ema") is not None:
            ema.load_state_dict(ck["ema"])
        load_loss_state_dict(loss_fn, ck.get("loss"))
        if ck.get("scaler"):
            scaler.load_state_dict(ck["scaler"])
        start_epoch, step = int(ck["epoch"]), int(ck["step"])
        best_fitness = float(ck.get("best_fitness", float("-inf")))
        history = [dict(r) for r in ck.get("history", [])]
        if ck.get("rng"):
            set_rng_state(ck["rng"])
        if int(ck.get("world_size", 1)) != d.world:
            warnings.warn(f"resuming a {ck.get('world_size', 1)}-process run with {d.world} processes: "
                          "the batches differ from the original run", stacklevel=2)
    model_config = unwrap_model(model).config()

    if d.world > 1:
        ddp_kw = {"device_ids": [device.index]} if device.type == "cuda" else {}
        model = nn.parallel.DistributedDataParallel(model, **ddp_kw)
    core = unwrap_model(model)
    params = [p for p in core.parameters() if p.requires_grad]

    writer = None
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
        save_train_config(cfg, out / "config.yaml")
        if history:  # a crash between last.pt and results.csv leaves the csv one row short
            write_results_csv(out / "results.csv", history)
        writer = _tensorboard(out, purge_step=start_epoch + 1 if ck is not None else None)
        n_par = sum(p.numel() for p in params)
        _say(d, f"train: {len(train_ds)} images, val: {len(val_ds)} images, classes {names}; "
                f"{cfg.head} head ({n_par / 1e6:.2f} M params), assigner {cfg.assigner}"
                f"{f' {cfg.assigner_opts}' if cfg.assigner_opts else ''}, loss {cfg.loss}"
                f"{f' {cfg.loss_opts}' if cfg.loss_opts else ''}; device {device}"
                f"{f' x{d.world} processes' if d.world > 1 else ''}, amp {amp}; {steps_per_epoch} steps/epoch")
        if aug or cfg.cache:
            _say(d, f"augmentation: {aug or 'default'}"
                    f"{f', close_mosaic {cfg.close_mosaic}' if cfg.mosaic > 0 and cfg.close_mosaic else ''}; "
                    f"image cache {cfg.cache or 'off'}")

    last_metrics: dict[str, float] = {}
    bad_steps = 0
    for epoch in range(start_epoch, cfg.epochs):
        es = epoch_seed(cfg.seed, epoch)
        random.seed(es + d.rank)
        np.random.seed((es + d.rank) % 2**32)
        torch.manual_seed(es + d.rank)
        loader = make_loader(epoch)
        model.train()
        t0 = time.time()
        sums: dict[str, torch.Tensor] = {}
        balance = LossBalanceMonitor()  # parts of the loss and their shares, reported per epoch
        n_done = 0
        lr = schedule(step)
        it = loader
        pbar = None
        if progress and d.main:
            from tqdm import tqdm

            pbar = tqdm(loader, total=steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                        dynamic_ncols=True, leave=True, file=sys.stderr)
            it = pbar
        for batch in it:
            lr = schedule(step)
            for g in optimizer.param_groups:
                g["lr"] = lr
            batch = batch.to(device)
            images = batch.images
            gt = batch.gt
            with torch.autocast(device_type=device.type, enabled=amp):
                raw = model(images)
            if amp:
                raw = _cast_out(raw)
            priors = core.priors(tuple(images.shape[-2:]))
            pred_boxes, pred_scores = core.decode(raw, priors)
            assignment = call_assigner(assigner, priors, gt, pred_boxes, pred_scores)
            loss, parts = loss_fn(raw, pred_boxes, priors, gt, assignment)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if amp:
                scaler.unscale_(optimizer)
            gnorm = _grad_norm(params, cfg.grad_clip)
            finite = bool(torch.isfinite(gnorm) & torch.isfinite(loss.detach()))  # the step's one host sync
            if amp:
                scaler.step(optimizer)  # skips the update itself on inf/nan gradients
                scaler.update()
                stepped = finite
            elif finite:
                optimizer.step()
                stepped = True
            else:
                stepped = False
            if stepped:
                bad_steps = 0
                if ema is not None:
                    ema.update(core)
            elif not amp:
                bad_steps += 1
                paths = [m.path for m in batch.meta][:4]
                warnings.warn(f"epoch {epoch + 1} step {step}: non-finite loss or gradients; step skipped "
                              f"(images {paths}{' ...' if len(batch.meta) > 4 else ''})", stacklevel=2)
                if bad_steps >= MAX_BAD_STEPS:
                    raise FloatingPointError(
                        f"{bad_steps} consecutive non-finite training steps (last at epoch {epoch + 1}, "
                        f"step {step}); lower lr (now {lr:g}) or set grad_clip, and check the data")
            step += 1
            n_done += 1
            with torch.no_grad():
                allp = {**{k: v.detach().float() for k, v in parts.items()}, "loss": loss.detach().float()}
                for k, v in allp.items():
                    v = torch.where(torch.isfinite(v), v, torch.zeros_like(v))
                    sums[k] = sums.get(k, torch.zeros((), device=device)) + v
                balance.update({k: v for k, v in allp.items() if k != "loss"})
            if pbar is not None:
                pbar.set_postfix({k: f"{float(v) / n_done:.4f}" for k, v in sums.items()} | {"lr": f"{lr:.2e}"},
                                 refresh=False)
            fault_point("step")
        if pbar is not None:
            pbar.close()
        fault_point("epoch_end")

        # validation (rank 0, EMA weights)
        row: dict[str, Any] = {"epoch": epoch + 1, "step": step, "lr": lr}
        row.update({f"train/{k}": float(v) / max(1, n_done) for k, v in sums.items()})
        shares = balance.report()
        row.update({f"train/share_{k}": shares[f"ratio/{k}"] for k in sums if k != "loss"})
        row["time"] = round(time.time() - t0, 3)
        validate = (epoch + 1 == cfg.epochs) or (cfg.eval_every > 0 and (epoch + 1) % cfg.eval_every == 0)
        improved = False
        if d.main:
            if validate:
                eval_model = ema.module if ema is not None else core
                last_metrics = evaluate(eval_model, val_ds, cfg.img, conf=cfg.conf, iou=cfg.iou,
                                        batch=rank_batch, max_det=cfg.max_det, workers=cfg.workers,
                                        device=device)
                row.update({f"val/{k}": v for k, v in last_metrics.items()
                            if k not in ("num_images", "num_detections")})
                fit = last_metrics.get(FITNESS_KEY, float("nan"))
                fit = 0.0 if math.isnan(fit) else fit
                if fit > best_fitness:
                    best_fitness, improved = fit, True
            history.append(row)
            state = {
                "epoch": epoch + 1,
                "step": step,
                "model": core.state_dict(),
                "ema": ema.state_dict() if ema is not None else None,
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict() if amp else None,
                "loss": loss_state_dict(loss_fn),
                "model_config": model_config,
                "config": cfg.to_dict(),
                "names": names,
                "best_fitness": best_fitness,
                "fitness_key": FITNESS_KEY,
                "history": history,
                "rng": get_rng_state(),
                "world_size": d.world,
                "img_size": cfg.img,
                "torch_version": str(torch.__version__),
            }
            if improved:
                save_checkpoint(best_path, state)
            save_checkpoint(last_path, state)
            write_results_csv(out / "results.csv", history)
            if writer is not None:
                for k, v in row.items():
                    if k not in ("epoch", "step") and isinstance(v, (int, float)) and math.isfinite(v):
                        writer.add_scalar(k, v, epoch + 1)
                writer.flush()
            parts_s = " ".join(f"{k.split('/', 1)[1]} {v:.4f}" for k, v in row.items()
                               if k.startswith("train/") and not k.startswith("train/share_"))
            parts_s += " (shares " + " ".join(f"{k[len('train/share_'):]} {v:.0%}" for k, v in row.items()
                                              if k.startswith("train/share_")) + ")"
            for msg in balance.warnings():
                _say(d, f"loss balance: {msg}")
            val_s = (f" | val AP {last_metrics['AP']:.4f} AP50 {last_metrics['AP50']:.4f}" if validate else "")
            _say(d, f"epoch {epoch + 1}/{cfg.epochs} lr {lr:.3g} {parts_s}{val_s} ({row['time']:.1f}s)"
                    f"{' *best*' if improved else ''}")
        d.barrier()

    if writer is not None:
        writer.close()
    return {
        "out": str(out),
        "last": str(last_path),
        "best": str(best_path) if best_path.exists() else None,
        "best_fitness": best_fitness,
        "epochs": cfg.epochs,
        "step": step,
        "metrics": last_metrics or {k[4:]: v for k, v in (history[-1] if history else {}).items()
                                    if k.startswith("val/")},
        "history": history,
        "names": names,
    }
