"""Where a run is also shown: TensorBoard event files in its run directory (``track.tensorboard``, on by
default) and an MLflow run when a tracking URI is set (``track.mlflow_uri`` or ``$MLFLOW_TRACKING_URI``).

``metrics.jsonl`` stays the record. The tracker follows it: after each epoch it shows the lines not yet
shown, and a resumed run starts its events again from the file, so what TensorBoard shows is what the
file holds. Each run directory has its own event stream, so ``tensorboard --logdir STUDY`` compares a
study's runs. Writing is cheap (a dozen scalars an epoch, a few images once) and never ends a run: a
failure to write is a warning, and that destination is dropped for the rest of the run.

MLflow (the ``tracking`` extra): a run logs its config as parameters, each epoch's numbers as metrics,
its summary and its files (config, environment, metrics, summary, weights) as artefacts. A study or a
search is a parent run with its runs nested (``track.mlflow_parent_run``, set by the study for its
runs); ``mlflow.json`` in a run or study folder names its MLflow run, so a resumed one continues it.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

import torch

from .config import Config, only_keys
from .errors import ConfigError
from .fileio import write_json
from .runs import RunDir

EVENT_FILES = "events.out.tfevents.*"
MLFLOW_FILE = "mlflow.json"
RUN_ARTEFACTS = ("config.yaml", "inputs.json", "env.json", "metrics.jsonl", "summary.json", "model.pt")


def mlflow_uri(cfg: Config) -> str | None:
    """The MLflow tracking URI: ``track.mlflow_uri``, else ``$MLFLOW_TRACKING_URI``, else None (no MLflow).
    A local store's path (a folder, ``file:``, ``sqlite:///``) is made absolute, so runs in other processes
    (Ray) log to the same store."""
    uri = cfg.track.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI") or None
    if uri is None:
        return None
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri[len("sqlite:///"):]).resolve())
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file") and not parsed.netloc:
        return Path(parsed.path).resolve().as_uri()
    return uri


def flat_params(tree: dict, prefix: str = "") -> dict[str, str]:
    """``{"train.lr": "0.001", ...}``: a config as MLflow parameters."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flat_params(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = json.dumps(value) if isinstance(value, (list, bool)) or value is None \
                else str(value)
    return out


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
    """A run's TensorBoard events and MLflow run, for the block of a ``with``; inert when ``active`` is
    false (data-parallel ranks other than 0)."""

    def __init__(self, run: RunDir, cfg: Config, active: bool = True, role: str = "student",
                 keys: dict[str, tuple[str, ...] | None] | None = None):
        """``keys``: the config's sections and keys that describe the run, logged as its parameters (a
        run of :func:`igkd.fit`: :data:`~igkd.config.PYTHON_RUN_KEYS`); None: all of them."""
        self.run, self.cfg = run, cfg
        self._tb = self._mlflow = None
        self._tb_shown = 0  # epochs shown in the event files so far
        if not active:
            return
        if cfg.track.tensorboard:
            try:
                self._tb = _open_events(run.path)
            except Exception as e:  # noqa: BLE001 - showing a run never ends it
                self._warn("TensorBoard", e)
        uri = mlflow_uri(cfg)
        if uri is not None and _have_mlflow(explicit=cfg.track.mlflow_uri is not None):
            try:
                self._mlflow = MlflowRun.open(uri, run.path, cfg.track, run.path.name,
                                              params=flat_params(only_keys(cfg.identity(), keys)),
                                              tags={"igkd.role": role})
            except Exception as e:  # noqa: BLE001 - an unreachable server, a refused store: a warning
                self._warn("MLflow", e)

    def __enter__(self) -> RunTracker:
        return self

    def __exit__(self, exc_type, *_exc) -> None:
        self.close(failed=exc_type is not None)

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
        if self._tb is None and self._mlflow is None:
            return
        path = self.run.file("metrics.jsonl")
        records = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
        tb_new = [r for r in records if r["epoch"] > self._tb_shown]
        self._tb_shown = max([self._tb_shown, *(r["epoch"] for r in tb_new)])
        self._tensorboard(lambda writer: _write_scalars(writer, tb_new))
        self._to_mlflow(lambda ml: ml.log_epochs(records))

    def show_examples(self, images: torch.Tensor, maps: torch.Tensor, overlays: torch.Tensor) -> None:
        """A few training images (uint8 N, C, H, W), their maps (N, H, W, each shown on its own scale)
        and their overlays (uint8), as three image grids at step 0."""
        self._tensorboard(lambda writer: _write_examples(writer, images, maps, overlays))

    def finish(self, summary: dict) -> dict:
        """Show what is left of the run once it has finished (MLflow: its summary and files); return
        ``summary``."""
        self.show_epochs()
        self._to_mlflow(lambda ml: ml.finish(summary, [self.run.file(n) for n in RUN_ARTEFACTS]))
        return summary

    def close(self, failed: bool = False) -> None:
        self._tensorboard(lambda writer: writer.close())
        self._to_mlflow(lambda ml: ml.end("FAILED" if failed else "FINISHED"))
        self._tb = self._mlflow = None

    def _tensorboard(self, fn: Callable) -> None:
        """``fn(writer)``; if it fails, a warning, and no more events for this run."""
        self._guarded("_tb", "TensorBoard", fn)

    def _to_mlflow(self, fn: Callable) -> None:
        """``fn(mlflow run)``; if it fails, a warning, and no more MLflow logging for this run."""
        self._guarded("_mlflow", "MLflow", fn)

    def _guarded(self, attr: str, what: str, fn: Callable) -> None:
        target = getattr(self, attr)
        if target is None:
            return
        try:
            fn(target)
        except Exception as e:  # noqa: BLE001 - showing a run never ends it
            setattr(self, attr, None)
            self._warn(what, e)

    def _warn(self, what: str, error: Exception) -> None:
        _warn(what, self.run.path, error)


