"""Fault injection for testing crash safety (kill a training run at a chosen point).

Set ``ASSIGNLAB_FAULT`` to a comma-separated list of ``point[:n]`` items; when the process reaches
``point`` for the ``n``-th time (default 1), it kills itself with ``SIGKILL`` (no cleanup, no
``finally`` blocks, no flushing: exactly what a power cut, an OOM killer or a preempted node does).
The points are:

=========================  ====================================================================
``step``                   after an optimizer step (global step count), i.e. mid-epoch
``epoch_end``              after an epoch's training, before its checkpoint is written
``save.partial``           inside :func:`~assignlab.engine.checkpoint.save_checkpoint`, after half
                           of the temporary file's bytes were written
``save.before_replace``    the temporary file is complete and synced, not yet renamed over the
                           target
=========================  ====================================================================

Example: ``ASSIGNLAB_FAULT=save.partial:2`` dies while writing the second checkpoint, which must
leave the first one intact; ``ASSIGNLAB_FAULT=step:7`` dies after the 7th optimizer step.
Without the variable :func:`fault_point` is a dictionary lookup and returns.
"""

from __future__ import annotations

import os
import signal
import sys

__all__ = ["ENV_VAR", "fault_point"]

ENV_VAR = "ASSIGNLAB_FAULT"
_hits: dict[str, int] = {}


def _parse(spec: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        point, _, n = item.partition(":")
        out[point.strip()] = int(n) if n.strip() else 1
    return out


def fault_point(name: str) -> None:
    """Kill this process with SIGKILL if ``ASSIGNLAB_FAULT`` asks for it at this hit of ``name``."""
    spec = os.environ.get(ENV_VAR)
    if not spec:
        return
    want = _parse(spec).get(name)
    if want is None:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] == want:
        sys.stderr.write(f"[assignlab] {ENV_VAR}: killing process {os.getpid()} at {name} #{want}\n")
        sys.stderr.flush()
        if hasattr(signal, "SIGKILL"):
            os.kill(os.getpid(), signal.SIGKILL)
        os._exit(137)  # pragma: no cover - platforms without SIGKILL
