"""Mosaic geometry (hand-computed), box validity / dropping, ignore regions, pixels follow boxes."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from assignlab.data.mosaic import Mosaic, MosaicParams, MosaicTile, resize_long_side, tile_shape

COLOURS = [(200, 0, 0), (0, 200, 0), (0, 0, 200), (200, 200, 0)]
GRAY = 114


def solid(h: int, w: int, colour) -> torch.Tensor:
    return torch.tensor(colour, dtype=torch.uint8).view(3, 1, 1).expand(3, h, w).contiguous()


def tile(h, w, k, boxes, labels, ignore=None) -> MosaicTile:
    return MosaicTile(
        solid(h, w, COLOURS[k]),
        (h, w),
        torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        torch.tensor(labels, dtype=torch.long),
        None if ignore is None else torch.tensor(ignore, dtype=torch.float32).reshape(-1, 4),
        None if ignore is None else torch.zeros(len(ignore), dtype=torch.long),
    )


def four_tiles() -> list[MosaicTile]:
    # four 64 x 64 tiles (tile scale r = 1 at S = 64), one or more boxes each
    return [
        tile(64, 64, 0, [[40, 40, 56, 56], [16, 40, 36, 56], [16, 40, 40, 56]], [0, 1, 2]),
        tile(64, 64, 1, [[8, 40, 24, 56]], [3]),
        tile(64, 64, 2, [[40, 8, 56, 24]], [4], ignore=[[0, 0, 64, 64]]),
        tile(64, 64, 3, [[8, 8, 24, 24], [0, 8, 1.5, 40]], [5, 6]),
    ]


def colour_at(img: torch.Tensor, y: int, x: int) -> tuple[int, ...]:
    return tuple(round(v * 255) for v in img[:, y, x].tolist())


def test_tile_shape_matches_letterbox_rounding():
    assert tile_shape((200, 100), 64) == (64, 32)
    assert tile_shape((32, 128), 64) == (16, 64)
    assert tile_shape((64, 64), 64) == (64, 64)
    img = torch.zeros(3, 30, 90, dtype=torch.uint8)
    assert resize_long_side(img, 60).shape == (3, 20, 60)
    assert resize_long_side(img, 90) is img  # already the right size: no copy


def test_hand_computed_mosaic_boxes_and_pixels():
    """S = 64, centre (64, 64), window (32, 32, 64): the output is the canvas square [32, 96)^2,
    i.e. out = canvas - 32. Tiles: 0 at [0,64)^2, 1 at [64,128)x[0,64), 2 at [0,64)x[64,128),
    3 at [64,128)^2."""
    m = Mosaic(64)
    p = MosaicParams(64, (64, 64), (32, 32, 64))
    out = m(p, four_tiles())
    expected = torch.tensor(
        [
            [8, 8, 24, 24],  # tile 0 (40,40,56,56) - 32
            [0, 8, 8, 24],  # tile 0 (16,40,40,56) -> (-16,8,8,24), 8/24 = 33 % visible: kept, clipped
            [40, 8, 56, 24],  # tile 1 (8,40,24,56) + (64, 0) - 32
            [8, 40, 24, 56],  # tile 2 (40,8,56,24) + (0, 64) - 32
            [40, 40, 56, 56],  # tile 3 (8,8,24,24) + (64, 64) - 32
        ],
        dtype=torch.float32,
    )
    torch.testing.assert_close(out.boxes, expected, rtol=0, atol=0)
    # dropped: tile 0 (16,40,36,56) keeps 4 of 20 px (20 % < 25 %); tile 3 (0,8,1.5,40) is 1.5 px wide
    assert out.labels.tolist() == [0, 2, 3, 4, 5]
    assert out.tile_index.tolist() == [0, 0, 1, 2, 3]
    assert out.num_dropped == 2
    # tile 2's ignore region (0,0,64,64) -> canvas (0,64,64,128) -> (-32,32,32,96) -> clipped
    torch.testing.assert_close(out.ignore, torch.tensor([[0.0, 32, 32, 64]]), rtol=0, atol=0)
    assert out.ignore_labels.tolist() == [0]
    # pixels: each quadrant of the output is one tile's colour
    img = out.image
    assert img.shape == (3, 64, 64) and img.dtype == torch.float32
    for k, (y, x) in enumerate([(0, 0), (0, 63), (63, 0), (63, 63)]):
        assert colour_at(img, y, x) == COLOURS[k]
    assert colour_at(img, 31, 31) == COLOURS[0] and colour_at(img, 32, 32) == COLOURS[3]
    # boxes-only path gives the same boxes
    bx, lb, ig, _, src, nd = m.apply_boxes(p, four_tiles())
    assert torch.equal(bx, out.boxes) and torch.equal(ig, out.ignore) and nd == 2


def test_flip_mirrors_boxes_and_pixels():
    m = Mosaic(64)
    plain = m(MosaicParams(64, (64, 64), (32, 32, 64)), four_tiles())
    flip = m(MosaicParams(64, (64, 64), (32, 32, 64), flipped=True), four_tiles())
    assert torch.equal(flip.image, plain.image.flip(-1))
    exp = plain.boxes.clone()
    exp[:, [0, 2]] = 64 - plain.boxes[:, [2, 0]]
    assert torch.equal(flip.boxes, exp)
    assert flip.ignore.tolist() == [[32.0, 32.0, 64.0, 64.0]]


def test_scaled_window_halves_everything():
    # window (0, 0, 128): the whole canvas shrunk to 64 (scale g = 0.5), out = canvas / 2
    m = Mosaic(64)
    out = m(MosaicParams(64, (64, 64), (0, 0, 128)), four_tiles())
    # tile 0's (16,40,36,56) is fully visible now: nothing is cut, only the 1.5 px box shrinks to
    # 0.75 px and is dropped
    assert out.num_dropped == 1
    assert out.boxes[3].tolist() == [36.0, 20.0, 44.0, 28.0]  # tile 1 (72,40,88,56) / 2
    assert out.tile_index.tolist() == [0, 0, 0, 1, 2, 3]
    assert out.ignore.tolist() == [[0.0, 32.0, 32.0, 64.0]]
    for k, (y, x) in enumerate([(8, 8), (8, 56), (56, 8), (56, 56)]):
        assert colour_at(out.image, y, x) == COLOURS[k]


def test_non_square_tile_and_window_past_the_canvas():
    """Tile 0 is 32 x 128 (h x w) -> resized 16 x 64 (scale 0.5); centre (40, 40) puts it at
    canvas (-24, 24, 40, 40), cut at x = 0; the window (-16, -16, 64) reaches past the canvas."""
    m = Mosaic(64)
    tiles = four_tiles()
    tiles[0] = tile(32, 128, 0, [[64, 0, 128, 32], [0, 0, 40, 32]], [7, 8])
    out = m(MosaicParams(64, (40, 40), (-16, -16, 64)), tiles)
    # (64,0,128,32) * 0.5 = (32,0,64,16) + (-24, 24) = canvas (8,24,40,40) + 16 = (24,40,56,56)
    assert out.boxes[0].tolist() == [24.0, 40.0, 56.0, 56.0]
    # (0,0,40,32) * 0.5 + (-24, 24) = canvas (-24,24,-4,40): outside the canvas, dropped
    assert out.labels.tolist()[0] == 7 and 8 not in out.labels.tolist()
    img = out.image
    assert colour_at(img, 5, 5) == (GRAY,) * 3  # canvas (-11, -11): outside
    assert colour_at(img, 48, 40) == COLOURS[0]  # canvas (24, 32): tile 0
    assert colour_at(img, 48, 10) == (GRAY,) * 3  # canvas (-6, 32): tile 0 there, but cut by the canvas
    assert (out.boxes >= 0).all() and (out.boxes <= 64).all()


def test_sample_is_seeded_and_in_range():
    m = Mosaic(64, translate=0.1)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    a, b = m.sample(10, g1), m.sample(10, g2)
    assert a == b
    for s in range(50):
        others, p = m.sample(7, torch.Generator().manual_seed(s))
        assert len(others) == 3 and all(0 <= k < 7 for k in others)
        assert all(32 <= c < 96 for c in p.center)
        x0, y0, side = p.window
        assert round(64 / 1.5) <= side <= 128
        # the window centre stays within +-translate * S / g of the canvas centre
        for o in (x0, y0):
            assert abs(o + side / 2 - 64) <= 0.1 * side + 1


def test_bad_parameters():
    with pytest.raises(ValueError, match="scale_range"):
        Mosaic(64, scale_range=(0, 1))
    with pytest.raises(ValueError, match="translate"):
        Mosaic(64, translate=0.7)
    with pytest.raises(ValueError, match="4 tiles"):
        Mosaic(64)(MosaicParams(64, (64, 64), (32, 32, 64)), four_tiles()[:3])


@st.composite
def random_tiles(draw):
    tiles = []
    for k in range(4):
        h, w = draw(st.integers(8, 120)), draw(st.integers(8, 120))
        n = draw(st.integers(0, 6))
        boxes = []
        for _ in range(n):
            x1, y1 = draw(st.floats(0, w - 1)), draw(st.floats(0, h - 1))
            boxes.append([x1, y1, draw(st.floats(x1 + 0.5, w)), draw(st.floats(y1 + 0.5, h))])
        ign = [[0.0, 0.0, w / 2, h / 2]] if draw(st.booleans()) else None
        tiles.append(tile(h, w, k, boxes, list(range(10 * k, 10 * k + n)), ignore=ign))
    return tiles


@settings(max_examples=40, deadline=None)
@given(tiles=random_tiles(), seed=st.integers(0, 2**31 - 1))
def test_property_boxes_valid_counted_and_on_their_tile(tiles, seed):
    S = 64
    m = Mosaic(S, flip_p=0.5)
    _, p = m.sample(4, torch.Generator().manual_seed(seed))
    out = m(p, tiles)
    b = out.boxes
    assert out.image.shape == (3, S, S) and 0 <= out.image.min() and out.image.max() <= 1
    assert ((b >= 0) & (b <= S)).all()
    assert ((b[:, 2] - b[:, 0]) >= m.min_size).all() and ((b[:, 3] - b[:, 1]) >= m.min_size).all()
    total = sum(len(t.boxes) for t in tiles)
    assert len(b) + out.num_dropped == total
    assert len(out.labels) == len(b) == len(out.tile_index)
    # labels encode their tile (10 * k + j): kept boxes keep their own label
    assert all(lb // 10 == k for lb, k in zip(out.labels.tolist(), out.tile_index.tolist()))
    ig = out.ignore
    assert ((ig >= 0) & (ig <= S)).all() and (ig[:, 2] > ig[:, 0]).all() and (ig[:, 3] > ig[:, 1]).all()
    # pixels follow the boxes: the centre of a large enough kept box shows its tile's colour
    for (x1, y1, x2, y2), k in zip(b.tolist(), out.tile_index.tolist()):
        if min(x2 - x1, y2 - y1) >= 10:
            assert colour_at(out.image, int((y1 + y2) / 2), int((x1 + x2) / 2)) == COLOURS[k]
