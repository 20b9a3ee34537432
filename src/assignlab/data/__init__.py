"""Detection data: dataset configs, readers (VOC, YOLO, COCO, WIDER FACE, synthetic), letterbox
transforms and the batching loader.

Usage::

    from assignlab.data import load_data_config, build_dataset, build_loader

    cfg = load_data_config("facemask.yaml")          # None -> the procedural synthetic dataset
    train = build_dataset(cfg, "train", img_size=320, train=True, merge_classes=True)
    loader = build_loader(train, batch_size=16, shuffle=True, workers=2, seed=0)
    for batch in loader:                              # Batch: images (B,3,320,320), gt, meta
        ...

See :mod:`assignlab.data.dataset` for the bad-input policy (skip + count by default, errors with
``strict=True``), :mod:`assignlab.data.transforms` for the letterbox geometry, and the optional
training augmentation :mod:`assignlab.data.mosaic` (``mosaic=1.0``), :mod:`assignlab.data.color`
(``hsv=(0.015, 0.7, 0.4)``) with the image cache :mod:`assignlab.data.cache` (``cache="ram"``)::

    train = build_dataset(cfg, "train", 320, train=True, merge_classes=True,
                          mosaic=1.0, hsv=(0.015, 0.7, 0.4), cache="ram")
"""

from __future__ import annotations

from .cache import DEFAULT_CACHE_MAX_MB, CacheTooLargeError, ImageCache, cache_mode
from .coco import COCODataset
from .config import (
    FORMATS,
    DataConfig,
    DataConfigError,
    SyntheticConfig,
    data_config_from_dict,
    load_data_config,
)
from .dataset import DatasetError, DetectionDataset, LabelError, LoadReport, Record, read_image
from .loader import Batch, DetectionLoader, ImageMeta, build_loader, collate, to_original
from .mosaic import Mosaic, MosaicParams, MosaicTile
from .synthetic import SyntheticDataset
from .transforms import DetectionTransform, Letterbox, LetterboxParams
from .voc import VOCDataset
from .widerface import WiderFaceDataset
from .yolo import YOLODataset

__all__ = [
    "FORMATS",
    "Batch",
    "COCODataset",
    "CacheTooLargeError",
    "DataConfig",
    "DataConfigError",
    "DatasetError",
    "DetectionDataset",
    "DetectionLoader",
    "DetectionTransform",
    "ImageCache",
    "ImageMeta",
    "LabelError",
    "Letterbox",
    "LetterboxParams",
    "LoadReport",
    "Mosaic",
    "MosaicParams",
    "MosaicTile",
    "Record",
    "SyntheticConfig",
    "SyntheticDataset",
    "VOCDataset",
    "WiderFaceDataset",
    "YOLODataset",
    "build_dataset",
    "build_loader",
    "cache_mode",
    "collate",
    "data_config_from_dict",
    "load_data_config",
    "read_image",
    "to_original",
]

DATASETS = {
    "voc": VOCDataset,
    "yolo": YOLODataset,
    "coco": COCODataset,
    "widerface": WiderFaceDataset,
}


def build_dataset(
    cfg: DataConfig | None,
    split: str,
    img_size: int,
    train: bool,
    merge_classes: bool = False,
    strict: bool = False,
    seed: int = 0,
    **kwargs,
) -> DetectionDataset:
    """One split of a dataset.

    Args:
        cfg: from :func:`load_data_config` (``None`` = synthetic defaults).
        split: ``train`` / ``val`` / ``test``.
        img_size: letterbox side ``S`` of the returned images.
        train: training augmentation (scale jitter + horizontal flip) and replacement of
            undecodable images by the next one (evaluation uses a gray stand-in instead).
        merge_classes: merge every class into one (also enabled by the config's
            ``merge_classes``); ``names`` becomes ``[merge_name]``.
        strict: raise on every file-level problem instead of skipping and counting it.
        seed: seed of the training augmentation (per sample: ``(seed, epoch, index)``, see
            ``DetectionDataset.set_epoch``) and of the synthetic images when their config has none.
        **kwargs: ``scale_range`` / ``flip_p`` for the training transform; ``mosaic`` (probability),
            ``mosaic_close_epoch`` and ``hsv`` (colour jitter amplitudes) for the training
            augmentation (see :class:`DetectionDataset`); ``cache`` (``False`` | ``True`` /
            ``"ram"`` | ``"resize"``) and ``cache_max_mb`` to decode every image into RAM now
            (:mod:`assignlab.data.cache`; refused with ``CacheTooLargeError`` above the limit).
    """
    cache = kwargs.pop("cache", False)
    cache_max_mb = kwargs.pop("cache_max_mb", DEFAULT_CACHE_MAX_MB)
    ds = _build(cfg, split, img_size, train, merge_classes, strict, seed, **kwargs)
    if cache_mode(cache) is not None:
        ds.cache_images(cache, cache_max_mb)
    return ds


def _build(cfg, split, img_size, train, merge_classes, strict, seed, **kwargs) -> DetectionDataset:
    if cfg is None:
        cfg = DataConfig()
    merge = bool(merge_classes or cfg.merge_classes)
    if cfg.format == "synthetic":
        return SyntheticDataset(
            cfg.synthetic,
            split,
            img_size,
            train,
            merge_classes=merge,
            strict=strict,
            seed=seed,
            names=cfg.names,
            **kwargs,
        )
    if cfg.format not in DATASETS:
        raise DataConfigError(f"unknown format {cfg.format!r}; allowed: {', '.join(FORMATS)}")
    return DATASETS[cfg.format](cfg, split, img_size, train, merge_classes=merge, strict=strict, seed=seed, **kwargs)
