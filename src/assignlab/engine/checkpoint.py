"""Crash-safe checkpoints that load without executing code.

Saving is *atomic*: the bytes go to a temporary file in the target's folder, are flushed and
``fsync``-ed, then ``os.replace`` renames the temporary file over the target (an atomic operation
on POSIX and Windows within one file system) and the folder is synced. A crash at any moment
leaves either the old checkpoint or the new one, never a truncated mix; a stale temporary file
left by a crash is removed by the next save.

Loading uses ``torch.load(weights_only=True)``: only tensors and plain containers (dict, list,
tuple, str, int, float, bool, None) are unpickled, so a malicious ``.pt`` file cannot run code.
Everything an assignlab checkpoint holds is therefore stored in those types: the random
generator states of numpy and Python become tensors and lists (:func:`get_rng_state`).

A checkpoint is a dict with ``"format": "assignlab-checkpoint"`` and ``"version"``, plus (from
the trainer) ``model`` / ``ema`` state dicts, ``model_config`` (``Detector`` kwargs),
``optimizer``, ``scaler``, ``epoch`` (last completed, 0-based), ``step``, ``rng``, ``config``
(the :class:`~assignlab.engine.config.TrainConfig` as a dict), ``names``, ``best_fitness``,
``history`` (the rows of ``results.csv``).
"""

from __future__ import annotations

import io
import os
import pickle
import random
import tempfile
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .faults import fault_point

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "CheckpointError",
    "atomic_write_bytes",
    "get_rng_state",
    "load_checkpoint",
    "save_checkpoint",
    "set_rng_state",
]

CHECKPOINT_FORMAT = "assignlab-checkpoint"
CHECKPOINT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, corrupt, unsafe or not an assignlab checkpoint."""


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows cannot open folders
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _tmp_prefix(path: Path) -> str:
    return f".{path.name}."


def atomic_write_bytes(path: str | Path, data: bytes, fault_points: bool = False) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, fsync, ``os.replace``).

    ``fault_points`` enables the ``save.*`` points of :mod:`assignlab.engine.faults`.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    folder.mkdir(parents=True, exist_ok=True)
    prefix = _tmp_prefix(path)
    # stale temporaries of an earlier crash (only our own prefix/suffix)
    for stale in folder.glob(f"{prefix}*.tmp"):
        try:
            stale.unlink()
        except OSError:  # pragma: no cover
            pass
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            half = len(data) // 2
            f.write(data[:half])
            f.flush()
            if fault_points:
                fault_point("save.partial")
            f.write(data[half:])
            f.flush()
            os.fsync(f.fileno())
        if fault_points:
            fault_point("save.before_replace")
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(folder)


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Atomically save ``state`` (tensors and plain containers only) to ``path``.

    The format marker and version are added. Raises ``TypeError`` up front if ``state`` holds a
    type that ``load_checkpoint`` would refuse, so an unloadable file is never written, and
    :class:`CheckpointError` (naming the file, e.g. "No space left on device") when writing fails;
    the previous file is then untouched.
    """
    state = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **state}
    _check_plain(state, "state")
    buf = io.BytesIO()
    torch.save(state, buf)
    try:
        atomic_write_bytes(path, buf.getvalue(), fault_points=True)
    except OSError as e:
        p = Path(path)
        keep = f"; the previous {p.name} is intact" if p.exists() else ""
        raise CheckpointError(f"cannot write checkpoint {p}: {e.strerror or e}{keep}") from e


_SCALARS = (str, int, float, bool, type(None))  # exact types: numpy scalars / str subclasses are refused
_OBJECTS = (torch.Tensor, torch.dtype, torch.device)


def _check_plain(obj: Any, where: str) -> None:
    if type(obj) in (dict, OrderedDict):
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"checkpoint key {where}[{k!r}] must be str or int")
            _check_plain(v, f"{where}[{k!r}]")
    elif type(obj) in (list, tuple):
        for i, v in enumerate(obj):
            _check_plain(v, f"{where}[{i}]")
    elif type(obj) not in _SCALARS and not isinstance(obj, _OBJECTS):
        raise TypeError(
            f"checkpoint value {where} has type {type(obj).__name__}; only tensors and plain "
            "containers can be loaded with weights_only=True"
        )


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load an assignlab checkpoint with ``weights_only=True``.

    Raises :class:`CheckpointError` naming the file when it is missing, truncated / corrupt,
    holds arbitrary pickled objects (refused, never executed), or is a valid torch file that is
    not an assignlab checkpoint (e.g. a bare state dict).
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint {p} does not exist")
    try:
        obj = torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        detail = [ln for ln in lines if "Unsupported global" in ln or "WeightsUnpickler" in ln]
        first = (detail or lines or [type(e).__name__])[0]
        raise CheckpointError(
            f"refusing to load {p}: it contains pickled objects other than tensors and plain "
            f"containers (weights_only=True). It is not an assignlab checkpoint or it was tampered "
            f"with; only load files you trust. Detail: {first}"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError, IndexError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"checkpoint {p} is corrupt or truncated ({p.stat().st_size} bytes) and cannot be read: {first}"
        ) from None
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
        what = f"a dict with keys {sorted(map(str, obj))[:8]}" if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(
            f"{p} is not an assignlab checkpoint (no format marker {CHECKPOINT_FORMAT!r}; found {what})"
        )
    v = obj.get("version")
    if not isinstance(v, int) or v > CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{p} has checkpoint version {v!r}; this assignlab reads versions <= {CHECKPOINT_VERSION}"
        )
    return obj


# ---------------------------------------------------------------------------------------------
# random generator states as weights_only-safe values
# ---------------------------------------------------------------------------------------------


def get_rng_state() -> dict[str, Any]:
    """The states of torch (CPU and CUDA), numpy and Python ``random`` as tensors / lists."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, pystate, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64).copy()),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": int(version), "state": [int(x) for x in pystate], "gauss_next": gauss_next},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the states captured by :func:`get_rng_state`."""
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([t.cpu() for t in cuda])
    n = state["numpy"]
    np.random.set_state(
        (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))
