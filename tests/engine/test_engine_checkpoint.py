"""Checkpoints: atomic replacement under a crash, weights_only refusal of pickled code, RNG states."""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from assignlab.engine import checkpoint as ck_mod
from assignlab.engine.checkpoint import (
    CheckpointError,
    get_rng_state,
    load_checkpoint,
    save_checkpoint,
    set_rng_state,
)


def _state(v: float) -> dict:
    return {"model": {"w": torch.full((3, 3), v)}, "epoch": int(v), "names": ["a"], "cfg": {"lr": 0.1, "x": None}}


def test_roundtrip(tmp_path):
    p = tmp_path / "last.pt"
    save_checkpoint(p, _state(1.0))
    ck = load_checkpoint(p)
    assert ck["format"] == "assignlab-checkpoint" and ck["epoch"] == 1
    assert torch.equal(ck["model"]["w"], torch.ones(3, 3))
    assert ck["cfg"] == {"lr": 0.1, "x": None}
    assert [f.name for f in tmp_path.iterdir()] == ["last.pt"]


def test_crash_mid_write_keeps_previous_file(tmp_path, monkeypatch):
    p = tmp_path / "last.pt"
    save_checkpoint(p, _state(1.0))
    before = p.read_bytes()

    def crash(name):
        if name == "save.partial":
            raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(ck_mod, "fault_point", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(p, _state(2.0))
    assert p.read_bytes() == before
    assert load_checkpoint(p)["epoch"] == 1
    assert [f.name for f in tmp_path.iterdir()] == ["last.pt"]  # temp file removed


def test_disk_full_is_a_clear_error(tmp_path, monkeypatch):
    p = tmp_path / "last.pt"
    save_checkpoint(p, _state(1.0))

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ck_mod.os, "fsync", full)
    with pytest.raises(CheckpointError, match=r"cannot write checkpoint .*last\.pt: No space left on device; "
                                              r"the previous last\.pt is intact"):
        save_checkpoint(p, _state(2.0))
    monkeypatch.undo()
    assert load_checkpoint(p)["epoch"] == 1
    assert [f.name for f in tmp_path.iterdir()] == ["last.pt"]


def test_sigkill_mid_write_keeps_previous_file(tmp_path):
    """A real SIGKILL half-way through writing: the old file survives; the next save cleans up."""
    p = tmp_path / "last.pt"
    code = textwrap.dedent(f"""
        import torch
        from assignlab.engine.checkpoint import save_checkpoint
        save_checkpoint({str(p)!r}, {{"epoch": 1, "w": torch.zeros(1000)}})
        import os; os.environ["ASSIGNLAB_FAULT"] = "save.partial:1"
        save_checkpoint({str(p)!r}, {{"epoch": 2, "w": torch.ones(1000)}})
        print("not reached")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert "not reached" not in r.stdout
    assert load_checkpoint(p)["epoch"] == 1
    leftovers = [f.name for f in tmp_path.iterdir() if f.name != "last.pt"]
    assert len(leftovers) == 1 and leftovers[0].startswith(".last.pt.")  # the half-written temp file
    save_checkpoint(p, {"epoch": 3})
    assert [f.name for f in tmp_path.iterdir()] == ["last.pt"]
    assert load_checkpoint(p)["epoch"] == 3


class Evil:
    def __reduce__(self):
        return (os.system, ("touch EVIL_MARKER",))


def test_weights_only_refuses_pickled_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = tmp_path / "evil.pt"
    torch.save({"format": "assignlab-checkpoint", "version": 1, "model": Evil()}, p)
    with pytest.raises(CheckpointError) as ei:
        load_checkpoint(p)
    msg = str(ei.value)
    assert str(p) in msg and "refusing to load" in msg and "weights_only" in msg
    assert not (tmp_path / "EVIL_MARKER").exists()


def test_corrupt_and_foreign_files(tmp_path):
    p = tmp_path / "trunc.pt"
    save_checkpoint(p, _state(1.0))
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"trunc\.pt is corrupt or truncated"):
        load_checkpoint(p)
    g = tmp_path / "garbage.pt"
    g.write_bytes(b"hello, not a checkpoint")
    with pytest.raises(CheckpointError, match=r"garbage\.pt"):
        load_checkpoint(g)
    f = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, f)
    with pytest.raises(CheckpointError, match=r"foreign\.pt is not an assignlab checkpoint.*state_dict"):
        load_checkpoint(f)
    with pytest.raises(CheckpointError, match=r"missing\.pt does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    newer = tmp_path / "newer.pt"
    torch.save({"format": "assignlab-checkpoint", "version": 99}, newer)
    with pytest.raises(CheckpointError, match="version 99"):
        load_checkpoint(newer)


def test_unloadable_values_refused_before_writing(tmp_path):
    p = tmp_path / "x.pt"
    with pytest.raises(TypeError, match=r"state\['a'\]\[0\] has type ndarray"):
        save_checkpoint(p, {"a": [np.zeros(2)]})
    with pytest.raises(TypeError, match=r"state\['v'\] has type TorchVersion"):
        save_checkpoint(p, {"v": torch.__version__})  # a str subclass
    with pytest.raises(TypeError, match="float64"):
        save_checkpoint(p, {"x": np.float64(1.0)})  # a float subclass
    assert not p.exists()


def test_rng_state_roundtrip_through_file(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.randn()  # leave a cached gaussian around
    save_checkpoint(tmp_path / "r.pt", {"rng": get_rng_state()})
    want = (random.random(), np.random.rand(3).tolist(), np.random.randn(), torch.rand(3).tolist())
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    set_rng_state(load_checkpoint(tmp_path / "r.pt")["rng"])
    got = (random.random(), np.random.rand(3).tolist(), np.random.randn(), torch.rand(3).tolist())
    assert got == want
