"""HSV colour jitter: hand-computed gains, round trip, seeding, zero gains are a no-op."""

from __future__ import annotations

import colorsys

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from assignlab.data.color import hsv_gain, hsv_to_rgb, random_hsv, rgb_to_hsv


def px(*rgb: float) -> torch.Tensor:
    return torch.tensor(rgb, dtype=torch.float32).view(3, 1, 1)


def test_hand_computed_gains():
    # green (0, 1, 0): h = 1/3, s = 1, v = 1; gains (1.5, 1, 0.5) -> h = 0.5 (cyan), v = 0.5
    torch.testing.assert_close(hsv_gain(px(0, 1, 0), (1.5, 1, 0.5)), px(0, 0.5, 0.5))
    # saturation gain 0 removes the colour: every channel = v
    torch.testing.assert_close(hsv_gain(px(0.2, 0.4, 0.8), (1, 0, 1)), px(0.8, 0.8, 0.8))
    # value gain 1.5 on (0.2, 0.4, 0.6) (v = 0.6) scales every channel; gain 3 clamps v at 1 and
    # keeps s = 2/3: (1/3, 2/3, 1)
    torch.testing.assert_close(hsv_gain(px(0.2, 0.4, 0.6), (1, 1, 1.5)), px(0.3, 0.6, 0.9), atol=1e-6, rtol=0)
    torch.testing.assert_close(hsv_gain(px(0.2, 0.4, 0.6), (1, 1, 3)), px(1 / 3, 2 / 3, 1), atol=1e-6, rtol=0)
    # saturation clamps at 1: (0.5, 1, 1) has s = 0.5; gain 3 -> s = 1 -> (0, 1, 1)
    torch.testing.assert_close(hsv_gain(px(0.5, 1, 1), (1, 3, 1)), px(0, 1, 1), atol=1e-6, rtol=0)
    # hue wraps: h = 0.8 (magenta-ish) * 1.5 = 1.2 -> 0.2
    rgb = colorsys.hsv_to_rgb(0.8, 1.0, 1.0)
    exp = colorsys.hsv_to_rgb(0.2, 1.0, 1.0)
    torch.testing.assert_close(hsv_gain(px(*rgb), (1.5, 1, 1)), px(*exp), atol=1e-6, rtol=0)
    # gray stays gray whatever the hue / saturation gains
    torch.testing.assert_close(hsv_gain(px(0.45, 0.45, 0.45), (1.3, 1.7, 1)), px(0.45, 0.45, 0.45))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0, 1, width=32), min_size=3, max_size=3))
def test_matches_colorsys_and_round_trips(rgb):
    hsv = rgb_to_hsv(px(*rgb)).flatten().tolist()
    h, s, v = colorsys.rgb_to_hsv(*rgb)
    assert abs(hsv[1] - s) < 1e-5 and abs(hsv[2] - v) < 1e-6
    if s > 1e-4:
        assert min(abs(hsv[0] - h), 1 - abs(hsv[0] - h)) < 1e-4
    torch.testing.assert_close(hsv_to_rgb(rgb_to_hsv(px(*rgb))), px(*rgb), atol=1e-5, rtol=0)


def test_random_hsv_seeded_and_off_when_zero():
    img = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    state = g.get_state()
    assert random_hsv(img, None, g) is img
    assert random_hsv(img, (0, 0, 0), g) is img
    assert torch.equal(g.get_state(), state)  # nothing drawn when disabled
    a = random_hsv(img, (0.015, 0.7, 0.4), torch.Generator().manual_seed(3))
    b = random_hsv(img, (0.015, 0.7, 0.4), torch.Generator().manual_seed(3))
    c = random_hsv(img, (0.015, 0.7, 0.4), torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == img.shape and 0 <= a.min() and a.max() <= 1
    # the gains are 1 + U(-1, 1) * amplitude: the mean brightness moves by at most 40 % (v = 0.4)
    v0, v1 = rgb_to_hsv(img)[2].mean(), rgb_to_hsv(a)[2].mean()
    assert 0.6 * v0 - 1e-6 <= v1 <= 1.4 * v0 + 1e-6


def test_fast_gain_equals_the_hsv_round_trip():
    # hsv_gain skips the HSV planes and works in 64-row blocks: same result as the round trip
    img = torch.rand(3, 150, 37, generator=torch.Generator().manual_seed(2))
    img[:, :5] = 0.5  # gray rows (no hue)
    img[:, 5:9] = 0.0  # black rows
    for gains in [(1.01, 1.3, 0.8), (0.985, 0.3, 1.4), (1.015, 1.7, 0.6), (1.9, 0.0, 2.0)]:
        hsv = rgb_to_hsv(img)
        hsv = torch.stack([torch.remainder(hsv[0] * gains[0], 1.0), (hsv[1] * gains[1]).clamp(0, 1),
                           (hsv[2] * gains[2]).clamp(0, 1)])
        torch.testing.assert_close(hsv_gain(img, gains), hsv_to_rgb(hsv), atol=2e-6, rtol=0)
