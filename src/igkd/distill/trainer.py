"""The training loop, shared by teacher training and every distillation method (nanoGPT's shape)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..config import AugmentConfig, TrainConfig
from ..convention import InputConvention
from ..data.augment import augment_batch
from ..data.image_dataset import ImageDataset
from ..errors import NumericalError
from ..fileio import atomic_torch_save
from ..runs import RunDir
from ..utils import derive_seed, progress_bar
from .methods import Distiller


@dataclass
class TrainingData:
    """The training set (positions into it are what a map store is keyed by), its split, the test set."""

    train: ImageDataset
    test: ImageDataset
    train_pos: torch.Tensor
    val_pos: torch.Tensor
    convention: InputConvention


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, convention: InputConvention,
             batch_size: int = 1000) -> float:
    """Top-1 accuracy in percent on uint8 images (already on the model's device)."""
    if len(y) == 0:
        return float("nan")
    was_training = model.training
    model.eval()
    correct = 0
    for i in range(0, len(y), batch_size):
        logits = model(convention.from_uint8(x[i:i + batch_size]))
        correct += (logits.argmax(1) == y[i:i + batch_size]).sum().item()
    model.train(was_training)
    return 100.0 * correct / len(y)


def make_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True)


def _lr_at(cfg: TrainConfig, epoch: int) -> float:
    if cfg.schedule == "cosine":
        import math

        return 0.5 * cfg.lr * (1 + math.cos(math.pi * epoch / cfg.epochs))
    return cfg.lr


def fit(
    distiller: Distiller,
    data: TrainingData,
    cfg: TrainConfig,
    aug: AugmentConfig,
    run: RunDir,
    device: torch.device,
    maps: torch.Tensor | None = None,
    resume: bool = False,
    on_epoch_end: Callable[[int, dict], None] | None = None,
    progress: bool | None = None,
    desc: str = "train",
) -> list[dict]:
    """Train ``distiller.student`` for ``cfg.epochs``; return the per-epoch history.

    ``maps`` (N, H, W), indexed by training-set position, is needed when the method uses the IG overlay.
    Every random draw of epoch e comes from generators seeded by (seed, e), and the checkpoint after
    each epoch holds everything else, so a resumed run ends exactly where an uninterrupted one does.
    """
    if distiller.spec.ig and maps is None:
        raise ValueError("the IG overlay needs maps")
    distiller.to(device)
    model = distiller.student
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], cfg)
    history: list[dict] = []
    start_epoch = 0
    best_val = float("-inf")
    if resume and run.checkpoint.is_file():
        state = torch.load(run.checkpoint, map_location=device, weights_only=True)  # never runs code
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        history, start_epoch, best_val = state["history"], state["epoch"], state["best_val"]

    x_train, y_train = data.train.x.to(device), data.train.y.to(device)
    x_test, y_test = data.test.x.to(device), data.test.y.to(device)
    val_pos = data.val_pos.to(device)
    x_val, y_val = x_train[val_pos], y_train[val_pos]
    use_overlay = distiller.spec.ig and aug.overlay_p > 0

    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        gen = torch.Generator().manual_seed(derive_seed(cfg.seed, "batches", epoch))
        overlay_gen = torch.Generator().manual_seed(derive_seed(cfg.seed, "overlay", epoch))
        torch.manual_seed(derive_seed(cfg.seed, "torch", epoch))  # dropout and anything else global
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(cfg, epoch)
        order = data.train_pos[torch.randperm(len(data.train_pos), generator=gen)]
        distiller.train()
        sums: dict[str, torch.Tensor] = {}
        correct = torch.zeros((), device=device)
        seen = 0
        batches = range(0, len(order), cfg.batch_size)
        bar = progress_bar(batches, desc=f"{desc} {epoch + 1}/{cfg.epochs}", leave=False, unit="batch",
                           enabled=progress)
        for step, i in enumerate(bar, start=1):
            pos = order[i:i + cfg.batch_size]
            if len(pos) < 2:  # batch norm cannot train on one sample
                continue
            pos_dev = pos.to(device)
            x = x_train[pos_dev].float().div_(255.0)
            y = y_train[pos_dev]
            m = maps[pos_dev] if use_overlay else None
            x = augment_batch(x, m, gen, aug.crop_padding, aug.flip, aug.overlay_p if use_overlay else 0.0,
                              tuple(aug.power_range), aug.mix, overlay_gen)
            logits, losses = distiller.forward_train(data.convention.normalize(x), y)
            loss = sum(losses.values())
            if not torch.isfinite(loss):  # stop before the update: the last checkpoint stays good
                bar.close()
                kept = (f"{run.checkpoint} keeps epoch {epoch}" if run.checkpoint.is_file()
                        else "no epoch had finished, so no checkpoint was written")
                terms = ", ".join(f"{k} {v.item():.4g}" for k, v in losses.items())
                raise NumericalError(f"{desc}: the loss became {loss.item()} ({terms}) at epoch {epoch + 1}, "
                                     f"step {step}; training stopped and {kept}: lower the learning rate "
                                     "or check the data")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            for name, value in losses.items():
                sums[name] = sums.get(name, 0.0) + value.detach() * len(pos)
            correct += (logits.argmax(1) == y).sum()
            seen += len(pos)
        bar.close()
        record = {
            "epoch": epoch + 1,
            "lr": optimizer.param_groups[0]["lr"],
            **{f"loss_{k}": (v / seen).item() for k, v in sums.items()},
            "train_acc": 100.0 * correct.item() / max(seen, 1),
            "val_acc": evaluate(model, x_val, y_val, data.convention, cfg.eval_batch_size),
            "test_acc": evaluate(model, x_test, y_test, data.convention, cfg.eval_batch_size),
            "epoch_time_s": time.perf_counter() - t0,
        }
        record["loss"] = sum(v for k, v in record.items() if k.startswith("loss_"))
        history.append(record)
        if len(val_pos) and record["val_acc"] > best_val:
            best_val = record["val_acc"]
            atomic_torch_save(model.state_dict(), run.file("best.pt"))
        atomic_torch_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch + 1,
                           "history": history, "best_val": best_val}, run.checkpoint)
        run.write_metrics(history)
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, record)
    atomic_torch_save(model.state_dict(), run.file("model.pt"))
    return history


def summarize(history: list[dict]) -> dict:
    """Test accuracy after the last epoch and at the best-on-validation epoch (first of ties)."""
    last = history[-1]
    out = {"epochs": last["epoch"], "test_acc_last": last["test_acc"], "val_acc_last": last["val_acc"]}
    with_val = [h for h in history if h["val_acc"] == h["val_acc"]]  # NaN when there is no split
    if with_val:
        best = max(with_val, key=lambda h: h["val_acc"])
        out.update(best_epoch=best["epoch"], val_acc_best=best["val_acc"], test_acc_at_best_val=best["test_acc"])
    out["train_time_s"] = sum(h["epoch_time_s"] for h in history)
    return out


__all__ = ["TrainingData", "evaluate", "fit", "summarize"]
