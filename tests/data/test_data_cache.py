"""The RAM image cache: identical samples, one flat buffer, size limit refused, bad images, workers."""

from __future__ import annotations

import pytest
import torch
from data_testutils import corrupt_jpeg, make_voc

from assignlab.data import CacheTooLargeError, build_dataset, build_loader, cache_mode, load_data_config

SIZES = [(60, 90), (100, 50), (40, 40), (33, 77), (64, 64)]


def data(tmp_path):
    imgs = {f"im{k}": {"size": s, "objects": [("cat", [2, 3, s[1] - 5, s[0] - 4])]} for k, s in enumerate(SIZES)}
    return load_data_config(make_voc(tmp_path, imgs))


def same(a, b) -> bool:
    (ia, ta), (ib, tb) = a, b
    return (
        torch.equal(ia, ib)
        and all(torch.equal(ta[k], tb[k]) for k in ("boxes", "labels", "ignore"))
        and ta["meta"] == tb["meta"]
    )


def test_cache_mode_names():
    assert cache_mode(False) is None and cache_mode(None) is None and cache_mode("false") is None
    assert cache_mode(True) == "ram" and cache_mode("ram") == "ram" and cache_mode("RESIZE") == "resize"
    with pytest.raises(ValueError, match="cache must be one of false, true .*ram, resize; got 'disk'"):
        cache_mode("disk")


@pytest.mark.parametrize("kw", [{}, {"mosaic": 1.0}, {"mosaic": 0.5, "hsv": (0.015, 0.7, 0.4)}])
def test_ram_cache_gives_identical_samples(tmp_path, kw):
    cfg = data(tmp_path)
    plain = build_dataset(cfg, "train", 64, train=True, seed=2, **kw)
    cached = build_dataset(cfg, "train", 64, train=True, seed=2, cache="ram", **kw)
    c = cached.image_cache
    assert c is not None and c.mode == "ram" and c.num_cached == len(SIZES) and not c.extra
    assert c.nbytes == c.buffer.numel() == sum(3 * h * w for h, w in SIZES)  # one flat buffer
    for ep in (0, 1):
        plain.set_epoch(ep)
        cached.set_epoch(ep)
        for i in range(len(plain)):
            assert same(plain[i], cached[i])


def test_resize_cache_exact_for_evaluation_and_mosaic(tmp_path):
    cfg = data(tmp_path)
    ev, ev_c = (build_dataset(cfg, "train", 64, train=False, cache=m) for m in (False, "resize"))
    c = ev_c.image_cache
    assert c.mode == "resize"
    assert c.nbytes == sum(3 * round(h * 64 / max(h, w)) * round(w * 64 / max(h, w)) for h, w in SIZES)
    for i in range(len(ev)):
        assert same(ev[i], ev_c[i])  # the letterbox resizes to exactly the cached size
        assert ev_c[i][1]["meta"].orig_size == SIZES[i]
    mo, mo_c = (build_dataset(cfg, "train", 64, train=True, mosaic=1.0, cache=m) for m in (False, "resize"))
    for i in range(len(mo)):
        assert same(mo[i], mo_c[i])  # tiles are resized to the long side anyway
    # scale-jittered (non-mosaic) samples: same boxes and meta, pixels resized twice (close, not equal)
    tr, tr_c = (build_dataset(cfg, "train", 64, train=True, cache=m) for m in (False, "resize"))
    (a, ta), (b, tb) = tr[0], tr_c[0]
    assert torch.equal(ta["boxes"], tb["boxes"]) and ta["meta"] == tb["meta"]
    assert (a - b).abs().mean() < 0.05


def test_cache_limit_is_refused_with_the_numbers(tmp_path):
    cfg = data(tmp_path)
    need = sum(3 * h * w for h, w in SIZES) / 2**20
    with pytest.raises(CacheTooLargeError, match=r"needs about 0 MB, more than the limit cache_max_mb=0.01; "
                                                  r"cache=resize would need 0 MB"):
        build_dataset(cfg, "train", 64, train=True, cache=True, cache_max_mb=0.01)
    assert need < 0.06
    ds = build_dataset(cfg, "train", 64, train=True, cache=True, cache_max_mb=0.06)  # fits
    assert ds.image_cache.num_cached == len(SIZES)
    with pytest.raises(ValueError, match="cache_max_mb must be > 0"):
        build_dataset(cfg, "train", 64, train=True, cache=True, cache_max_mb=0)


def test_undecodable_image_is_not_cached_and_still_replaced(tmp_path):
    y = make_voc(tmp_path, {f"im{k}": {"size": (40, 50), "objects": [("cat", [2, 2, 20, 20])]} for k in range(4)})
    corrupt_jpeg(tmp_path / "JPEGImages" / "im2.jpg")
    cfg = load_data_config(y)
    ds = build_dataset(cfg, "train", 32, train=True, cache="ram")
    assert ds.image_cache.num_failed == 1 and 2 not in ds.image_cache and 1 in ds.image_cache
    img, t = ds[2]  # replaced by the next readable image, as without the cache
    assert t["meta"].error and "im2.jpg" in t["meta"].error and t["meta"].path.endswith("im3.jpg")
    # mosaic tiles that cannot be decoded are replaced too
    mo = build_dataset(cfg, "train", 32, train=True, cache="ram", mosaic=1.0)
    img, t = mo[2]
    assert t["meta"].mosaic[0] == 3 and "im2.jpg" in t["meta"].error


def test_cached_dataset_with_worker_processes(tmp_path):
    cfg = data(tmp_path)
    ds = build_dataset(cfg, "train", 64, train=True, seed=1, mosaic=1.0, cache="resize")
    a = list(build_loader(ds, 2, shuffle=True, seed=4, workers=0))
    b = list(build_loader(ds, 2, shuffle=True, seed=4, workers=2))
    for x, y in zip(a, b):
        assert torch.equal(x.images, y.images) and torch.equal(x.gt.boxes, y.gt.boxes)