class StudyTracker:
    """A study's or a search's MLflow parent run (when a tracking URI is set), for the block of a ``with``:
    :meth:`start` it once the folder is claimed, :meth:`nest` the config its runs are made from, and the
    files named by ``artefacts`` are logged when the block ends."""

    def __init__(self, cfg: Config, out: Path, artefacts: tuple[str, ...]):
        self.cfg, self.out, self.artefacts = cfg, Path(out), artefacts
        self._mlflow: MlflowRun | None = None

    def start(self, kind: str, params: dict) -> None:
        uri = mlflow_uri(self.cfg)
        if uri is None or not _have_mlflow(explicit=self.cfg.track.mlflow_uri is not None):
            return
        try:
            self._mlflow = MlflowRun.open(uri, self.out, self.cfg.track, self.out.name,
                                          params={**flat_params(params), **flat_params(self.cfg.identity())},
                                          tags={"igkd.role": kind})
        except Exception as e:  # noqa: BLE001
            _warn("MLflow", self.out, e)

    def nest(self, cfg: Config) -> Config:
        """``cfg`` (changed in place) with its runs nested under this parent run, in the same store."""
        if self._mlflow is not None:
            cfg.track.mlflow_uri = self._mlflow.uri
            cfg.track.mlflow_parent_run = self._mlflow.run_id
        return cfg

    def __enter__(self) -> StudyTracker:
        return self

    def __exit__(self, exc_type, *_exc) -> None:
        if self._mlflow is None:
            return
        ml, self._mlflow = self._mlflow, None
        try:
            if exc_type is None:
                ml.log_files([self.out / name for name in self.artefacts])
            ml.end("FAILED" if exc_type is not None else "FINISHED")
        except Exception as e:  # noqa: BLE001
            _warn("MLflow", self.out, e)


