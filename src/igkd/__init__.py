"""igkd: knowledge distillation with integrated-gradients augmentation.

The public names (:mod:`igkd.api`) are loaded on first use, so ``import igkd`` and the ``igkd`` command
start without importing PyTorch::

    import igkd
    teacher = igkd.create_model("cifar_mobilenet_v2", 10, in_chans=1, checkpoint="igkd:fashion-mnist-teacher-w0.5",
                                width_mult=0.5, strides=[2, 1, 2, 2, 1])
    student = igkd.create_student(teacher, remove_blocks=5)
    distiller = igkd.Distiller(student, teacher, method="kd")
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING, Any

from .version import __version__

__all__ = ["Distiller", "MapStore", "Overlay", "WithMaps", "__version__", "bench", "compute_maps", "create_model",
           "create_student", "evaluate", "export_onnx", "fit"]

if TYPE_CHECKING:  # for type checkers and editors; at run time __getattr__ loads them
    from .api import (
        Distiller,
        MapStore,
        Overlay,
        WithMaps,
        bench,
        compute_maps,
        create_model,
        create_student,
        evaluate,
        export_onnx,
        fit,
    )


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'igkd' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])


class _Package(types.ModuleType):
    """``igkd.evaluate`` is the public function, even once the submodule ``igkd/evaluate.py`` (the CLI's
    ``igkd evaluate``) is imported: the import system's record of the submodule on its package is set
    aside here (``sys.modules["igkd.evaluate"]`` and ``from igkd.evaluate import ...`` still give it)."""

    @property
    def evaluate(self):
        return __getattr__("evaluate")

    @evaluate.setter
    def evaluate(self, _module) -> None:
        pass


sys.modules[__name__].__class__ = _Package
