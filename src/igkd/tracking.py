"""Where a run is also shown: TensorBoard event files in its run directory (``track.tensorboard``, on by
default) and an MLflow run when a tracking URI is set (``track.mlflow_uri`` or ``$MLFLOW_TRACKING_URI``).

``metrics.jsonl`` stays the record. The tracker follows it: after each epoch it shows the lines not yet
shown, and a resumed run starts its events again from the file, so what TensorBoard shows is what the
file holds. Each run directory has its own event stream, so ``tensorboard --logdir STUDY`` compares a
study's runs. Writing is cheap (a dozen scalars an epoch, a few images once) and never ends a run: a
failure to write is a warning, and that destination is dropped for the rest of the run.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from .config import Config
from .runs import RunDir

EVENT_FILES = "events.out.tfevents.*"


def scalar_tags(record: dict) -> dict[str, float]:
    """An epoch's line of ``metrics.jsonl`` as TensorBoard tags: loss/<term>, loss/total, accuracy/<split>,
    train/lr, time/epoch_s (any other number under other/)."""
    tags = {}
    for key, value in record.items():
        if key == "epoch" or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if key == "loss":
            tag = "loss/total"
        elif key.startswith("loss_"):
            tag = f"loss/{key[5:]}"
        elif key.endswith("_acc"):
            tag = f"accuracy/{key[:-4]}"
        else:
            tag = {"lr": "train/lr", "epoch_time_s": "time/epoch_s"}.get(key, f"other/{key}")
        tags[tag] = float(value)
    return tags


class RunTracker:
    """A run's TensorBoard events (and MLflow run), for the block of a ``with``; inert when ``active`` is
    false (data-parallel ranks other than 0)."""

    def __init__(self, run: RunDir, cfg: Config, active: bool = True):
        self.run, self.cfg = run, cfg
        self._shown = 0  # lines of metrics.jsonl shown so far
        self._tb = None
        if active and cfg.track.tensorboard:
            try:
                self._tb = _open_events(run.path)
            except Exception as e:  # noqa: BLE001 - showing a run never ends it
                self._warn("TensorBoard", e)

    def __enter__(self) -> RunTracker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def follow(self, on_epoch_end: Callable[[int, dict], None] | None = None) -> Callable[[int, dict], None]:
        """An ``on_epoch_end`` for :func:`~igkd.distill.trainer.fit` that shows the new epochs, then calls
        ``on_epoch_end`` (so an epoch is shown before a caller stops the run after it)."""

        def after_epoch(epoch: int, record: dict) -> None:
            self.show_epochs()
            if on_epoch_end is not None:
                on_epoch_end(epoch, record)

        return after_epoch

    def show_epochs(self) -> None:
        """The lines of ``metrics.jsonl`` not shown yet."""
        if self._tb is None:
            return
        path = self.run.file("metrics.jsonl")
        lines = path.read_text().splitlines() if path.is_file() else []
        records = [json.loads(line) for line in lines[self._shown:]]
        self._shown = len(lines)
        self._tensorboard(lambda writer: _write_scalars(writer, records))

    def show_examples(self, images: torch.Tensor, maps: torch.Tensor, overlays: torch.Tensor) -> None:
        """A few training images (uint8 N, C, H, W), their maps (N, H, W, each shown on its own scale)
        and their overlays (uint8), as three image grids at step 0."""
        self._tensorboard(lambda writer: _write_examples(writer, images, maps, overlays))

    def finish(self, summary: dict) -> dict:
        """Show what is left of the run once it has finished; return ``summary``."""
        self.show_epochs()
        return summary

    def close(self) -> None:
        self._tensorboard(lambda writer: writer.close())
        self._tb = None

    def _tensorboard(self, fn: Callable) -> None:
        """``fn(writer)``; if it fails, a warning, and no more events for this run."""
        if self._tb is None:
            return
        try:
            fn(self._tb)
        except Exception as e:  # noqa: BLE001 - showing a run never ends it
            self._tb = None
            self._warn("TensorBoard", e)

    def _warn(self, what: str, error: Exception) -> None:
        warnings.warn(f"{what}: could not write for {self.run.path} ({type(error).__name__}: {error}); the run "
                      "goes on without it (metrics.jsonl holds every epoch)", RuntimeWarning, stacklevel=3)


def _open_events(path: Path):
    """A TensorBoard writer in ``path``, its earlier event files removed: a resumed run shows
    ``metrics.jsonl`` again from its first line, so no epoch is shown twice."""
    from torch.utils.tensorboard import SummaryWriter

    for old in path.glob(EVENT_FILES):
        old.unlink()
    return SummaryWriter(log_dir=str(path))


def _write_scalars(writer, records: list[dict]) -> None:
    for record in records:
        for tag, value in scalar_tags(record).items():
            if math.isfinite(value):
                writer.add_scalar(tag, value, record["epoch"])
    writer.flush()


def _write_examples(writer, images: torch.Tensor, maps: torch.Tensor, overlays: torch.Tensor) -> None:
    m = maps.float().abs()
    top = m.flatten(1).amax(1).clamp_min(torch.finfo(torch.float32).tiny)[:, None, None]
    writer.add_images("ig/images", images.float() / 255, 0)
    writer.add_images("ig/maps", (m / top)[:, None], 0)
    writer.add_images("ig/overlays", overlays.float() / 255, 0)
    writer.flush()


__all__ = ["EVENT_FILES", "RunTracker", "scalar_tags"]
