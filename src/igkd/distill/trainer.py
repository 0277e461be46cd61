"""The training loop, shared by teacher training and every distillation method (nanoGPT's shape)."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .. import distributed
from ..config import AugmentConfig, TrainConfig
from ..convention import InputConvention
from ..data.augment import AugmentDraws, apply_draws, draw_batches
from ..data.image_dataset import ImageDataset
from ..distributed import DistContext
from ..errors import CheckpointError, ConfigError, NumericalError
from ..runs import RunDir, load_checkpoint, save_checkpoint
from ..utils import AMP_MODES, derive_seed, progress_bar
from .methods import Distiller

_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


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
             batch_size: int = 1000, ctx: DistContext | None = None) -> float:
    """Top-1 accuracy in percent on uint8 images (already on the model's device).

    With a data-parallel ``ctx`` each rank evaluates its contiguous part and the counts are summed.
    """
    if len(y) == 0:
        return float("nan")
    ctx = ctx or DistContext()
    lo, hi = ctx.shard(len(y))
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=y.device)
    for i in range(lo, hi, batch_size):
        logits = model(convention.from_uint8(x[i:min(i + batch_size, hi)]))
        correct += (logits.argmax(1) == y[i:min(i + batch_size, hi)]).sum()
    model.train(was_training)
    return 100.0 * ctx.all_reduce_(correct).item() / len(y)


def load_batch(x_train: torch.Tensor, y_train: torch.Tensor, maps: torch.Tensor | None, pos: torch.Tensor,
               draws: AugmentDraws, convention: InputConvention, mix: float = 0.5,
               channels_last: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The data path of a step, all on the data's device: gather the images (and maps) at training-set
    positions ``pos``, crop, flip and overlay them with ``draws``, normalise. Returns network input and labels."""
    x = apply_draws(x_train[pos].float().div_(255.0), None if maps is None else maps[pos], draws, mix)
    x = convention.normalize(x)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x, y_train[pos]


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
    The whole data set sits on ``device`` as uint8; an epoch's order and augmentation draws are made on
    the host once, at its start, so a step reads nothing back from the device (except the loss check,
    ``cfg.check_finite_every``).

    Data-parallel when this process has joined a process group (:func:`igkd.distributed.session`, under
    torchrun): ``cfg.batch_size`` is the global batch. Every rank draws the same order and the same
    augmentation for the whole global batch, then trains on its contiguous part of it (positions into
    the training set, so each map stays with its image); DDP averages the gradients, each rank's loss
    weighted by its share of the batch, so the update is the one-process update of the global batch
    (exactly so without batch norm, or with ``cfg.sync_bn``). Metrics and evaluation are summed over the
    ranks; rank 0 alone writes the run directory; ``on_epoch_end`` is called on every rank.
    """
    if distiller.spec.ig and maps is None:
        raise ValueError("the IG overlay needs maps")
    ctx = distributed.current()
    if cfg.batch_size < 2 * ctx.world_size:
        raise ConfigError(f"bad value for train.batch_size: {cfg.batch_size} (allowed: >= {2 * ctx.world_size}: "
                          f"the global batch, at least 2 images for each of {ctx.world_size} processes)")
    sync_bn = distributed.resolve_sync_bn(cfg.sync_bn, ctx, device)
    distiller.to(device)
    if sync_bn:
        distiller.student = nn.SyncBatchNorm.convert_sync_batchnorm(distiller.student)
    if cfg.channels_last:
        distiller.to(memory_format=torch.channels_last)
    model = distiller.student
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], cfg)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
    autocast = functools.partial(torch.autocast, device.type, dtype=_AMP_DTYPES.get(cfg.amp),
                                 enabled=cfg.amp != "none")
    history: list[dict] = []
    start_epoch = 0
    best_val = float("-inf")
    partial = None  # where a checkpoint taken inside an epoch stopped
    # checksum checked, never runs code; read by rank 0 and sent to the others (no shared file system needed)
    state = distributed.on_main(ctx, lambda: load_checkpoint(run.checkpoint) if resume and run.checkpoint.is_file()
                                else None)
    if state is not None:
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            if scaler.is_enabled() and "scaler" in state:
                scaler.load_state_dict(state["scaler"])
            history, start_epoch, best_val = state["history"], state["epoch"], state["best_val"]
        except (KeyError, RuntimeError, ValueError) as e:
            raise CheckpointError(f"{run.checkpoint} is not this run's training state ({type(e).__name__}); "
                                  f"delete {run.path} to start again") from None
        partial = state.get("partial")
        where = (f"at epoch {start_epoch + 1}, step {partial['steps'] + 1}" if partial
                 else f"at epoch {start_epoch + 1}" if start_epoch < cfg.epochs else "after its last epoch")
        if ctx.is_main:
            print(f"{desc}: resuming {run.path} from its checkpoint {where}", flush=True)
    step_module: nn.Module = distributed.data_parallel(distiller, device) if ctx.enabled else distiller
    if cfg.compile:
        step_module.compile()

    x_train, y_train = data.train.x.to(device), data.train.y.to(device)
    x_test, y_test = data.test.x.to(device), data.test.y.to(device)
    val_pos = data.val_pos.to(device)
    x_val, y_val = x_train[val_pos], y_train[val_pos]
    use_overlay = distiller.spec.ig and aug.overlay_p > 0
    min_batch = 2 * ctx.world_size  # batch norm cannot train on one sample, in any process

    def checkpoint(epochs_done: int, within: dict | None = None) -> None:
        if not ctx.is_main:
            return
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epochs_done,
                 "history": history, "best_val": best_val, "partial": within}
        if scaler.is_enabled():
            state["scaler"] = scaler.state_dict()
        save_checkpoint(state, run.checkpoint)

    def stop(epoch: int, what: str, where: str) -> NumericalError:
        kept = (f"{run.checkpoint} keeps the last good state" if run.checkpoint.is_file()
                else "no checkpoint had been written yet")
        return NumericalError(f"{desc}: the loss became {what} at epoch {epoch + 1}, {where}; training stopped and "
                              f"{kept}: lower the learning rate or check the data")

    def check_pending(pending: _PendingCheck, epoch: int, step: int, bar) -> None:
        first = pending.failed(step, ctx)
        if first is not None:
            bar.close()
            every = f"every {cfg.check_finite_every} steps" if cfg.check_finite_every else "at epoch ends"
            raise stop(epoch, "non-finite", f"between steps {first} and {step} (checked {every}; "
                       "train.check_finite_every=1 stops before the bad update)")

    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        gen = torch.Generator().manual_seed(derive_seed(cfg.seed, "batches", epoch))
        overlay_gen = torch.Generator().manual_seed(derive_seed(cfg.seed, "overlay", epoch))
        # dropout and anything else global; other ranks get streams of their own
        torch.manual_seed(derive_seed(cfg.seed, "torch", epoch, *(("rank", ctx.rank) if ctx.rank else ())))
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(cfg, epoch)
        order = data.train_pos[torch.randperm(len(data.train_pos), generator=gen)]
        sizes = [min(cfg.batch_size, len(order) - i) for i in range(0, len(order), cfg.batch_size)]
        draws = draw_batches([b for b in sizes if b >= min_batch], *x_train.shape[2:], aug.crop_padding, aug.flip,
                             gen, aug.overlay_p if use_overlay else 0.0, tuple(aug.power_range),
                             overlay_gen).to(device)
        order_dev = order.to(device)
        distiller.train()
        sums: dict[str, torch.Tensor] = {}
        correct = torch.zeros((), device=device)
        seen, done, elapsed = 0, 0, 0.0
        if partial is not None:  # continue inside the epoch: its draws are made again, the RNG is restored
            rng = partial.get("rng") or [(partial["torch_rng"], None)]  # (older checkpoints: one CPU state)
            if len(rng) == ctx.world_size:  # else another number of processes: fresh streams from the seed
                _set_rng_state(rng[ctx.rank], device)
            sums = {k: v.to(device) for k, v in partial["sums"].items()}
            correct = partial["correct"].to(device)
            if not ctx.is_main:  # rank 0 carries the totals so far
                sums, correct = {k: torch.zeros_like(v) for k, v in sums.items()}, torch.zeros_like(correct)
            seen, done, elapsed = partial["seen"], partial["steps"], partial["elapsed_s"]
            partial = None
        batches = range(done * cfg.batch_size, len(order), cfg.batch_size)
        bar = progress_bar(batches, desc=f"{desc} {epoch + 1}/{cfg.epochs}", leave=False, unit="batch",
                           enabled=progress if ctx.is_main else False, initial=done, total=done + len(batches))
        pending = _PendingCheck(done)
        for step, i in enumerate(bar, start=done + 1):
            n = min(cfg.batch_size, len(order) - i)
            if n < min_batch:
                continue
            lo, hi = ctx.shard(n)
            x, y = load_batch(x_train, y_train, maps if use_overlay else None, order_dev[i + lo:i + hi],
                              draws.rows(i + lo, i + hi), data.convention, aug.mix, cfg.channels_last)
            with autocast():
                logits, losses = step_module(x, y)
            loss = sum(losses.values())
            bad = ~torch.isfinite(loss)
            if cfg.check_finite_every == 1:
                if _on_any_rank(bad, ctx):  # stop before the update: the last checkpoint stays good
                    bar.close()
                    terms = ", ".join(f"{k} {v.item():.4g}" for k, v in losses.items())
                    what = (f"{loss.item()} ({terms})" if not ctx.enabled else f"non-finite in at least one of "
                            f"{ctx.world_size} processes (rank {ctx.rank}: {loss.item()}, {terms})")
                    raise stop(epoch, what, f"step {step}")
            else:
                pending.add(bad)
            optimizer.zero_grad(set_to_none=True)
            # DDP averages over the ranks: weighting by the share of the batch makes it the global mean
            scaler.scale(loss * ((hi - lo) * ctx.world_size / n) if ctx.enabled else loss).backward()
            scaler.step(optimizer)
            scaler.update()
            for name, value in losses.items():
                sums[name] = sums.get(name, 0.0) + value.detach().float() * (hi - lo)
            correct += (logits.argmax(1) == y).sum()
            seen += n
            if cfg.check_finite_every > 1 and step % cfg.check_finite_every == 0:
                check_pending(pending, epoch, step, bar)
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and i + cfg.batch_size < len(order):
                check_pending(pending, epoch, step, bar)  # never save weights a non-finite loss has updated
                if not sync_bn:
                    distributed.average_buffers(model, ctx)
                sums, correct = _sum_over_ranks(sums, correct, ctx)
                checkpoint(epoch, {"steps": step, "rng": ctx.all_gather_object(_rng_state(device)), "sums": sums,
                                   "correct": correct, "seen": seen, "elapsed_s": elapsed + time.perf_counter() - t0})
                if not ctx.is_main:  # rank 0 carries the totals on, as a resumed run does
                    sums, correct = {k: torch.zeros_like(v) for k, v in sums.items()}, torch.zeros_like(correct)
        bar.close()
        check_pending(pending, epoch, len(sizes), bar)
        if not sync_bn:
            distributed.average_buffers(model, ctx)  # one model to evaluate and save
        sums, correct = _sum_over_ranks(sums, correct, ctx)
        with autocast():
            record = {
                "epoch": epoch + 1,
                "lr": optimizer.param_groups[0]["lr"],
                **{f"loss_{k}": (v / seen).item() for k, v in sums.items()},
                "train_acc": 100.0 * correct.item() / max(seen, 1),
                "val_acc": evaluate(model, x_val, y_val, data.convention, cfg.eval_batch_size, ctx),
                "test_acc": evaluate(model, x_test, y_test, data.convention, cfg.eval_batch_size, ctx),
                "epoch_time_s": elapsed + time.perf_counter() - t0,
            }
        record["loss"] = sum(v for k, v in record.items() if k.startswith("loss_"))
        history.append(record)
        if len(val_pos) and record["val_acc"] > best_val:
            best_val = record["val_acc"]
            if ctx.is_main:
                save_checkpoint({"model": model.state_dict()}, run.file("best.pt"))
        checkpoint(epoch + 1)
        if ctx.is_main:
            run.write_metrics(history)
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, record)
    if ctx.is_main:
        save_checkpoint({"model": model.state_dict()}, run.file("model.pt"))
    return history


def training_environment(cfg: TrainConfig, ctx: DistContext, device: torch.device) -> dict:
    """What ``env.json`` records of how a run computes: its processes and the fast-path options in effect."""
    env = {
        "data_parallel": {**ctx.to_dict(), "sync_bn": distributed.resolve_sync_bn(cfg.sync_bn, ctx, device),
                          "global_batch": cfg.batch_size},
        "fast_path": {"amp": cfg.amp, "channels_last": cfg.channels_last, "compile": cfg.compile,
                      "check_finite_every": cfg.check_finite_every, "data_on_device": True,
                      "batched_augmentation": True},
    }
    if device.type == "cuda":  # PyTorch's defaults: TF32 in convolutions, not in matrix products
        env["fast_path"].update(cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
                                matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32)
    return env


class _PendingCheck:
    """Non-finite losses not yet read back from the device (``train.check_finite_every`` != 1)."""

    def __init__(self, checked: int):
        self.flag: torch.Tensor | None = None
        self.checked = checked  # the last step known good

    def add(self, bad: torch.Tensor) -> None:
        self.flag = bad if self.flag is None else self.flag | bad

    def failed(self, step: int, ctx: DistContext) -> int | None:
        """The first step of the failed span, or None (and all is known good up to ``step``)."""
        first = self.checked + 1
        bad = self.flag is not None and _on_any_rank(self.flag, ctx)
        self.flag, self.checked = None, step
        return first if bad else None


def _on_any_rank(flag: torch.Tensor, ctx: DistContext) -> bool:
    """Whether a device flag is set in any process (a host sync, and a collective when data-parallel)."""
    if not ctx.enabled:
        return bool(flag)
    return bool(ctx.all_reduce_(flag.to(torch.int32), op="max"))


def _sum_over_ranks(sums: dict[str, torch.Tensor], correct: torch.Tensor,
                    ctx: DistContext) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Loss sums and correct counts of the whole global batch (copies; one collective)."""
    if not ctx.enabled:
        return sums, correct
    names = list(sums)
    packed = ctx.all_reduce_(torch.stack([*(sums[k].float() for k in names), correct.float()]))
    return dict(zip(names, packed[:-1])), packed[-1]


def _rng_state(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The global generators (dropout): the CPU's, and the GPU's on CUDA."""
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def _set_rng_state(state, device: torch.device) -> None:
    cpu, cuda = state
    torch.set_rng_state(cpu.cpu())
    if cuda is not None and device.type == "cuda":
        torch.cuda.set_rng_state(cuda.cpu(), device)


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


__all__ = ["AMP_MODES", "TrainingData", "evaluate", "fit", "load_batch", "make_optimizer", "summarize",
           "training_environment"]
