"""Dataset YAML validation, and the Batch / collate / build_loader side."""

from __future__ import annotations

import pytest
import torch
from data_testutils import make_voc

from assignlab.core import GroundTruth
from assignlab.data import (
    Batch,
    DataConfigError,
    ImageMeta,
    SyntheticConfig,
    SyntheticDataset,
    build_dataset,
    build_loader,
    collate,
    load_data_config,
    to_original,
)


def _yaml(tmp_path, text, name="d.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_unknown_key_lists_allowed(tmp_path):
    p = _yaml(tmp_path, "format: voc\ntrain: a.txt\nnmes: [a]\n")
    with pytest.raises(DataConfigError, match=r"unknown key\(s\) \['nmes'\]; allowed keys: format, path, train"):
        load_data_config(p)


@pytest.mark.parametrize(
    "text,match",
    [
        ("format: pascal\ntrain: a.txt\n", "'format' must be one of voc, yolo, coco, widerface, synthetic"),
        ("train: images\nnames: [a, b]\nnc: 3\n", "'nc' is 3 but 'names' lists 2"),
        ("train: images\nnames: [a, a]\n", "duplicate class names"),
        ("train: images\nnames: {1: a, 2: b}\n", "keys must be the integers 0..1"),
        ("train: images\n", "yolo format needs 'names'"),
        ("format: voc\nmerge_classes: 'yes'\ntrain: a.txt\n", "'merge_classes' must be true or false"),
        ("format: coco\nimages: {training: x}\ntrain: a.json\n", "'images' must be a folder"),
        ("format: coco\n", "needs at least one of 'train', 'val', 'test'"),
        ("- a\n- b\n", "must be a mapping"),
        ("!!python/object/apply:os.system ['echo hi']\n", "invalid YAML"),
    ],
)
def test_bad_values_rejected(tmp_path, text, match):
    with pytest.raises(DataConfigError, match=match):
        load_data_config(_yaml(tmp_path, text))


def test_relative_path_and_inference(tmp_path):
    (tmp_path / "sub" / "ds" / "Annotations").mkdir(parents=True)
    p = _yaml(tmp_path / "sub", "path: ds\ntrain: ImageSets/Main/train.txt\nnames: [x]\n")
    cfg = load_data_config(p)
    assert cfg.format == "voc" and cfg.path == str(tmp_path / "sub" / "ds")
    assert cfg.resolve(cfg.train) == str(tmp_path / "sub" / "ds" / "ImageSets" / "Main" / "train.txt")
    assert load_data_config(_yaml(tmp_path, "train: a/instances_train.json\n")).format == "coco"
    assert load_data_config(_yaml(tmp_path, "train: train/label.txt\n")).format == "widerface"
    assert load_data_config(_yaml(tmp_path, "train: [images/a, images/b]\nnames: [x]\n")).format == "yolo"
    with pytest.raises(DataConfigError, match="split 'val' is not configured"):
        build_dataset(cfg, "val", 32, train=False)
    with pytest.raises(DataConfigError, match="not found"):
        load_data_config(tmp_path / "nope.yaml")
    assert load_data_config(_yaml(tmp_path, "download: https://x\ntrain: a.txt\nnames: [x]\n"))  # ignored key


def test_path_expands_environment_variables(tmp_path, monkeypatch):
    (tmp_path / "y").mkdir()
    text = 'path: "${AL_TEST_ROOT:-../fallback}/ds"\ntrain: ImageSets/Main/train.txt\nformat: voc\nnames: [x]\n'
    p = _yaml(tmp_path / "y", text)
    monkeypatch.delenv("AL_TEST_ROOT", raising=False)
    # unset: the default, relative to the YAML file's folder
    assert load_data_config(p).path == str(tmp_path / "fallback" / "ds")
    # set to an absolute path
    monkeypatch.setenv("AL_TEST_ROOT", str(tmp_path / "abs"))
    assert load_data_config(p).path == str(tmp_path / "abs" / "ds")
    # set to a relative path: relative to the working directory, not to the YAML file
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AL_TEST_ROOT", "rel")
    assert load_data_config(p).path == str(tmp_path / "rel" / "ds")
    # ${NAME} without a default and unset: a clear error naming the variable
    q = _yaml(tmp_path, "path: ${AL_TEST_UNSET_VAR}/ds\ntrain: a.txt\nformat: voc\nnames: [x]\n", "q.yaml")
    monkeypatch.delenv("AL_TEST_UNSET_VAR", raising=False)
    with pytest.raises(DataConfigError, match="environment variable AL_TEST_UNSET_VAR is not set"):
        load_data_config(q)


def test_bundled_data_configs_follow_assignlab_shared(tmp_path, monkeypatch):
    from pathlib import Path

    cfgs = Path(__file__).resolve().parents[2] / "configs" / "data"
    monkeypatch.setenv("ASSIGNLAB_SHARED", str(tmp_path / "elsewhere"))
    assert load_data_config(cfgs / "facemask.yaml").path == str(tmp_path / "elsewhere" / "data" / "facemask")
    monkeypatch.delenv("ASSIGNLAB_SHARED")
    assert load_data_config(cfgs / "tiny_coco.yaml").path == str(cfgs.parents[2] / "shared" / "data" / "tiny_coco")


def test_merge_name_default(tmp_path):
    cfg = load_data_config(_yaml(tmp_path, "train: i\nnames: [with_mask, without_mask]\n"))
    assert cfg.effective_merge_name(cfg.names) == "face"
    cfg = load_data_config(_yaml(tmp_path, "train: i\nnames: [car, bus]\nmerge_name: vehicle\n"))
    assert cfg.effective_merge_name(cfg.names) == "vehicle"
    assert load_data_config(_yaml(tmp_path, "train: i\nnames: [car, bus]\n")).effective_merge_name(["car"]) == "object"


def test_config_merge_classes_key(tmp_path):
    y = make_voc(tmp_path, {"a": {"objects": [("cat", [1, 1, 9, 9]), ("dog", [2, 2, 8, 8])]}})
    y.write_text(y.read_text() + "merge_classes: true\nmerge_name: pet\n")
    ds = build_dataset(load_data_config(y), "train", 32, train=False)
    assert ds.names == ["pet"] and ds.load_annotations(0)["labels"].tolist() == [0, 0]


def test_collate_batch_and_to_original():
    ds = SyntheticDataset(SyntheticConfig(num_train=3, image_size=(100, 50)), "train", 64, train=False)
    samples = [ds[i] for i in range(3)]
    b = collate(samples)
    assert isinstance(b, Batch) and isinstance(b.gt, GroundTruth) and len(b) == 3
    assert b.images.shape == (3, 3, 64, 64) and b.images.dtype == torch.float32
    G = max(len(s[1]["boxes"]) for s in samples)
    assert b.gt.boxes.shape == (3, G, 4) and b.gt.ignore.shape == (3, 0, 4)
    assert b.gt.num_boxes().tolist() == [len(s[1]["boxes"]) for s in samples]
    m = b.meta[1]
    assert isinstance(m, ImageMeta) and m.scale == 0.64 and m.pad == (16.0, 0.0) and m.orig_size == (100, 50)
    boxes, _ = b.gt.image(1)
    torch.testing.assert_close(to_original(boxes, m), ds.load_annotations(1)["boxes"], atol=1e-4, rtol=0)
    assert b.gt.num_dropped == 0
    s0 = (samples[0][0], {**samples[0][1], "num_dropped": 2})
    assert collate([s0, samples[1]]).gt.num_dropped == 2
    moved = b.to("cpu")
    assert moved.images.device.type == "cpu" and moved.meta is b.meta


def test_to_original_flipped():
    m = ImageMeta(path="x", image_id=0, orig_size=(10, 20), scale=2.0, pad=(4.0, 0.0), flipped=True)
    # letterboxed (48 px canvas) box (8, 2, 12, 6) flipped back: (36, 2, 40, 6) -> ((36-4)/2, 1, 18, 3)
    assert to_original(torch.tensor([[8.0, 2.0, 12.0, 6.0]]), m, size=48).tolist() == [[16.0, 1.0, 18.0, 3.0]]
    with pytest.raises(ValueError, match="flipped"):
        to_original(torch.zeros(1, 4), m)


def test_build_loader_seeded_and_workers_agree():
    ds = SyntheticDataset(SyntheticConfig(num_train=8), "train", 64, train=True, seed=1)
    order = [[m.image_id for b in build_loader(ds, 4, shuffle=True, seed=s) for m in b.meta] for s in (0, 0, 1)]
    assert order[0] == order[1] and sorted(order[0]) == list(range(8)) and order[0] != order[2]
    one = list(build_loader(ds, 4, shuffle=False, workers=0))
    two = list(build_loader(ds, 4, shuffle=False, workers=2))
    # per-sample augmentation seeding: identical batches whatever the number of workers
    for x, y in zip(one, two):
        assert torch.equal(x.images, y.images) and torch.equal(x.gt.boxes, y.gt.boxes)
    ds.set_epoch(1)
    three = list(build_loader(ds, 4, shuffle=False, workers=0))
    assert not torch.equal(one[0].images, three[0].images)
    with pytest.raises(ValueError, match="batch_size"):
        build_loader(ds, 0, shuffle=False)


def test_distributed_loader(tmp_path):
    import torch.distributed as dist
    from torch.utils.data import DistributedSampler

    ds = SyntheticDataset(SyntheticConfig(num_train=10), "train", 32, train=False)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        ld = build_loader(ds, 4, shuffle=True, seed=3, distributed=True)
        assert isinstance(ld.sampler, DistributedSampler)
        e0 = [m.image_id for b in ld for m in b.meta]
        ld.set_epoch(1)
        e1 = [m.image_id for b in ld for m in b.meta]
        assert sorted(e0) == sorted(e1) == list(range(10)) and e0 != e1
    finally:
        dist.destroy_process_group()
