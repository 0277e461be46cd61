"""Other attribution sources for the overlay: gradient saliency maps from Captum, one map per image.

igkd's own integrated gradients (:mod:`igkd.attribution.ig`) stay the default source. The others are
Captum's attribution methods called as Captum documents them, on the same model (eval mode, frozen
parameters), the same normalised input and the same target (the true label's logit). Every source's
map is what IG's is: the absolute attribution summed over colour channels, (N, C, H, W) -> (N, H, W).

* ``saliency``: ``captum.attr.Saliency``, the gradient of the logit with respect to the input
  (Simonyan et al. 2014); ``abs=True``, so the map is ``|grad|`` summed over channels.
* ``input_x_gradient``: ``captum.attr.InputXGradient``, input times gradient; the input is zero at the
  mean colour (normalised space), so it is one-step IG from the paper's baseline.
* ``smoothgrad``: ``captum.attr.NoiseTunnel(Saliency)`` with ``nt_type="smoothgrad"`` (Smilkov et al.
  2017): the gradient averaged over ``nt_samples`` noisy copies of the image, noise N(0, stdev^2) with
  stdev = ``noise_level`` x the input range (the paper: 10-20 %, 50 samples; here 15 %, 50 samples).
  The signed gradients are averaged (``abs=False``, the paper's definition), then the map takes
  ``|.|``. Each image's noise comes from its own seed, derived from ``seed`` and its dataset
  position, so a map never depends on batching, chunking, ranks or resumption.
* ``gradcam``: ``captum.attr.LayerGradCam`` on one convolutional layer (Selvaraju et al. 2017), ReLU'd
  (``relu_attributions=True``), upsampled to the image with ``LayerAttribution.interpolate(...,
  interpolate_mode="bilinear")``: one channel, so the map is that channel (non-negative). The layer is
  named (``ig.gradcam_layer``) or chosen by :func:`default_gradcam_layer` (``features.18`` of the CIFAR
  MobileNetV2, ``layer4.1`` of a ResNet-18).

Captum is imported only when a Captum source computes (``pip install captum``); the names in
:data:`ATTRIBUTIONS` import nothing beyond torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..convention import InputConvention
from ..errors import ConfigError
from ..utils import derive_seed

ATTRIBUTIONS = ("integrated_gradients", "saliency", "input_x_gradient", "smoothgrad", "gradcam")
DEFAULT_ATTRIBUTION = "integrated_gradients"
SMOOTHGRAD_SAMPLES = 50  # Smilkov et al.: gains level off around 50 samples
SMOOTHGRAD_NOISE = 0.15  # noise sd as a fraction of the input range; Smilkov et al.: 10-20 %
DESCRIPTIONS = {
    "integrated_gradients": "igkd's integrated gradients of the target logit",
    "saliency": "captum.attr.Saliency(abs=True): |d logit / d input|",
    "input_x_gradient": "captum.attr.InputXGradient: input * d logit / d input",
    "smoothgrad": "captum.attr.NoiseTunnel(Saliency(abs=False), nt_type='smoothgrad'): mean gradient over "
                  "noisy copies",
    "gradcam": "captum.attr.LayerGradCam(relu_attributions=True), bilinearly upsampled to the image",
}


@dataclass(frozen=True)
class AttributionSource:
    """Which attribution a store holds, with the settings that change its maps (and nothing else).

    ``nt_samples``, ``noise_level`` and ``seed`` are smoothgrad's; ``layer`` is gradcam's (a module
    name, resolved before a store is made: :func:`default_gradcam_layer`). Settings of other sources
    are None. Build with :meth:`of`, which fills the defaults of the named source and drops the rest.
    """

    name: str = DEFAULT_ATTRIBUTION
    nt_samples: int | None = None
    noise_level: float | None = None
    seed: int | None = None
    layer: str | None = None

    def __post_init__(self) -> None:
        if self.name not in ATTRIBUTIONS:
            raise ConfigError(f"unknown attribution {self.name!r}; choose one of {', '.join(ATTRIBUTIONS)}")
        if self.name == "smoothgrad":
            if self.nt_samples is None or self.nt_samples < 1:
                raise ConfigError(f"smoothgrad needs nt_samples >= 1, got {self.nt_samples}")
            if self.noise_level is None or not self.noise_level > 0:
                raise ConfigError(f"smoothgrad needs a noise level > 0, got {self.noise_level}")
        if self.name == "gradcam" and not self.layer:
            raise ConfigError("gradcam needs a layer: name it (ig.gradcam_layer) or resolve it with "
                              "default_gradcam_layer(model)")

    @classmethod
    def of(cls, name: str = DEFAULT_ATTRIBUTION, *, nt_samples: int | None = None, noise_level: float | None = None,
           seed: int | None = None, layer: str | None = None) -> AttributionSource:
        """The source ``name`` with its own settings (defaults where None); other sources' settings dropped."""
        if name == "smoothgrad":
            return cls(name, SMOOTHGRAD_SAMPLES if nt_samples is None else nt_samples,
                       SMOOTHGRAD_NOISE if noise_level is None else float(noise_level), 0 if seed is None else seed)
        if name == "gradcam":
            return cls(name, layer=layer)
        return cls(name)

    @property
    def is_ig(self) -> bool:
        return self.name == "integrated_gradients"

    def stdev(self, convention: InputConvention) -> float:
        """smoothgrad's noise sd in network-input space: ``noise_level`` x the range a network input spans
        (pixel 0 to pixel 1 of every channel, normalised)."""
        low = min((0.0 - m) / s for m, s in zip(convention.mean, convention.std))
        high = max((1.0 - m) / s for m, s in zip(convention.mean, convention.std))
        return float(self.noise_level) * (high - low)

    def to_meta(self, convention: InputConvention) -> dict[str, Any]:
        """The source as a store records it: its name, what it computes and its settings."""
        out: dict[str, Any] = {"name": self.name, "definition": DESCRIPTIONS[self.name]}
        if self.name == "smoothgrad":
            out.update(nt_samples=self.nt_samples, noise_level=self.noise_level, stdevs=self.stdev(convention),
                       seed=self.seed, noise_seed="derive_seed(seed, 'smoothgrad', dataset position)")
        if self.name == "gradcam":
            out.update(layer=self.layer, interpolate_mode="bilinear", relu_attributions=True)
        return out

    def tag(self) -> str:
        """The part of a store's folder name that names the source (IG's folders name their own settings)."""
        if self.name == "smoothgrad":
            return f"smoothgrad{self.nt_samples}-n{self.noise_level:g}-s{self.seed}"
        if self.name == "gradcam":
            return f"gradcam-{self.layer}"
        return self.name


