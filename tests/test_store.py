"""The IG map store: round trip, index alignment, stale and incomplete stores refused."""

import json
import pickle

import numpy as np
import pytest
import torch
from torch import nn

from igkd.attribution import (
    MapStore,
    StoreIdentity,
    attribution_map,
    baseline_tensor,
    finalize_store,
    integrated_gradients,
)
from igkd.convention import InputConvention
from igkd.data.image_dataset import ImageDataset
from igkd.errors import NumericalError, StaleStoreError
from igkd.models import cifar_mobilenet_v2, state_dict_hash

from .helpers import run_precompute

CONV = InputConvention((0.4, 0.5, 0.6), (0.2, 0.25, 0.3))


def dataset(n: int = 30, size: int = 4, classes: int = 3, seed: int = 0) -> ImageDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return ImageDataset("synthetic", x, y, [str(c) for c in range(classes)])


def linear_model(size: int = 4, classes: int = 3) -> nn.Module:
    """f(x) = W x + c: its IG from baseline b is exactly (x - b) * W[target], a known map per image."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * size * size, classes)).eval()


def known_map(model: nn.Module, ds: ImageDataset, positions: torch.Tensor, baseline: str) -> torch.Tensor:
    x = CONV.from_uint8(ds.x[positions])
    b = baseline_tensor(baseline, CONV, ds.image_shape)
    w = model[1].weight.detach()[ds.y[positions]].view(-1, *ds.image_shape)
    return ((x - b) * w).abs().sum(1)


def expect(ds, model, **over) -> StoreIdentity:
    e = {"dataset": ds.name, "fingerprint": ds.fingerprint(), "teacher_hash": state_dict_hash(model),
         "n_steps": 8, "method": "gausslegendre", "baseline": "zeros-normalized", "convention": CONV}
    e.update(over)
    return StoreIdentity(**e)


@pytest.mark.parametrize("baseline", ["zeros-normalized", "black"])
def test_index_alignment_through_a_shuffled_batch(tmp_path, baseline):
    ds, model = dataset(), linear_model()
    res = run_precompute(model, ds, CONV, tmp_path / "s", teacher_hash=state_dict_hash(model), n_steps=8,
                        baseline=baseline, dtype="float32", chunk_size=7, progress=False)
    assert res.complete and res.computed == [0, 1, 2, 3, 4]
    store = MapStore.open(tmp_path / "s", expect=expect(ds, model, baseline=baseline))
    perm = torch.randperm(len(ds), generator=torch.Generator().manual_seed(5))
    got = store.get(perm)
    assert got.dtype == torch.float32 and got.shape == (len(ds), 4, 4)
    want = known_map(model, ds, perm, baseline)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)
    # Each map is its own image's: no other image's map is closer.
    dist = torch.cdist(got.flatten(1), want.flatten(1))
    assert torch.equal(dist.argmin(1), torch.arange(len(ds)))


def test_round_trip_float16_and_metadata(tmp_path):
    ds = dataset(n=10, size=8)
    torch.manual_seed(0)
    model = cifar_mobilenet_v2(num_classes=3, width_mult=0.25).eval()
    with torch.no_grad():
        model.classifier[1].weight.normal_(0, 1.0)  # outputs of order 1, so float16 keeps the maps
    res = run_precompute(model, ds, CONV, tmp_path / "s", teacher_hash="t" * 64, n_steps=8, chunk_size=4,
                        progress=False)
    store = res.store
    assert store is not None and store.maps.dtype == np.float16 and store.shape == (10, 8, 8)
    direct = attribution_map(integrated_gradients(model, CONV.from_uint8(ds.x), ds.y, n_steps=8))
    assert torch.allclose(store.get(torch.arange(10)), direct, rtol=2e-3, atol=1e-6)
    meta = json.loads((tmp_path / "s" / "meta.json").read_text())
    assert meta["complete"] and meta["fingerprint"] == ds.fingerprint() and meta["teacher_hash"] == "t" * 64
    assert meta["baseline"]["kind"] == "zeros" and meta["baseline"]["space"] == "normalized"
    assert meta["convention"] == CONV.to_dict() | {"mean": list(CONV.mean), "std": list(CONV.std)}
    assert (meta["n_steps"], meta["method"], meta["dtype"], meta["shape"]) == (8, "gausslegendre", "float16",
                                                                             [10, 8, 8])
    assert meta["delta"]["images"] == 10
    for kind in ("abs", "scaled"):  # percentiles, not a mean driven by a few images
        d = meta["delta"][kind]
        assert 0 <= d["p50"] <= d["p90"] <= d["p99"] <= d["max"] < 1e-3
    assert store.get([3]).shape == (1, 8, 8)
    with pytest.raises(IndexError):
        store.get(torch.tensor([10]))
    # A store survives pickling (DataLoader workers) and reopens its memory map.
    again = pickle.loads(pickle.dumps(store))
    assert torch.equal(again.get(torch.arange(10)), store.get(torch.arange(10)))
    # Running precompute again on a complete store does nothing.
    assert run_precompute(model, ds, CONV, tmp_path / "s", teacher_hash="t" * 64, n_steps=8, chunk_size=4,
                         progress=False).computed == []


@pytest.mark.parametrize("key,value", [
    ("fingerprint", "0" * 64),
    ("teacher_hash", "other-teacher"),
    ("n_steps", 20),
    ("method", "riemann_trapezoid"),
    ("baseline", "black"),
    ("convention", InputConvention((0.5,) * 3, (0.5,) * 3)),
])
def test_stale_store_is_refused(tmp_path, key, value):
    ds, model = dataset(n=6), linear_model()
    run_precompute(model, ds, CONV, tmp_path / "s", teacher_hash=state_dict_hash(model), n_steps=8,
                  chunk_size=4, progress=False)
    MapStore.open(tmp_path / "s", expect=expect(ds, model))  # the right expectation opens it
    with pytest.raises(StaleStoreError, match=f"stale.*{key}.*precompute-ig") as err:
        MapStore.open(tmp_path / "s", expect=expect(ds, model, **{key: value}))
    assert "\n" not in str(err.value)


def test_stale_store_for_another_dataset(tmp_path):
    ds, model = dataset(n=6), linear_model()
    run_precompute(model, ds, CONV, tmp_path / "s", teacher_hash="a", n_steps=8, progress=False)
    other = dataset(n=6, seed=1)
    with pytest.raises(StaleStoreError, match="fingerprint"):
        MapStore.open(tmp_path / "s", expect=StoreIdentity.of(other, "a", CONV, n_steps=8))
    # precompute into a store made with other settings is refused too, not silently mixed
    with pytest.raises(StaleStoreError, match="other settings.*teacher_hash"):
        run_precompute(model, ds, CONV, tmp_path / "s", teacher_hash="b", n_steps=8, progress=False)


def test_incomplete_store_is_refused(tmp_path):
    ds, model = dataset(n=12), linear_model()

    def stop_after_first(chunk):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_precompute(model, ds, CONV, tmp_path / "s", teacher_hash="a", n_steps=8, chunk_size=4,
                      progress=False, on_chunk_done=stop_after_first)
    meta = json.loads((tmp_path / "s" / "meta.json").read_text())
    assert meta["complete"] is False and (tmp_path / "s" / "maps.npy").exists()
    with pytest.raises(StaleStoreError, match="incomplete.*1 of 3 chunks.*precompute-ig"):
        MapStore.open(tmp_path / "s")
    with pytest.raises(StaleStoreError, match="no completion record"):
        finalize_store(tmp_path / "s")
    with pytest.raises(StaleStoreError, match="no IG map store"):
        MapStore.open(tmp_path / "nowhere")
    res = run_precompute(model, ds, CONV, tmp_path / "s", teacher_hash="a", n_steps=8, chunk_size=4,
                        progress=False)
    assert res.computed == [1, 2] and res.skipped == [0] and res.complete
    MapStore.open(tmp_path / "s")


@pytest.mark.parametrize("logit_scale", [1e-6, 1e7])
def test_float16_keeps_every_map_whatever_the_teachers_scale(tmp_path, logit_scale):
    """Logits scaled by 1e-6 give maps far below float16's smallest normal (6e-5), by 1e7 far above its
    largest (65504): each map is stored divided by its maximum, so its shape survives, and its scale
    is kept exactly."""
    from igkd.data.augment import augment_batch

    ds, model = dataset(n=6), linear_model()
    with torch.no_grad():
        model[1].weight.mul_(logit_scale)
        model[1].bias.mul_(logit_scale)
    pos = torch.arange(6)
    truth = known_map(model, ds, pos, "zeros-normalized").double()
    res = run_precompute(model, ds, CONV, tmp_path / "s", teacher_hash="a", n_steps=8, chunk_size=4)
    store = res.store
    unit = store.load_all()
    assert unit.dtype == torch.float16
    assert torch.allclose(unit.float().amax((1, 2)), torch.ones(6))  # each map peaks at exactly 1
    peak = truth.amax((1, 2))
    np.testing.assert_allclose(store.scales, peak.numpy(), rtol=1e-5)
    err = ((unit.double() - truth / peak[:, None, None]).flatten(1).norm(dim=1)
           / (truth / peak[:, None, None]).flatten(1).norm(dim=1))
    assert err.max() < 2e-3  # float16's relative precision, not an underflow (which gives 1.0)
    assert torch.allclose(store.get(pos).double(), truth, rtol=2e-3, atol=0)
    assert store.meta["storage"]["values_flushed_to_zero"] == 0
    x = augment_batch(ds.x.float() / 255, unit, torch.Generator().manual_seed(0), 1, True, overlay_p=1.0)
    assert torch.isfinite(x).all() and x.min() >= 0 and x.max() <= 1


def test_an_all_zero_map_is_refused_in_one_line(tmp_path):
    ds, model = dataset(n=6), linear_model()
    with torch.no_grad():
        model[1].weight[1].zero_()  # class 1's logit does not depend on the image: its maps are all zero
    assert (ds.y == 1).any()
    with pytest.raises(NumericalError, match=r"all zero .*teacher") as e:
        run_precompute(model, ds, CONV, tmp_path / "s", teacher_hash="a", n_steps=8)
    assert "\n" not in str(e.value)
    with pytest.raises(StaleStoreError, match="incomplete"):
        MapStore.open(tmp_path / "s")  # nothing that looks complete


def test_scales_file_is_checked(tmp_path):
    ds, model = dataset(n=6), linear_model()
    run_precompute(model, ds, CONV, tmp_path / "s", teacher_hash="a", n_steps=8)
    np.save(tmp_path / "s" / "scales.npy", np.ones(6))
    with pytest.raises(StaleStoreError, match="scales.npy does not match"):
        MapStore.open(tmp_path / "s").get([0])


def test_non_finite_maps_are_refused_at_write_and_load(tmp_path):
    from igkd.attribution import StoreWriter

    ds, model = dataset(n=6), linear_model()
    res = run_precompute(model, ds, CONV, tmp_path / "s", teacher_hash="a", n_steps=8, chunk_size=3)
    writer = StoreWriter.open(tmp_path / "s")
    bad = np.full((3, 4, 4), np.inf, dtype=np.float16)
    with pytest.raises(NumericalError, match="positions 0..2 hold inf or NaN"):
        writer.write_chunk(0, bad, {})
    assert torch.isfinite(res.store.load_all()).all()  # nothing was written
    # a file changed after finalisation is refused on load, never used
    maps = np.load(tmp_path / "s" / "maps.npy", mmap_mode="r+")
    maps[1, 2, 3] = np.nan
    maps.flush()
    del maps
    with pytest.raises(StaleStoreError, match="does not match the sha256"):
        MapStore.open(tmp_path / "s").load_all()
