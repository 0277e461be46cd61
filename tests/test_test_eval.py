"""train.test_eval=end: the test set only after the last epoch and on the best-validation epoch's weights,
giving the summary the same two numbers an every-epoch run gives."""

import json
import math

from igkd.config import load_config
from igkd.pipeline import distill

from .toy_data import toy_settings, write_quadrants_npz


def _history(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_end_only_gives_the_every_epoch_summary(tmp_path):
    data = write_quadrants_npz(tmp_path / "toy.npz")
    # a high constant learning rate makes validation accuracy rise and fall, so the best epoch is not the last
    sets = [*toy_settings(data, tmp_path), "distill.method=student", "train.epochs=6", "train.lr=0.05",
            "data.val_fraction=0.25"]
    every = distill(load_config(None, sets), tmp_path / "every", progress=False)
    end = distill(load_config(None, [*sets, "train.test_eval=end"]), tmp_path / "end", progress=False)
    h_every, h_end = _history(tmp_path / "every"), _history(tmp_path / "end")
    assert every["best_epoch"] == end["best_epoch"] < 6, "the toy run must peak before its last epoch"
    assert end["test_acc_last"] == every["test_acc_last"]
    assert end["test_acc_at_best_val"] == every["test_acc_at_best_val"]
    for a, b in zip(h_every, h_end):
        assert a["val_acc"] == b["val_acc"] and a["loss"] == b["loss"]  # the same training
        tested = b["epoch"] in (6, end["best_epoch"])
        assert (b["test_acc"] == a["test_acc"]) if tested else math.isnan(b["test_acc"])
