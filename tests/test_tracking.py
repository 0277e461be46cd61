"""TensorBoard events in every run directory, following metrics.jsonl; a failure to write is a warning."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from igkd.config import load_config
from igkd.pipeline import distill, precompute, train_teacher
from igkd.tracking import EVENT_FILES, scalar_tags

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
