"""``igkd.fit``: igkd's training loop, run directory, checkpoints, resume and TensorBoard, on Python objects."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..attribution import MapStore
from ..config import config_from_dict
from ..distill.methods import Distiller
from ..errors import ConfigError, DataError, StaleStoreError
from ..fileio import content_hash
from ..models import count_macs, count_parameters, state_dict_hash
from ..pipeline import run_fit
from ..utils import setup_device
from .data import Normalize, training_data_from_datasets
from .maps import WithMaps

__all__ = ["Distiller", "fit"]


def _train_maps(maps: MapStore | torch.Tensor | np.ndarray | None, data, train_images, streaming: bool = False,
                workers: int = 0):
    """The overlay's maps by training-set position: the training images' maps (``train_images``: the
    training set's subset before the validation images), zeros for the validation images that follow them
    (never overlaid); with ``streaming`` a store's maps are read by position (the training positions only:
    validation images are never overlaid), and the store's check reads the images in ``workers`` processes."""
    if maps is None:
        return None
    n_train = len(train_images)
    if isinstance(maps, MapStore):
        recorded = maps.meta.get("fingerprint")
        if recorded != train_images.fingerprint(workers):
            raise StaleStoreError(f"map store {maps.path} was made for other images than the training set given "
                                  "to fit: compute it for this dataset (igkd.compute_maps)")
        if streaming:
            return maps.rows()
        maps = maps.load_all()
    maps = torch.as_tensor(maps)
    h, w = data.train.image_shape[1:]
    if tuple(maps.shape) != (n_train, h, w):
        raise DataError(f"maps must be ({n_train}, {h}, {w}) for the training set, got {tuple(maps.shape)}")
    rest = torch.zeros((len(data.train) - n_train, h, w), dtype=maps.dtype)
    return torch.cat([maps, rest])


def _network(model: torch.nn.Module | None, shape: tuple[int, ...], weights: bool) -> dict | None:
    """A network as a run records it: its class, size and (``weights``: for the frozen teacher) weights."""
    if model is None:
        return None
    kind = type(model)
    out = {"class": f"{kind.__module__}.{kind.__qualname__}", "params": count_parameters(model),
           "macs": count_macs(model, shape)}
    return {**out, "weights_sha256": state_dict_hash(model)} if weights else out


def _part(ds) -> dict:
    """A dataset as a run records it: its size, its labels' digest, and its pixels' digest when it is held in
    memory (a streamed dataset's pixels are not read ahead for it: null)."""
    return {"images": len(ds), "labels_sha256": content_hash(ds.y),
            "pixels_sha256": None if ds.on_disk else ds.fingerprint()}


def _maps_record(maps) -> dict | None:
    if maps is None:
        return None
    if isinstance(maps, MapStore):
        return {"kind": "store", "path": str(maps.path), "fingerprint": maps.meta.get("fingerprint"),
                "maps_sha256": maps.meta.get("maps_sha256")}
    return {"kind": "tensor", "shape": list(maps.shape), "sha256": content_hash(torch.as_tensor(maps))}


def fit_inputs(distiller: Distiller, data, train_images, maps, streaming: bool) -> dict:
    """What a run of :func:`fit` was given, as its ``inputs.json`` records it (and a resume checks): the
    datasets' sizes and digests, the input convention, the networks, the maps. Paths are recorded but not
    compared (a moved store is the same store)."""
    shape = tuple(data.train.image_shape)
    return {
        "source": "python",
        "streaming": bool(streaming),
        "image_shape": list(shape),
        "classes": list(data.train.classes),
        "train": _part(train_images),
        "val": _part(data.train.subset(data.val_pos)),
        "test": _part(data.test),
        "convention": data.convention.to_dict(),
        "student": _network(distiller.student, shape, weights=False),
        "teacher": _network(distiller.teacher, shape, weights=True),
        "at_modules": None if distiller.at_modules is None else list(distiller.at_modules),
        "maps": _maps_record(maps) if distiller.spec.ig else None,
    }


