"""Batched integrated gradients and the index-aligned, memory-mapped IG map store."""

from .identity import BASELINES, StoreIdentity, baseline_spec
from .ig import (
    SUPPORTED_METHODS,
    PreparedModel,
    attribution_map,
    default_internal_batch_size,
    fold_batchnorm,
    integrated_gradients,
    prepare_for_ig,
    quadrature,
    tune_cpu_allocator,
)
from .precompute import IGOptions, PrecomputeResult, baseline_tensor, precompute_ig
from .store import MapStore, StoreWriter, finalize_store

__all__ = [
    "BASELINES",
    "SUPPORTED_METHODS",
    "IGOptions",
    "MapStore",
    "PrecomputeResult",
    "PreparedModel",
    "StoreIdentity",
    "StoreWriter",
    "attribution_map",
    "baseline_spec",
    "baseline_tensor",
    "default_internal_batch_size",
    "finalize_store",
    "fold_batchnorm",
    "integrated_gradients",
    "precompute_ig",
    "prepare_for_ig",
    "quadrature",
    "tune_cpu_allocator",
]
