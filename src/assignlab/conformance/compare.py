"""Comparison helpers shared by the fixture handlers. Each returns a list of mismatch messages
(empty when equal), so a handler can collect every difference of a case before reporting."""

from __future__ import annotations

import numpy as np


class NotImplementedYet(Exception):
    """Raised by a handler for a case whose assigner / loss / option is not implemented yet."""


def as_np(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def exact(name: str, actual, expected, where: np.ndarray | None = None) -> list[str]:
    a, e = as_np(actual), as_np(expected)
    if a.shape != e.shape:
        return [f"{name}: shape {a.shape} != expected {e.shape}"]
    if where is not None:
        a, e = a[where], e[where]
    bad = a != e
    if bad.any():
        idx = np.flatnonzero(bad)
        first = idx[:5].tolist()
        return [f"{name}: {bad.sum()} of {bad.size} differ; first at {first}: got {a.ravel()[first].tolist()} "
                f"want {e.ravel()[first].tolist()}"]
    return []


def close(name: str, actual, expected, where: np.ndarray | None = None, rtol: float = 1e-5,
          atol: float = 1e-5) -> list[str]:
    a, e = as_np(actual).astype(np.float64), as_np(expected).astype(np.float64)
    if a.shape != e.shape:
        return [f"{name}: shape {a.shape} != expected {e.shape}"]
    if where is not None:
        a, e = a[where], e[where]
    ok = np.isclose(a, e, rtol=rtol, atol=atol, equal_nan=False)
    if not ok.all():
        idx = np.flatnonzero(~ok)
        first = idx[:5].tolist()
        return [f"{name}: {(~ok).sum()} of {ok.size} differ beyond rtol={rtol} atol={atol}; first at {first}: "
                f"got {a.ravel()[first].tolist()} want {e.ravel()[first].tolist()}"]
    return []


def multiset_rows(name: str, ints_a, floats_a, ints_e, floats_e, atol: float = 1e-5) -> list[str]:
    """Compare two row multisets: integer columns exactly, float columns within ``atol``.
    Rows are sorted by the integer columns, then by the float columns."""
    ia, fa, ie, fe = (as_np(x) for x in (ints_a, floats_a, ints_e, floats_e))
    if ia.shape[0] != ie.shape[0]:
        return [f"{name}: {ia.shape[0]} rows, expected {ie.shape[0]}"]

    def order(i, f):
        keys = [f[:, k] for k in range(f.shape[1] - 1, -1, -1)] + [i[:, k] for k in range(i.shape[1] - 1, -1, -1)]
        return np.lexsort(keys) if len(i) else np.arange(0)

    oa, oe = order(ia, fa), order(ie, fe)
    return exact(f"{name}[ints]", ia[oa], ie[oe]) + close(f"{name}[floats]", fa[oa], fe[oe], rtol=0, atol=atol)
