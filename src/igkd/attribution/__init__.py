"""Batched integrated gradients and the index-aligned, memory-mapped IG map store."""

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
from .precompute import PrecomputeResult, baseline_tensor, finalize_store, precompute_ig
from .store import BASELINES, IDENTITY_KEYS, MapStore, baseline_spec

__all__ = [
    "BASELINES",
    "IDENTITY_KEYS",
    "SUPPORTED_METHODS",
    "MapStore",
    "PrecomputeResult",
    "PreparedModel",
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
