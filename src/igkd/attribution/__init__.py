"""Batched integrated gradients, Captum's saliency sources, and the index-aligned, memory-mapped map store."""

from ..models.inference import fold_batchnorm
from .identity import BASELINES, StoreIdentity, baseline_spec
from .ig import (
    SUPPORTED_METHODS,
    PreparedModel,
    attribution_map,
    default_internal_batch_size,
    integrated_gradients,
    prepare_for_ig,
    quadrature,
    tune_cpu_allocator,
)
from .precompute import IGOptions, PrecomputeResult, baseline_tensor, precompute_ig
from .saliency import ATTRIBUTIONS, AttributionSource, attribution_maps, default_gradcam_layer
from .store import MapStore, StoreWriter, explanation_problems, finalize_store

__all__ = [
    "ATTRIBUTIONS",
    "AttributionSource",
    "BASELINES",
    "SUPPORTED_METHODS",
    "IGOptions",
    "MapStore",
    "PrecomputeResult",
    "PreparedModel",
    "StoreIdentity",
    "StoreWriter",
    "attribution_map",
    "attribution_maps",
    "baseline_spec",
    "baseline_tensor",
    "default_gradcam_layer",
    "default_internal_batch_size",
    "explanation_problems",
    "finalize_store",
    "fold_batchnorm",
    "integrated_gradients",
    "precompute_ig",
    "prepare_for_ig",
    "quadrature",
    "tune_cpu_allocator",
]