# What may follow a convolution within its block: Grad-CAM takes the block's output, after them.
_NORM_OR_ACTIVATION = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU,
                       nn.SiLU, nn.GELU, nn.Hardswish, nn.Mish, nn.Identity)


def default_gradcam_layer(model: nn.Module) -> str:
    """Grad-CAM's layer when none is named: the last module holding a convolution, descending only through
    plain containers (``nn.Sequential``, ``nn.ModuleList``), so a block (a conv-norm-activation module, a
    residual block) is taken whole: ``features.18`` of the CIFAR MobileNetV2, ``layer4.1`` of a ResNet.
    A bare convolution inside a plain container is taken with the norm and activation layers after it
    (``features.29``, the ReLU after VGG-16's last convolution)."""
    def has_conv(m: nn.Module) -> bool:
        return any(isinstance(s, nn.Conv2d) for s in m.modules())

    name, module = "", model
    while module is model or type(module) in (nn.Sequential, nn.ModuleList):
        children = list(module.named_children())
        idx = [i for i, (_n, c) in enumerate(children) if has_conv(c)]
        if not idx:
            break
        i = idx[-1]
        if not list(children[i][1].children()):  # a bare convolution: its block ends after its norm/activation
            while i + 1 < len(children) and isinstance(children[i + 1][1], _NORM_OR_ACTIVATION):
                i += 1
        child_name, module = children[i]
        name = f"{name}.{child_name}" if name else child_name
        if not list(module.children()):
            break
    if not name:
        raise ConfigError(f"{type(model).__name__} has no convolution for Grad-CAM: set ig.gradcam_layer to a "
                          "module whose output is a feature map, or choose another ig.attribution")
    return name


def check_gradcam_layer(model: nn.Module, layer: str, image_shape: Sequence[int]) -> tuple[int, int]:
    """The (h, w) of ``layer``'s output on one zero image; a missing module or one without a feature map
    larger than 1x1 is a one-line error naming ``ig.gradcam_layer``."""
    modules = dict(model.named_modules())
    if layer not in modules:
        near = [n for n in modules if n and (n.startswith(layer.rsplit(".", 1)[0]) or layer.startswith(n))][-5:]
        raise ConfigError(f"bad value for ig.gradcam_layer: {layer!r} (allowed: a module name of the teacher"
                          f"{', e.g. ' + ', '.join(near) if near else ''})")
    seen: list[Any] = []
    handle = modules[layer].register_forward_hook(lambda _m, _i, out: seen.append(out))
    param = next(model.parameters(), None)
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros((1, *image_shape), device=param.device if param is not None else None))
    finally:
        handle.remove()
        model.train(was_training)
    out = seen[-1] if seen else None
    if not isinstance(out, torch.Tensor) or out.ndim != 4 or out.shape[-2] * out.shape[-1] < 2:
        what = "no 4-D output" if not isinstance(out, torch.Tensor) or out.ndim != 4 else "a 1x1 output"
        raise ConfigError(f"bad value for ig.gradcam_layer: {layer!r} (it has {what}; Grad-CAM needs a module "
                          "whose output is a feature map larger than 1x1, e.g. the last convolutional block)")
    return int(out.shape[-2]), int(out.shape[-1])


