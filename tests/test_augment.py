"""Joint crop/flip of images and maps, and the IG overlay."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from igkd.data import batch_crop_flip, ig_overlay

H = W = 8
PAD = 3


def _encoded(b: int, c: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel (i, j) of sample k, channel ch holds 1 + i*W + j + 100*ch + 1000*k; the map holds channel 0."""
    i = torch.arange(H).view(1, 1, H, 1)
    j = torch.arange(W).view(1, 1, 1, W)
    k = torch.arange(b).view(b, 1, 1, 1)
    ch = torch.arange(c).view(1, c, 1, 1)
    images = (1 + i * W + j + 100 * ch + 1000 * k).double()
    return images, images[:, 0].clone()


def _decode(out: torch.Tensor, k: int) -> tuple[int, int, bool]:
    """Recover (row offset, col offset, flipped) of sample k from its encoded channel 0."""
    plane = out[k, 0]
    r, c = (int(v) for v in torch.nonzero(plane)[0])
    src = int(plane[r, c]) - 1 - 1000 * k
    i, j = divmod(src, W)
    flipped = bool(plane[r, c + 1] < plane[r, c]) if c + 1 < W and plane[r, c + 1] > 0 else bool(plane[r, c - 1] > plane[r, c])
    dy = i + PAD - r
    dx = j + PAD - (W - 1 - c if flipped else c)
    return dy, dx, flipped


def _reference(image: torch.Tensor, dy: int, dx: int, flipped: bool) -> torch.Tensor:
    crop = F.pad(image, (PAD,) * 4)[..., dy : dy + H, dx : dx + W]
    return crop.flip(-1) if flipped else crop


