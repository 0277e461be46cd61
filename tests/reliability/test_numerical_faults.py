"""A non-finite loss stops training with the epoch and step, and the last good checkpoint is kept."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from igkd.config import AugmentConfig, DistillConfig, TrainConfig
from igkd.convention import InputConvention
from igkd.data.image_dataset import ImageDataset
from igkd.distill.methods import Distiller
from igkd.distill.trainer import TrainingData, fit
from igkd.errors import NumericalError
from igkd.runs import RunDir


class Poisoned(nn.Module):
    """A small classifier whose output turns NaN from a given forward call on (training only)."""

    def __init__(self, nan_from_call: int):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
        self.calls, self.nan_from = 0, nan_from_call

    def forward(self, x):
        out = self.net(x)
        if self.training:
            self.calls += 1
            if self.calls >= self.nan_from:
                out = out * float("nan")
        return out


def _data(n=40):
    g = torch.Generator().manual_seed(0)
    ds = ImageDataset("synthetic", torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8, generator=g),
                      torch.arange(n) % 3, ["a", "b", "c"])
    return TrainingData(ds, ds, torch.arange(n), torch.arange(6), InputConvention((0.5,), (0.25,)))


@pytest.mark.parametrize("nan_from_call,epoch,step", [(7, 2, 2), (2, 1, 2)])
def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, nan_from_call, epoch, step):
    cfg = TrainConfig(epochs=3, batch_size=8, device="cpu")  # 5 steps per epoch
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    student = Poisoned(nan_from_call)
    with pytest.raises(NumericalError, match=rf"loss became nan .*at epoch {epoch}, step {step}; training stopped"):
        fit(Distiller.from_config(student, None, "student", DistillConfig()), _data(), cfg,
            AugmentConfig(crop_padding=1), run, torch.device("cpu"))
    assert not run.file("model.pt").exists() and not run.complete
    if epoch == 1:
        assert not run.checkpoint.exists()
    else:  # the checkpoint is the one written after the last good epoch, and loads as weights only
        state = torch.load(run.checkpoint, weights_only=True)
        assert state["epoch"] == epoch - 1 and len(state["history"]) == epoch - 1
        assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