def _captum():
    try:
        import captum.attr as attr
    except ImportError:
        raise ConfigError("ig.attribution other than integrated_gradients uses Captum: pip install captum "
                          "(or igkd's test extra)") from None
    return attr


def attribution_maps(source: AttributionSource, model: nn.Module, inputs: torch.Tensor, target: torch.Tensor, *,
                     convention: InputConvention, positions: Sequence[int] | torch.Tensor | None = None,
                     internal_batch_size: int | None = None) -> torch.Tensor:
    """Maps (N, H, W) of a batch of network inputs (N, C, H, W) for a Captum source, the target's logit.

    ``model`` must be in eval mode with frozen parameters (as :func:`~igkd.attribution.prepare_for_ig`
    makes it); ``convention`` gives smoothgrad's noise scale, ``positions`` (dataset positions, one per
    input; default 0..N-1) its per-image seeds. ``internal_batch_size`` bounds the samples of one
    forward pass (images; smoothgrad: noisy copies), as it bounds IG's step-samples. Integrated
    gradients, with their convergence delta, are :func:`~igkd.attribution.integrated_gradients`.
    """
    if source.is_ig:
        raise ValueError("integrated gradients have their own path: igkd.attribution.integrated_gradients")
    attr = _captum()
    n = len(inputs)
    target = torch.as_tensor(target, dtype=torch.int64, device=inputs.device).reshape(-1).expand(n)
    step = max(1, internal_batch_size or n)
    out = []
    with torch.enable_grad():
        if source.name == "smoothgrad":
            pos = list(range(n)) if positions is None else [int(p) for p in torch.as_tensor(positions).reshape(-1)]
            if len(pos) != n:
                raise ValueError(f"positions must have one entry per input ({n}), got {len(pos)}")
            tunnel = attr.NoiseTunnel(attr.Saliency(model))
            stdev = source.stdev(convention)
            devices = [inputs.device] if inputs.device.type == "cuda" else []
            for i in range(n):
                with torch.random.fork_rng(devices=devices):  # the caller's random state is left alone
                    torch.manual_seed(derive_seed(source.seed, "smoothgrad", pos[i]))
                    a = tunnel.attribute(inputs[i:i + 1], nt_type="smoothgrad", nt_samples=source.nt_samples,
                                         nt_samples_batch_size=min(step, source.nt_samples), stdevs=stdev,
                                         target=target[i:i + 1], abs=False)
                out.append(a.detach().abs().sum(1))
            return torch.cat(out)
        if source.name == "gradcam":
            layer = dict(model.named_modules()).get(source.layer)
            if layer is None:
                raise ConfigError(f"bad value for ig.gradcam_layer: {source.layer!r} (not a module of the teacher)")
            method = attr.LayerGradCam(model, layer)
        else:
            method = {"saliency": attr.Saliency, "input_x_gradient": attr.InputXGradient}[source.name](model)
        for a in range(0, n, step):
            x, t = inputs[a:a + step].detach().requires_grad_(source.name != "gradcam"), target[a:a + step]
            if source.name == "gradcam":
                cam = method.attribute(x, target=t, relu_attributions=True)
                m = attr.LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), interpolate_mode="bilinear")
            elif source.name == "saliency":
                m = method.attribute(x, target=t, abs=True)
            else:
                m = method.attribute(x, target=t)
            out.append(m.detach().abs().sum(1))
    return torch.cat(out)


def source_of(settings: Mapping[str, Any] | None) -> AttributionSource:
    """The source a store's ``meta.json`` records (a store made before sources existed holds IG maps)."""
    if not settings:
        return AttributionSource()
    keys = ("nt_samples", "noise_level", "seed", "layer")
    return AttributionSource.of(settings.get("name", DEFAULT_ATTRIBUTION), **{k: settings.get(k) for k in keys})


__all__ = ["ATTRIBUTIONS", "DEFAULT_ATTRIBUTION", "SMOOTHGRAD_NOISE", "SMOOTHGRAD_SAMPLES", "AttributionSource",
           "attribution_maps", "check_gradcam_layer", "default_gradcam_layer", "source_of"]