def test_crop_flip_moves_map_with_image_and_matches_reference():
    images, maps = _encoded(400)
    out, out_maps = batch_crop_flip(images, maps, PAD, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == images.dtype
    assert torch.equal(out_maps, out[:, 0])  # the very same crop and flip, zero padding included
    params = [_decode(out, k) for k in range(len(out))]
    for k, (dy, dx, flipped) in enumerate(params):
        assert torch.equal(out[k], _reference(images[k], dy, dx, flipped)), k
        if not flipped and dx > PAD:  # shifted right: zeros fill the right border, nowhere else
            assert torch.all(out[k, :, :, W - (dx - PAD) :] == 0)
            assert torch.all(out[k, 0, max(0, PAD - dy) : H - max(0, dy - PAD), : W - (dx - PAD)] > 0)
    assert {p[0] for p in params} == set(range(2 * PAD + 1))  # offsets cover [0, 2*padding]
    assert {p[1] for p in params} == set(range(2 * PAD + 1))


def test_crop_flip_proportion_and_determinism():
    n = 4000
    images, maps = _encoded(n, c=1)
    out, out_maps = batch_crop_flip(images, maps, 0, torch.Generator().manual_seed(1))
    flipped = (out[:, 0, :, 0] > out[:, 0, :, 1]).all(dim=1)
    frac = flipped.double().mean().item()
    assert abs(frac - 0.5) < 4 * math.sqrt(0.25 / n)
    assert torch.equal(out[~flipped], images[~flipped]) and torch.equal(out[flipped], images[flipped].flip(-1))
    a = batch_crop_flip(images, maps, PAD, torch.Generator().manual_seed(7))
    b = batch_crop_flip(images, maps, PAD, torch.Generator().manual_seed(7))
    c = batch_crop_flip(images, maps, PAD, torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[0], c[0])


def test_crop_flip_identity_uint8_and_no_map():
    images, maps = _encoded(16)
    out, out_maps = batch_crop_flip(images, maps, 0, torch.Generator().manual_seed(0), flip=False)
    assert torch.equal(out, images) and torch.equal(out_maps, maps)
    small = (images % 200).to(torch.uint8)
    u8, u8_maps = batch_crop_flip(small, small[:, 0].clone(), PAD, torch.Generator().manual_seed(3))
    f64, _ = batch_crop_flip(small.double(), None, PAD, torch.Generator().manual_seed(3))
    assert u8.dtype == torch.uint8 and torch.equal(u8.double(), f64) and torch.equal(u8_maps, u8[:, 0])
    noflip, none_map = batch_crop_flip(images, None, PAD, torch.Generator().manual_seed(0), flip=False)
    assert none_map is None and all(not _decode(noflip, k)[2] for k in range(16))
    with pytest.raises(ValueError):
        batch_crop_flip(images, maps[:, :4], PAD, torch.Generator())


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_crop_flip_cuda_with_cpu_generator_matches_cpu():
    images, maps = _encoded(64)
    cpu = batch_crop_flip(images, maps, PAD, torch.Generator().manual_seed(4))
    gpu = batch_crop_flip(images.cuda(), maps.cuda(), PAD, torch.Generator().manual_seed(4))
    assert torch.equal(gpu[0].cpu(), cpu[0]) and torch.equal(gpu[1].cpu(), cpu[1])


# ---------------------------------------------------------------------------------------------
# overlay


def test_overlay_fraction_range_and_unchosen_unchanged():
    n, p = 20000, 0.1
    g = torch.Generator().manual_seed(0)
    images = torch.rand(n, 3, 4, 4, generator=g)
    maps = torch.randn(n, 4, 4, generator=g)
    out, chosen = ig_overlay(images, maps, p, torch.Generator().manual_seed(1))
    assert chosen.dtype == torch.bool and chosen.shape == (n,)
    assert abs(chosen.double().mean().item() - p) < 4 * math.sqrt(p * (1 - p) / n)
    assert out.min() >= 0 and out.max() <= 1 and not torch.isnan(out).any()
    assert torch.equal(out[~chosen], images[~chosen])
    assert (out[chosen] != images[chosen]).flatten(1).any(dim=1).all()
    again, chosen_again = ig_overlay(images, maps, p, torch.Generator().manual_seed(1))
    assert torch.equal(again, out) and torch.equal(chosen_again, chosen)


def test_overlay_matches_formula_for_known_power():
    g = torch.Generator().manual_seed(2)
    images = torch.rand(5, 3, 4, 4, generator=g)
    maps = torch.randn(5, 4, 4, generator=g)
    maps[3] = 0.7  # constant map: becomes zeros, no NaN
    out, chosen = ig_overlay(images, maps, 1.0, torch.Generator().manual_seed(0), power_range=(2.0, 2.0), mix=0.3)
    assert chosen.all()
    for k in range(5):
        m = maps[k].double().abs() ** 2
        spread = m.max() - m.min()
        m = (m - m.min()) / spread if spread > 0 else torch.zeros_like(m)
        expected = 0.7 * images[k].double() + 0.3 * m.expand(3, 4, 4)
        torch.testing.assert_close(out[k].double(), expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(out[3], 0.7 * images[3])
    signed = torch.tensor([[-1.0, 0.0], [0.5, -0.25]]).expand(5, 2, 2)
    linear, _ = ig_overlay(torch.zeros(5, 1, 2, 2), signed, 1.0, torch.Generator(), power_range=(1.0, 1.0), mix=1.0)
    expected = torch.tensor([[1.0, 0.0], [0.5, 0.25]])  # |m|: the sign of the attribution does not count
    assert torch.equal(linear[:, 0], expected.expand(5, 2, 2))


def test_overlay_power_is_log_uniform():
    n = 4000
    maps = torch.tensor([0.0, 0.5, 1.0, 1.0]).view(1, 2, 2).expand(n, 2, 2)
    out, _ = ig_overlay(torch.zeros(n, 1, 2, 2), maps, 1.0, torch.Generator().manual_seed(3))
    middle = 2 * out[:, 0, 0, 1].double()  # x = 0 and mix 0.5, so the map is 2 * output: 0.5 ** s
    s = torch.log(middle) / math.log(0.5)
    assert s.min() >= 1 - 1e-5 and s.max() <= 2 + 1e-5
    log_s = torch.log(s)  # uniform on [0, ln 2]: mean ln2/2, sd ln2/sqrt(12)
    assert abs(log_s.mean().item() - math.log(2) / 2) < 4 * math.log(2) / math.sqrt(12 * n)


def test_overlay_p_zero_and_bad_arguments():
    images = torch.rand(8, 1, 3, 3)
    out, chosen = ig_overlay(images, torch.rand(8, 3, 3), 0.0, torch.Generator().manual_seed(0))
    assert not chosen.any() and torch.equal(out, images) and out is not images
    with pytest.raises(ValueError):
        ig_overlay(images, torch.rand(8, 3, 3), 1.5, torch.Generator())
    with pytest.raises(ValueError):
        ig_overlay(images, torch.rand(8, 3, 3), 0.1, torch.Generator(), power_range=(0.0, 2.0))


# ---------------------------------------------------------------------------------------------
# Overlay order: normalise the whole map, then crop and flip it with its image (METHOD.md step 4)


def test_overlay_then_crop_equals_crop_then_overlay_for_the_same_draws():
    from igkd.data.augment import augment_batch, blend, draw_crop_flip, draw_overlay, normalize_maps

    b, c = 64, 3
    g = torch.Generator().manual_seed(0)
    images = torch.rand(b, c, H, W, generator=g)
    maps = torch.rand(b, H, W, generator=g) * 5
    seed = 123
    gen = torch.Generator().manual_seed(seed)
    cf = draw_crop_flip(b, H, W, PAD, gen)
    draw = draw_overlay(b, 0.5, gen, (1.0, 2.0))
    idx = draw.index
    assert 0 < idx.numel() < b
    # overlay the full images, then crop and flip the result
    full = images.index_copy(0, idx, blend(images[idx], normalize_maps(maps[idx], draw.exponents[idx])))
    overlay_then_crop = cf.apply(full)
    # crop and flip first (image and normalised map alike), then blend: what training does
    crop_then_overlay = augment_batch(images, maps, torch.Generator().manual_seed(seed), PAD, True, 0.5)
    assert torch.equal(overlay_then_crop, crop_then_overlay)
    unchosen = torch.ones(b, dtype=torch.bool)
    unchosen[idx] = False
    assert torch.equal(crop_then_overlay[unchosen], cf.apply(images)[unchosen])


def test_overlay_normalises_the_whole_map_not_the_crop():
    from igkd.data.augment import augment_batch

    images = torch.zeros(1, 1, H, W)
    maps = torch.ones(1, H, W)
    maps[0, 0, 0] = 3.0  # the peak sits in a corner that a shifted crop can cut away
    for seed in range(200):
        gen = torch.Generator().manual_seed(seed)
        out = augment_batch(images, maps, gen, PAD, flip=False, overlay_p=1.0, power_range=(1.0, 1.0))
        if out[0, 0].max() < 0.5 - 1e-6:  # the peak (blended to 0.5) was cropped away
            break
    else:
        pytest.fail("no draw cropped the peak away")
    # the remaining ones were normalised by the whole map: (1 - 1) / (3 - 1) = 0, not 1 (crop's own max)
    assert out.max() == 0.0
