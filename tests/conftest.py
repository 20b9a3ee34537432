"""Shared test fixtures.

Tests that need the shared fixtures and datasets use ``shared_dir``: it reads ``ASSIGNLAB_SHARED``
(default ``../shared`` beside the checkout), skips with a reason when the folder is absent, and
fails instead when ``CI=true`` so that CI always runs them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _shared_path() -> Path:
    env = os.environ.get("ASSIGNLAB_SHARED")
    return Path(env) if env else (REPO.parent / "shared")


def require_shared(*parts: str) -> Path:
    """The path ``shared/<parts>``; skip (or fail on CI) when it does not exist."""
    p = _shared_path().joinpath(*parts)
    if not p.exists():
        msg = f"shared data not found at {p} (set ASSIGNLAB_SHARED to the shared/ folder)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg + " -- required on CI")
        pytest.skip(msg)
    return p


@pytest.fixture
def shared_dir() -> Path:
    return require_shared()
