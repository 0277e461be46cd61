"""Shared test helpers."""

from __future__ import annotations

from igkd.attribution import IGOptions, StoreIdentity, precompute_ig


def run_precompute(model, ds, conv, path, *, teacher_hash, n_steps=50, method="gausslegendre",
                   baseline="zeros-normalized", rank=None, world_size=None, progress=False, finalize=True,
                   on_chunk_done=None, **options):
    """precompute_ig with the identity and options spelled as keywords, as most tests want them."""
    identity = StoreIdentity.of(ds, teacher_hash, conv, n_steps=n_steps, method=method, baseline=baseline)
    return precompute_ig(model, ds, path, identity, IGOptions(**options), rank=rank, world_size=world_size,
                         progress=progress, finalize=finalize, on_chunk_done=on_chunk_done)