class MlflowRun:
    """One MLflow run through :class:`mlflow.MlflowClient` (no global active run: a study's threads and
    processes each log their own), named in ``mlflow.json`` of its folder so that a resumed run
    continues it."""

    def __init__(self, client, run_id: str, logged: int):
        self.client, self.run_id, self.logged = client, run_id, logged  # epochs logged so far
        self.uri = client.tracking_uri

    @classmethod
    def open(cls, uri: str, folder: Path, track, name: str, params: dict[str, str], tags: dict) -> MlflowRun:
        from mlflow import MlflowClient
        from mlflow.entities import Param

        client = MlflowClient(tracking_uri=uri)
        record = folder / MLFLOW_FILE
        try:
            old = json.loads(record.read_text()) if record.is_file() else {}
        except (OSError, json.JSONDecodeError):
            old = {}
        if old.get("tracking_uri") == client.tracking_uri and old.get("run_id"):
            run_id = old["run_id"]
            client.update_run(run_id, status="RUNNING")
            logged = max((m.step for m in client.get_metric_history(run_id, "loss/total")), default=0)
            return cls(client, run_id, logged)
        experiment = client.get_experiment_by_name(track.mlflow_experiment)
        experiment_id = (experiment.experiment_id if experiment is not None
                         else client.create_experiment(track.mlflow_experiment))
        tags = {**tags, "igkd.folder": str(folder.resolve())}
        if track.mlflow_parent_run:
            tags["mlflow.parentRunId"] = track.mlflow_parent_run
        run_id = client.create_run(experiment_id, tags=tags, run_name=name).info.run_id
        items = list(params.items())
        for i in range(0, len(items), 100):  # MLflow takes at most 100 parameters per call
            client.log_batch(run_id, params=[Param(k, v[:6000]) for k, v in items[i:i + 100]])
        write_json(record, {"tracking_uri": client.tracking_uri, "run_id": run_id})
        return cls(client, run_id, 0)

    def log_epochs(self, records: list[dict]) -> None:
        from mlflow.entities import Metric

        new = [r for r in records if r["epoch"] > self.logged]
        metrics = [Metric(tag, value, _now_ms(), r["epoch"]) for r in new
                   for tag, value in scalar_tags(r).items() if math.isfinite(value)]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[i:i + 1000])
        self.logged = max([self.logged, *(r["epoch"] for r in new)])

    def finish(self, summary: dict, files: list[Path]) -> None:
        from mlflow.entities import Metric

        numbers = {k: float(v) for k, v in summary.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
        self.client.log_batch(self.run_id, metrics=[Metric(f"summary/{k}", v, _now_ms(), 0)
                                                    for k, v in numbers.items()])
        self.log_files(files)

    def log_files(self, files: list[Path]) -> None:
        for path in files:
            if path.is_file():
                self.client.log_artifact(self.run_id, str(path))

    def end(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status)


def _have_mlflow(explicit: bool) -> bool:
    """Whether the mlflow package is there; without it, a ConfigError when the config asked for MLflow, a
    warning when only ``$MLFLOW_TRACKING_URI`` did (it may be set for other tools)."""
    if importlib.util.find_spec("mlflow") is not None:
        return True
    if explicit:
        raise ConfigError("track.mlflow_uri needs MLflow: pip install 'igkd[tracking]' (or unset it)")
    warnings.warn("MLFLOW_TRACKING_URI is set but MLflow is not installed: runs are not logged to it "
                  "(pip install 'igkd[tracking]')", RuntimeWarning, stacklevel=3)
    return False


def _now_ms() -> int:
    return int(time.time() * 1000)


def _warn(what: str, where: Path, error: Exception) -> None:
    warnings.warn(f"{what}: could not write for {where} ({type(error).__name__}: {error}); the run goes on "
                  "without it (metrics.jsonl holds every epoch)", RuntimeWarning, stacklevel=4)


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


__all__ = ["EVENT_FILES", "MLFLOW_FILE", "MlflowRun", "RunTracker", "StudyTracker", "flat_params", "mlflow_uri",
           "scalar_tags"]
