"""Models by name: igkd's CIFAR MobileNetV2 family, torchvision's classification models, timm's.

:func:`create_model` is the one constructor (timm's shape). Every network is built freshly
initialised for the data: ``num_classes`` outputs, ``in_channels`` input channels. Nothing is ever
downloaded: torchvision models are built with ``weights=None`` and timm models with
``pretrained=False``; weights come from a file (``teacher.checkpoint``).
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Sequence

from torch import nn

from .mobilenet import AUTO, cifar_mobilenet_v2, resolve_strides

FAMILY = ("cifar_mobilenet_v2",)  # igkd's own networks: `features` of 19 modules, truncated students
TIMM_PREFIX = "timm:"
ARCH_HELP = ("a torchvision classification model name (e.g. resnet18, mobilenet_v3_small), timm:<name>, "
             "or cifar_mobilenet_v2")
# torchvision builders whose defaults do not suit a fresh network: no auxiliary heads (their training
# output is a tuple), and their own initialisation chosen explicitly (silences a FutureWarning).
_TORCHVISION_EXTRA = {"googlenet": {"aux_logits": False, "init_weights": True},
                      "inception_v3": {"aux_logits": False, "init_weights": True}}


def is_family(name: str) -> bool:
    """Whether ``name`` is one of igkd's CIFAR MobileNetV2 networks (the paper's family)."""
    return name in FAMILY


@functools.lru_cache(maxsize=1)
def torchvision_names() -> tuple[str, ...]:
    """Every classification model of torchvision's registry (``torchvision.models.get_model`` names)."""
    import torchvision.models

    return tuple(torchvision.models.list_models(module=torchvision.models))


def timm_available() -> bool:
    try:
        import timm  # noqa: F401
    except ImportError:
        return False
    return True


def model_name_problem(name: str) -> str | None:
    """None when ``create_model`` knows ``name``; else why not, in words (for a one-line error)."""
    if is_family(name) or name in torchvision_names():
        return None
    if name.startswith(TIMM_PREFIX):
        if not timm_available():
            return "timm is not installed: pip install timm (or 'igkd[models]')"
        import timm

        base = name[len(TIMM_PREFIX):]
        if base and timm.is_model(base):
            return None
        close = difflib.get_close_matches(base, timm.list_models(), n=3)
        return f"no timm model {base!r}" + (f"; did you mean {', '.join(TIMM_PREFIX + c for c in close)}?"
                                            if close else "")
    close = difflib.get_close_matches(name, [*FAMILY, *torchvision_names()], n=3)
    return f"did you mean {', '.join(close)}?" if close else "not a model name igkd knows"


def create_model(name: str, num_classes: int = 10, in_channels: int = 3,
                 image_size: Sequence[int] | None = None, **kwargs) -> nn.Module:
    """One constructor for every architecture, by name, freshly initialised.

    ``cifar_mobilenet_v2`` takes ``width_mult``, ``strides`` (five values, or ``"auto"``: chosen from
    ``image_size`` (H, W), see :func:`~igkd.models.mobilenet.auto_strides`) and ``dropout``. A
    torchvision name is ``torchvision.models.get_model(name, weights=None, num_classes=...)`` with its
    first convolution rebuilt for ``in_channels`` when that is not 3; ``timm:<name>`` is
    ``timm.create_model(name, pretrained=False, num_classes=..., in_chans=...)``. Other keyword
    arguments go to the builder.
    """
    if is_family(name):
        if kwargs.get("strides") == AUTO:
            kwargs["strides"] = resolve_strides(AUTO, image_size)
        return cifar_mobilenet_v2(num_classes=num_classes, in_channels=in_channels, **kwargs)
    if name.startswith(TIMM_PREFIX) and model_name_problem(name) is None:
        import timm

        return timm.create_model(name[len(TIMM_PREFIX):], pretrained=False, num_classes=num_classes,
                                 in_chans=in_channels, **kwargs)
    if name in torchvision_names():
        import torchvision.models

        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes,
                                             **{**_TORCHVISION_EXTRA.get(name, {}), **kwargs})
        if in_channels != 3:
            adapt_in_channels(model, in_channels, name)
        return model
    problem = model_name_problem(name)
    raise ValueError(f"unknown model {name!r}{': ' + problem if problem else ''}; known: {ARCH_HELP}")


def adapt_in_channels(model: nn.Module, in_channels: int, name: str = "the model") -> nn.Module:
    """Replace the first convolution that takes 3 channels by one of the same hyper-parameters that takes
    ``in_channels`` (freshly initialised, as torchvision initialises its convolutions)."""
    for path, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module.in_channels == 3 and module.groups == 1:
            new = nn.Conv2d(in_channels, module.out_channels, module.kernel_size, module.stride, module.padding,
                            module.dilation, 1, module.bias is not None, module.padding_mode)
            nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
            if new.bias is not None:
                nn.init.zeros_(new.bias)
            parent, _, child = path.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, new)
            return model
    raise ValueError(f"{name} has no 3-channel first convolution to adapt to {in_channels}-channel images")
