"""igkd's public face: what ``import igkd`` gives (``igkd.fit``, ``igkd.Distiller``, ...).

Users pass their own ``nn.Module``s, ``Dataset``s and ``transforms.v2`` pipelines and get back modules,
dicts and files; no ``Config`` to build. Every name calls the code the ``igkd`` command calls.
"""

from __future__ import annotations

from .deploy import bench, evaluate, export_onnx
from .maps import MapStore, Overlay, WithMaps, compute_maps
from .models import create_model, create_student
from .training import Distiller, fit

__all__ = ["Distiller", "MapStore", "Overlay", "WithMaps", "bench", "compute_maps", "create_model",
           "create_student", "evaluate", "export_onnx", "fit"]
