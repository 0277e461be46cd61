"""TensorBoard events in every run directory, following metrics.jsonl; MLflow in a file store and on a real
``mlflow server`` (a study as a parent run with its runs nested); a failure to write is a warning."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import warnings
from pathlib import Path

import pytest

from igkd.config import load_config
from igkd.errors import ConfigError
from igkd.experiments.study import StudyPlan, run_study
from igkd.pipeline import distill, precompute, train_teacher
from igkd.tracking import EVENT_FILES, MLFLOW_FILE, scalar_tags

from .toy_data import toy_settings, write_quadrants_npz


class Interrupt(Exception):
    pass


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """The toy task with a trained teacher and its IG store."""
    tmp = tmp_path_factory.mktemp("track")
    over = toy_settings(write_quadrants_npz(tmp / "toy.npz", n_train=160, n_test=80), tmp)
    over += ["teacher_train.epochs=2", "train.epochs=2", "augment.overlay_p=0.5"]
    train_teacher(load_config(None, over), tmp / "teacher", progress=False)
    over.append(f"teacher.checkpoint={tmp / 'teacher' / 'model.pt'}")
    precompute(load_config(None, over), progress=False)
    return tmp, over


def events(run: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    return acc


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def assert_events_follow_metrics(run: Path) -> None:
    acc = events(run)
    lines = metrics(run)
    for tag, _value in scalar_tags(lines[0]).items():
        if tag == "accuracy/val":
            continue  # no validation split in the toy settings: NaN, not shown
        shown = [(e.step, e.value) for e in acc.Scalars(tag)]
        assert shown == [(h["epoch"], pytest.approx(scalar_tags(h)[tag], rel=1e-6)) for h in lines], tag


def test_scalar_tags_name_every_number_of_an_epoch():
    record = {"epoch": 3, "lr": 0.001, "loss_ce": 1.5, "loss_kd": 0.25, "train_acc": 80.0, "val_acc": 70.0,
              "test_acc": 71.0, "epoch_time_s": 2.5, "loss": 1.75}
    assert scalar_tags(record) == {"train/lr": 0.001, "loss/ce": 1.5, "loss/kd": 0.25, "accuracy/train": 80.0,
                                   "accuracy/val": 70.0, "accuracy/test": 71.0, "time/epoch_s": 2.5,
                                   "loss/total": 1.75}


def test_an_ig_run_writes_its_epochs_and_its_maps_to_tensorboard(toy):
    tmp, over = toy
    run = tmp / "kd_ig"
    distill(load_config(None, [*over, "distill.method=kd_ig"]), run, progress=False)
    assert len(list(run.glob(EVENT_FILES))) == 1
    assert_events_follow_metrics(run)
    acc = events(run)
    assert {"loss/ce", "loss/kd", "loss/total", "accuracy/train", "accuracy/test", "train/lr",
            "time/epoch_s"} <= set(acc.Tags()["scalars"])
    assert set(acc.Tags()["images"]) == {"ig/images", "ig/maps", "ig/overlays"}
    shown = acc.Images("ig/overlays")[0]
    assert (shown.width, shown.height) > (12, 12)  # a grid of the 4 classes' first images
    # the teacher's run (no maps) has its scalars and no images
    assert_events_follow_metrics(tmp / "teacher")
    assert events(tmp / "teacher").Tags()["images"] == []


def test_a_resumed_run_shows_each_epoch_once(toy):
    tmp, over = toy
    cfg = load_config(None, [*over, "distill.method=kd", "train.epochs=3"])

    def stop_after_first(epoch, _record):
        if epoch == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        distill(cfg, tmp / "cut", progress=False, on_epoch_end=stop_after_first)
    assert [e.step for e in events(tmp / "cut").Scalars("loss/total")] == [1]  # shown before the stop
    distill(cfg, tmp / "cut", resume=True, progress=False)
    assert len(list((tmp / "cut").glob(EVENT_FILES))) == 1
    assert [e.step for e in events(tmp / "cut").Scalars("loss/total")] == [1, 2, 3]
    assert_events_follow_metrics(tmp / "cut")


def test_a_failure_to_write_events_is_a_warning_and_the_run_finishes(toy, monkeypatch):
    from torch.utils.tensorboard import SummaryWriter

    tmp, over = toy

    def disk_full(*_args, **_kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(SummaryWriter, "add_scalar", disk_full)
    with pytest.warns(RuntimeWarning, match=r"TensorBoard: could not write .*No space left.*the run goes on"):
        summary = distill(load_config(None, [*over, "distill.method=student"]), tmp / "full", progress=False)
    assert summary["epochs"] == 2 and len(metrics(tmp / "full")) == 2


def test_tensorboard_can_be_turned_off(toy):
    tmp, over = toy
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        distill(load_config(None, [*over, "distill.method=student", "track.tensorboard=false"]), tmp / "off",
                progress=False)
    assert not list((tmp / "off").glob(EVENT_FILES)) and len(metrics(tmp / "off")) == 2


def test_where_a_run_is_shown_is_not_part_of_what_it_is(toy, capsys):
    from igkd.pipeline import run_or_reuse

    tmp, over = toy
    shown = load_config(None, [*over, "distill.method=student", "train.epochs=1"])
    hidden = load_config(None, [*over, "distill.method=student", "train.epochs=1", "track.tensorboard=false",
                                "track.mlflow_uri=file:///nowhere"])
    assert shown.digest() == hidden.digest() and shown.to_dict() != hidden.to_dict()
    first = run_or_reuse(tmp / "same", shown, distill, "student")
    again = run_or_reuse(tmp / "same", hidden, distill, "student")
    assert again["test_acc_last"] == first["test_acc_last"] and again["files"] == first["files"]
    assert "student: reusing" in capsys.readouterr().out
    assert load_config(None, ["train.epochs=2"]).digest() != shown.digest()


def test_the_mlflow_uri_comes_from_the_config_or_the_environment_and_local_stores_are_absolute(tmp_path,
                                                                                            monkeypatch):
    from igkd.tracking import mlflow_uri

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert mlflow_uri(load_config(None, [])) is None
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert mlflow_uri(load_config(None, [])) == "http://127.0.0.1:5000"
    for given, store in (("file:./mlruns", "mlruns"), ("mlruns", "mlruns"), ("runs/ml", "runs/ml")):
        assert mlflow_uri(load_config(None, [f"track.mlflow_uri={given}"])) == (tmp_path / store).as_uri()
    assert mlflow_uri(load_config(None, ["track.mlflow_uri=sqlite:///m.db"])) == f"sqlite:///{tmp_path / 'm.db'}"
    assert mlflow_uri(load_config(None, ["track.mlflow_uri=sqlite:////abs/m.db"])) == "sqlite:////abs/m.db"
    with pytest.raises(ConfigError, match="bad value for track.mlflow_uri"):
        load_config(None, ["track.mlflow_uri="  "''"])


# -- MLflow ----------------------------------------------------------------------------------------


def client(uri: str):
    return pytest.importorskip("mlflow").MlflowClient(tracking_uri=uri)


def runs_of(uri: str) -> list:
    c = client(uri)
    experiment = c.get_experiment_by_name("igkd")
    return c.search_runs([experiment.experiment_id]) if experiment else []


def assert_logged_like_the_run(uri: str, run_dir: Path, method: str) -> None:
    c = client(uri)
    run_id = json.loads((run_dir / MLFLOW_FILE).read_text())["run_id"]
    logged = c.get_run(run_id)
    assert logged.info.status == "FINISHED" and logged.info.run_name == run_dir.name
    assert logged.data.params["distill.method"] == method and "track.mlflow_uri" not in logged.data.params
    lines = metrics(run_dir)
    for tag in ("loss/total", "accuracy/test", "train/lr"):
        history = sorted((m.step, m.value) for m in c.get_metric_history(run_id, tag))
        assert history == [(h["epoch"], pytest.approx(scalar_tags(h)[tag])) for h in lines], tag
    summary = json.loads((run_dir / "summary.json").read_text())
    assert logged.data.metrics["summary/test_acc_last"] == pytest.approx(summary["test_acc_last"])
    files = {a.path for a in c.list_artifacts(run_id)}
    assert {"config.yaml", "env.json", "metrics.jsonl", "summary.json", "model.pt"} <= files


@pytest.mark.slow
def test_a_run_logs_to_a_file_store_and_a_resumed_run_continues_it(toy, tmp_path, monkeypatch):
    tmp, over = toy
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps its file store on request
    uri = (tmp_path / "mlruns").as_uri()
    cfg = load_config(None, [*over, "distill.method=kd_ig", "train.epochs=3", f"track.mlflow_uri={uri}"])

    def stop_after_first(epoch, _record):
        if epoch == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        distill(cfg, tmp_path / "run", progress=False, on_epoch_end=stop_after_first)
    (first,) = runs_of(uri)
    assert first.info.status == "FAILED"
    distill(cfg, tmp_path / "run", resume=True, progress=False)
    (again,) = runs_of(uri)  # the same MLflow run, each epoch once
    assert again.info.run_id == first.info.run_id
    assert_logged_like_the_run(uri, tmp_path / "run", "kd_ig")


@pytest.mark.slow
def test_an_unreachable_server_is_a_warning_and_the_run_finishes(toy, tmp_path, monkeypatch):
    tmp, over = toy
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{_free_port()}")  # nothing listens
    with pytest.warns(RuntimeWarning, match=r"MLflow: could not write .*the run goes on"):
        summary = distill(load_config(None, [*over, "distill.method=student"]), tmp_path / "run", progress=False)
    assert summary["epochs"] == 2 and (tmp_path / "run" / "summary.json").is_file()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    """A real ``mlflow server`` on 127.0.0.1 (a free port), stopped at the end."""
    pytest.importorskip("mlflow")
    port = _free_port()
    cmd = [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
           "--artifacts-destination", str(tmp_path / "artefacts"), "--workers", "1"]
    log = open(tmp_path / "server.log", "wb")
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not start: {(tmp_path / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield uri
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


@pytest.mark.slow
def test_a_study_is_a_parent_run_with_its_runs_nested_on_a_server(toy, tmp_path, monkeypatch, mlflow_server):
    tmp, over = toy
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    cfg = load_config(None, [o for o in over if not o.startswith("teacher.checkpoint=")])  # the study trains it
    out = tmp_path / "study"
    run_study(cfg, StudyPlan("montecarlo", ["student", "kd_ig"], 1, [11]), out, workers=1)
    runs = {r.info.run_name: r for r in runs_of(mlflow_server)}
    parent = runs.pop("study")
    assert parent.info.status == "FINISHED" and parent.data.tags["igkd.role"] == "montecarlo"
    assert json.loads(parent.data.params["plan.methods"]) == ["student", "kd_ig"]
    assert {a.path for a in client(mlflow_server).list_artifacts(parent.info.run_id)} >= {"study.json",
                                                                                         "results.csv"}
    assert set(runs) == {"teacher", "student-k11-r000", "kd_ig-k11-r000"}
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in runs.values())
    for name in ("student", "kd_ig"):
        assert_logged_like_the_run(mlflow_server, out / "runs" / f"{name}-k11-r000", name)