def fit(distiller: Distiller, train: Dataset, val: Dataset | None = None, test: Dataset | None = None, *,
        out: str | os.PathLike, epochs: int = 100, maps: MapStore | torch.Tensor | None = None,
        normalize: Normalize | None = None, augment: Mapping[str, Any] | None = None, resume: bool = False,
        progress: bool | None = None, on_epoch_end: Callable[[int, dict], None] | None = None,
        streaming: bool = False, loader_workers: int = 0, **options: Any) -> dict:
    """Train ``distiller.student`` with igkd's loop; write the run directory ``out``; return its summary.

    The loop is the one ``igkd distill`` runs: the data held as uint8 on the device, whole-batch crops,
    flips and IG overlay drawn from the seed (image and map moved together), every loss term logged,
    ``last.pt`` after each epoch (and every ``checkpoint_every`` steps), ``best.pt`` on the best validation
    accuracy, ``model.pt`` at the end, ``metrics.jsonl``, ``summary.json`` and TensorBoard event files in
    ``out``. The same seed, data and settings give the run ``igkd distill`` gives, bit for bit.
    ``config.yaml`` records the settings that describe the run (:data:`~igkd.config.PYTHON_RUN_KEYS`),
    ``inputs.json`` what it was given (:func:`fit_inputs`); ``resume`` with other inputs is refused.

    Args:
        distiller: the :class:`Distiller` (student, teacher, method, loss weights).
        train: a map-style ``Dataset`` of ``(image, label)``, images ``(C, H, W)`` pixels (uint8, or float in
            [0, 1] holding 8-bit values), all one size; or a :class:`WithMaps` without a transform (its maps
            are then the overlay's). igkd's loop augments it itself (``augment``).
        val: validation images (chooses ``best.pt``; not augmented), or None.
        test: test images, evaluated after every epoch (``test_eval="end"``: after the last), or None.
        out: the run directory.
        epochs: epochs to train.
        maps: the overlay's maps of ``train`` (a :class:`MapStore` from :func:`igkd.compute_maps`, or
            ``(N, H, W)``); needed by the ``ig`` methods.
        normalize: the ``(mean, std)`` the networks take (the teacher's); None: pixels in [0, 1] as they are.
        augment: keys of the config's ``augment`` section: ``crop_padding`` (4), ``flip`` (True),
            ``overlay_p`` (0.1), ``power_range`` ([1, 2]), ``mix`` (0.5).
        resume: continue the run in ``out`` from its last checkpoint (same settings only).
        progress: show progress bars (None: when the output is a terminal).
        on_epoch_end: called as ``on_epoch_end(epoch, record)`` after each epoch.
        streaming: read the datasets (and a :class:`MapStore`'s maps) a batch at a time, in a background
            thread, instead of holding them in memory: for data larger than memory. The same run, bit for
            bit (the epoch plan does not depend on where the data lives). Labels are read once first: a
            dataset's ``targets`` when it has them, else one pass over its items; with a
            :class:`MapStore`, its check against the training images reads them once more first (both passes
            in the ``loader_workers`` processes).
        loader_workers: with ``streaming``, DataLoader worker processes that read (and decode) the training
            batches ahead of the loop; 0: one background thread. The same run either way (config key
            ``data.loader_workers``).
        **options: keys of the config's ``train`` section: ``batch_size`` (64), ``lr`` (1e-3), ``optimizer``
            (``adam`` or ``sgd``), ``schedule`` (``constant`` or ``cosine``), ``weight_decay``, ``seed`` (0),
            ``device`` (``auto``), ``threads``, ``amp``, ``channels_last``, ``compile``, ``checkpoint_every``,
            ``eval_batch_size``, ``test_eval``, ... (README, "Configuration"). A bad key or value is a
            :class:`~igkd.errors.ConfigError` that names it.

    Returns:
        The run's summary: ``test_acc_last``, ``val_acc_best`` and ``test_acc_at_best_val`` (with ``val``),
        ``epochs``, ``train_time_s``, the student's and teacher's sizes, ``seed``.
    """
    if isinstance(train, WithMaps):
        if train.transform is not None:
            raise ConfigError("fit augments on its own (augment=...): give it WithMaps without a transform, "
                              "or the dataset and maps=")
        maps = train.maps if maps is None else maps
        train = train.dataset
    cfg = config_from_dict({
        "train": {"epochs": epochs, **options},
        "augment": dict(augment or {}),
        "data": {"streaming": bool(streaming), "loader_workers": loader_workers},
        "distill": {"method": distiller.method, "alpha": distiller.settings["alpha"],
                    "temperature": distiller.settings["temperature"], "gamma": distiller.settings["gamma"],
                    "teacher_runtime": distiller.runtime},
    })
    if distiller.spec.ig and maps is None:
        raise ConfigError(f"method {distiller.method} overlays maps: pass maps=igkd.compute_maps(teacher, train, ...)")
    data = training_data_from_datasets(train, val, test, normalize, streaming=streaming, workers=loader_workers)
    train_images = data.train.subset(data.train_pos)  # one subset: its fingerprint is taken once, for both uses
    overlay = _train_maps(maps, data, train_images, streaming, loader_workers) if distiller.spec.ig else None
    device = setup_device(cfg.train.device, cfg.train.threads, cfg.train.deterministic)
    inputs = fit_inputs(distiller, data, train_images, maps, streaming)

    def extra(_history: list[dict]) -> dict:
        return {"role": "student", "method": distiller.method, "dataset": "python",
                "input_shape": inputs["image_shape"], "train_images": len(train_images),
                "val_images": len(data.val_pos), "test_images": len(data.test),
                "params": inputs["student"]["params"], "macs": inputs["student"]["macs"]}

    return run_fit(cfg, out, distiller, data, device, overlay, resume=resume, progress=progress,
                   on_epoch_end=on_epoch_end, extra=extra, streaming=streaming, inputs=inputs)
