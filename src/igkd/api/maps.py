"""Attribution maps for the user's data: compute them into a store, carry them with their images through
a torchvision ``transforms.v2`` pipeline, and overlay them (METHOD.md steps 3 and 4)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from ..attribution import (
    AttributionSource,
    IGOptions,
    MapStore,
    StoreIdentity,
    default_gradcam_layer,
    precompute_ig,
)
from ..data.augment import blend, draw_overlay, normalize_maps
from ..errors import DataError
from ..models import state_dict_hash
from ..utils import resolve_device
from .data import Normalize, convention_of, dataset_from

__all__ = ["MapStore", "Overlay", "WithMaps", "compute_maps"]


def compute_maps(teacher: nn.Module, dataset: Dataset, store: str | os.PathLike,
                 source: str = "integrated_gradients", n_steps: int = 50, device: str | torch.device | None = None,
                 *, normalize: Normalize | None = None, method: str = "gausslegendre",
                 baseline: str = "zeros-normalized", dtype: str = "float16", chunk_size: int | None = None,
                 batch_size: int | None = None, layer: str | None = None, name: str = "dataset",
                 progress: bool | None = None, streaming: bool = False, loader_workers: int = 0) -> MapStore:
    """The teacher's attribution map of every image of ``dataset``, in a map store at ``store``.

    The store is the one ``igkd precompute-ig`` writes (same format, identity and checks): map ``i`` is
    the map of ``dataset[i]``, the target is the true label, and the store records the dataset's
    fingerprint, the teacher's weights hash, the source and its settings. The work is chunked and
    resumable: a call on an unfinished store computes only the chunks it lacks; a call on a finished
    store of the same identity returns it at once. A dataset, teacher or setting that differs from the
    store's is refused (:class:`igkd.errors.StaleStoreError`), never mixed in.

    Args:
        teacher: the trained network to explain (left unchanged; a frozen copy is used).
        dataset: a map-style ``Dataset`` of ``(image, label)``, the image ``(C, H, W)`` pixels (uint8, or
            float in [0, 1] holding 8-bit values: ``v2.ToDtype(torch.float32, scale=True)``), all one size.
        store: the store's folder (created; an existing store is checked and resumed).
        source: ``integrated_gradients`` (igkd's batched IG), or Captum's ``saliency``, ``smoothgrad``,
            ``input_x_gradient``, ``gradcam``.
        n_steps: IG's steps (Gauss-Legendre nodes by default, Captum's ``n_steps``).
        device: where to compute (``cpu``, ``cuda``, ``auto``; None: auto).
        normalize: the ``(mean, std)`` the teacher takes its input in; None: pixels in [0, 1] as they are.
            The IG baseline ``zeros-normalized`` is zero in that space (the paper's mean-colour image).
        method: IG's quadrature (``gausslegendre``, ``riemann_trapezoid``, ...), Captum's ``method``.
        baseline: ``zeros-normalized`` or ``black``.
        dtype: stored map type, ``float16`` or ``float32``.
        chunk_size: images per resumable chunk (None: 256 on the CPU, 2048 on CUDA).
        batch_size: images per IG call (None: the chunk).
        layer: Grad-CAM's layer (None: the teacher's last convolutional block).
        name: the dataset's name, recorded in the store.
        progress: show a progress bar (None: when the output is a terminal).
        streaming: read the dataset a chunk at a time instead of holding it in memory (for data larger
            than memory): the same maps. Its fingerprint and the teacher's check are then two more passes
            over the images, before the first chunk; each pass is read ahead of its computation.
        loader_workers: with ``streaming``, DataLoader worker processes that read (and decode) the images
            for those passes; 0: one background thread. The same maps either way.

    Returns:
        The finished, verified store (``store.get(positions)``, ``len(store)``, ``store.meta``).
    """
    ds = dataset_from(dataset, name, streaming, loader_workers)
    convention = convention_of(normalize, ds.image_shape[0])
    if source == "gradcam" and layer is None:
        layer = default_gradcam_layer(teacher)
    attribution = AttributionSource.of(source, layer=layer)
    ds.fingerprint(loader_workers)  # read once, by the workers; the identity takes it from here
    identity = StoreIdentity.of(ds, state_dict_hash(teacher), convention, n_steps=n_steps, method=method,
                                baseline=baseline, attribution=attribution)
    dev = resolve_device(device or "auto")
    options = IGOptions(dtype=dtype, chunk_size=chunk_size, batch_size=batch_size, device=str(dev),
                        loader_workers=loader_workers)
    result = precompute_ig(teacher, ds, store, identity, options, rank=0, world_size=1, progress=progress)
    return result.store


def _as_maps(maps: MapStore | torch.Tensor | np.ndarray) -> MapStore | torch.Tensor:
    if isinstance(maps, MapStore):
        return maps
    t = torch.as_tensor(maps)
    if t.dim() != 3:
        raise DataError(f"maps must be a MapStore or (N, H, W), got shape {tuple(t.shape)}")
    return t


def _map_at(maps: MapStore | torch.Tensor, i: int) -> torch.Tensor:
    """Map ``i`` as float32 (H, W): a store's as stored (divided by its maximum: the overlay's min-max makes
    the scale irrelevant, and these are the very values ``igkd distill`` overlays)."""
    if isinstance(maps, MapStore):
        return torch.from_numpy(np.asarray(maps.maps[i], dtype=np.float32))
    return maps[i].to(torch.float32)


class WithMaps(Dataset):
    """``dataset`` with each image's attribution map: item ``i`` is ``(image, map, label)``.

    ``transform``, a torchvision ``transforms.v2`` pipeline, is applied to the image and its map together,
    as one sample (a dict): geometric transforms (crop, flip, resize, affine, rotation) move the map with
    its image, photometric ones (colour jitter, normalise, erasing) leave it alone. The map travels as a
    ``tv_tensors.Mask`` of pixel positions, so it is moved by torchvision's own kernels (nearest
    sampling; padding is 0), and its values are read at the positions where it lands. With
    :class:`Overlay` in the pipeline, the map is blended into the image and dropped: items are then
    ``(image, label)``.

    Args:
        dataset: a map-style ``Dataset`` of ``(image, label)``; images ``(C, H, W)`` tensors (uint8 or
            float) or PIL images.
        maps: a :class:`MapStore` made for this dataset (:func:`compute_maps`), or a tensor ``(N, H, W)``;
            map ``i`` belongs to ``dataset[i]``.
        transform: a ``transforms.v2`` transform (e.g. ``v2.Compose``), or None.
    """

    def __init__(self, dataset: Dataset, maps: MapStore | torch.Tensor | np.ndarray,
                 transform: Callable[[Any], Any] | None = None):
        self.dataset, self.maps, self.transform = dataset, _as_maps(maps), transform
        if len(self.maps) != len(dataset):
            raise DataError(f"maps hold {len(self.maps)} maps but the dataset has {len(dataset)} images: "
                            "compute them for this dataset (igkd.compute_maps)")

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        image, label = self.dataset[i]
        values = _map_at(self.maps, i)
        image = v2.functional.to_image(image) if not isinstance(image, torch.Tensor) else image
        h, w = image.shape[-2:]
        if tuple(values.shape) != (h, w):
            raise DataError(f"map {i} is {tuple(values.shape)}, its image {(h, w)}: the maps are not of this dataset")
        if self.transform is None:
            return image, values, label
        # Positions 1..H*W (0 = outside the image, as padding fills it): the map's own values are gathered
        # from where each pixel came from, so a geometric transform moves the map exactly as the image.
        positions = tv_tensors.Mask(torch.arange(1, h * w + 1, dtype=torch.int64).view(h, w))
        out = self.transform({"image": tv_tensors.Image(image), "map": positions, "map_values": values})
        if not isinstance(out, dict) or "image" not in out:
            raise DataError("WithMaps: the transform must return the sample it was given (a dict with 'image')")
        image = out["image"].as_subclass(torch.Tensor)
        if "map" not in out:  # an Overlay used it
            return image, label
        return image, gather_map(out["map_values"], out["map"]), label


def gather_map(values: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """The map ``values`` (H, W) read at 1-based flat ``positions`` (H', W'); 0 (outside the image) reads 0."""
    pos = positions.as_subclass(torch.Tensor).reshape(positions.shape[-2:])
    flat = torch.cat([torch.zeros(1, dtype=values.dtype), values.reshape(-1)])
    return flat[pos]


class Overlay(v2.Transform):
    """Blend each sample's attribution map into its image with probability ``p``, then drop the map
    (METHOD.md step 4), as a ``transforms.v2`` transform inside :class:`WithMaps`.

    For a chosen sample: ``m <- |m| ** s`` with ``s = exp(U(ln lo, ln hi))`` over ``power_range``, min-max
    normalised to [0, 1] over the *whole* map (a constant map becomes zeros), then cropped, flipped or
    resized with its image as the transforms before this one moved it, repeated over the channels, and
    ``x' = (1 - mix) x + mix m`` on pixels in [0, 1]. So the result equals overlaying the whole image and
    transforming afterwards: padding or a cropped-away peak does not change the normalisation. The
    arithmetic is igkd's own (:func:`igkd.data.augment.normalize_maps`, :func:`~igkd.data.augment.blend`),
    so it equals ``igkd distill``'s batched overlay for the same draws.

    Put it after the geometric transforms and before ``v2.Normalize``; images are float pixels in [0, 1],
    or uint8 (then divided by 255 here, as igkd's loop does). Draws come from PyTorch's global generator (each DataLoader
    worker seeds its own).

    Args:
        p: the probability that a sample is overlaid (the paper: 0.1).
        power_range: ``(lo, hi)``, 0 < lo <= hi, of the exponent s.
        mix: the map's weight in the blend.
    """

    def __init__(self, p: float = 0.1, power_range: tuple[float, float] = (1.0, 2.0), mix: float = 0.5):
        super().__init__()
        if not 0.0 <= p <= 1.0 or not 0.0 <= mix <= 1.0 or not 0.0 < power_range[0] <= power_range[1]:
            raise ValueError(f"need 0 <= p <= 1, 0 <= mix <= 1 and 0 < lo <= hi; got p={p}, mix={mix}, "
                             f"power_range={power_range}")
        self.p, self.power_range, self.mix = float(p), (float(power_range[0]), float(power_range[1])), float(mix)

    def forward(self, *inputs: Any) -> Any:
        sample = inputs[0] if len(inputs) == 1 else None
        if not isinstance(sample, dict) or not {"image", "map", "map_values"} <= set(sample):
            raise DataError("igkd.Overlay needs each image's map: use it in WithMaps(dataset, maps, transform=...)")
        image = sample["image"]
        if image.dtype == torch.uint8:  # as igkd's loop scales its uint8 batches (a division, to the bit)
            image = tv_tensors.wrap(image.as_subclass(torch.Tensor).float().div_(255.0), like=image) \
                if isinstance(image, tv_tensors.Image) else image.float().div_(255.0)
        # Drawn as igkd's loop draws them (choice, then exponent), from the global generator.
        draw = draw_overlay(1, self.p, torch.default_generator, self.power_range)
        out = {k: v for k, v in sample.items() if k not in ("map", "map_values")}
        if bool(draw.chosen[0]):
            whole = normalize_maps(sample["map_values"][None], draw.exponents)[0]
            moved = gather_map(whole, sample["map"])
            image = tv_tensors.wrap(blend(image.as_subclass(torch.Tensor)[None], moved[None], self.mix)[0],
                                    like=image) if isinstance(image, tv_tensors.Image) else \
                blend(image[None], moved[None], self.mix)[0]
        out["image"] = image
        return out

    def extra_repr(self) -> str:
        return f"p={self.p}, power_range={self.power_range}, mix={self.mix}"
