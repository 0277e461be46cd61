"""The training loop, shared by teacher training and every distillation method (nanoGPT's shape)."""

from __future__ import annotations

import copy
import functools
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .. import distributed
from ..config import AugmentConfig, TrainConfig
from ..convention import InputConvention
from ..data.augment import AugmentDraws, apply_draws, draw_batches, plan_padding
from ..data.image_dataset import ImageDataset
from ..data.sources import Batch, BatchSource, InMemorySource, StreamedSource, eval_batches
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
def evaluate(model: torch.nn.Module, x, y: torch.Tensor, convention: InputConvention,
             batch_size: int = 1000, ctx: DistContext | None = None) -> float:
    """Top-1 accuracy in percent on uint8 images: a tensor (on the model's device, or moved there a batch at
    a time), or images on disk (:class:`~igkd.fileio.NpyRows`), read ahead a batch at a time.

    With a data-parallel ``ctx`` each rank evaluates (and reads) its contiguous part and the counts are summed.
    """
    if len(y) == 0:
        return float("nan")
    ctx = ctx or DistContext()
    lo, hi = ctx.shard(len(y))
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = torch.zeros((), dtype=torch.int64, device=device)
    for xb, yb in eval_batches(x, y, lo, hi, batch_size, device):
        correct += (model(convention.from_uint8(xb)).argmax(1) == yb).sum()
    model.train(was_training)
    return 100.0 * ctx.all_reduce_(correct).item() / len(y)


def load_batch(x_train: torch.Tensor, y_train: torch.Tensor, maps: torch.Tensor | None, pos: torch.Tensor,
               draws: AugmentDraws, convention: InputConvention, mix: float = 0.5,
               channels_last: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The data path of a step, all on the data's device: gather the images (and maps) at training-set
    positions ``pos``, crop, flip and overlay them with ``draws``, normalise. Returns network input and labels."""
    return batch_input(Batch(x_train[pos], y_train[pos], None if maps is None else maps[pos]), draws, convention,
                       mix, channels_last)


def batch_input(batch: Batch, draws: AugmentDraws, convention: InputConvention, mix: float = 0.5,
                channels_last: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """A step's network input and labels from its data on the device: crop, flip and overlay with ``draws``,
    normalise. The same arithmetic whatever source the batch came from."""
    x = convention.normalize(apply_draws(batch.x.float().div_(255.0), batch.maps, draws, mix))
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x, batch.y


def batch_source(data: TrainingData, maps, device: torch.device, streaming: bool | None = None,
                 workers: int = 0) -> BatchSource:
    """The source of ``data``'s training batches: streamed when asked (``streaming``), or, left to the data
    (None), when its images or maps live on disk; else everything moved to ``device`` once."""
    if streaming is None:
        streaming = data.train.on_disk or (maps is not None and not isinstance(maps, torch.Tensor))
    if streaming:
        return StreamedSource(data.train.x, data.train.y, maps, device, workers)
    return InMemorySource(data.train.x if isinstance(data.train.x, torch.Tensor) else data.train.x[:], data.train.y,
                          maps if maps is None or isinstance(maps, torch.Tensor) else maps[:], device)


def loss_terms(out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The named loss terms of a :class:`Distiller`'s output (everything but ``loss`` and ``logits``)."""
    return {k: v for k, v in out.items() if k not in ("loss", "logits")}


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
    source: BatchSource | None = None,
    loader_workers: int = 0,
) -> list[dict]:
    """Train ``distiller.student`` for ``cfg.epochs``; return the per-epoch history.

    ``maps`` (N, H, W), indexed by training-set position, is needed when the method uses the IG overlay.
    Every random draw of epoch e comes from generators seeded by (seed, e), and the checkpoint after
    each epoch holds everything else, so a resumed run ends exactly where an uninterrupted one does.
    The batches come from ``source`` (by default :func:`batch_source`: the whole data set on ``device``
    as uint8 when it is in memory, else read from disk a batch at a time, ahead of the loop, by a thread or
    ``loader_workers`` DataLoader processes); an epoch's
    order and augmentation draws are made on the host once, at its start, whatever the source, so both
    give the same run bit for bit, and a step reads nothing back from the device (except the loss check,
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
    sync_bn = _place(distiller, cfg, ctx, device)
    model = distiller.student
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], cfg)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
    autocast = functools.partial(torch.autocast, device.type, dtype=_AMP_DTYPES.get(cfg.amp),
                                 enabled=cfg.amp != "none")
    saver = Checkpointer(run, model, optimizer, scaler, ctx, cfg.checkpoint_every)
    history, start_epoch, best_val, partial = saver.restore(resume, desc, cfg.epochs)
    step_module: nn.Module = distributed.data_parallel(distiller, device) if ctx.enabled else distiller
    if cfg.compile:
        step_module.compile()
    maps = maps if distiller.spec.ig and aug.overlay_p > 0 else None
    source = source or batch_source(data, maps, device, workers=loader_workers)
    on_device = _EvalData.of(data, device, source)
    guard = FiniteGuard(cfg.check_finite_every, ctx, run.checkpoint, desc)

    for epoch in range(start_epoch, cfg.epochs):
        plan = EpochPlan.draw(cfg, aug, epoch, data.train_pos, data.train.image_shape[1:], maps is not None, ctx,
                              device)
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(cfg, epoch)
        distiller.train()
        tally = plan.begin(partial, ctx, device)  # fresh, or where a checkpoint inside this epoch stopped
        partial = None
        guard.begin(epoch, tally.steps)
        batches = plan.batches(after=tally.steps)
        # this rank's part of each batch, read ahead (a streamed source stops reading when the epoch ends)
        with closing(source.batches(plan.order, [plan.part(i, ctx) for i in batches])) as feed, \
                progress_bar(batches, desc=f"{desc} {epoch + 1}/{cfg.epochs}", leave=False, unit="batch",
                             enabled=progress if ctx.is_main else False, initial=tally.steps,
                             total=tally.steps + len(batches)) as bar:
            for step, i in enumerate(bar, start=tally.steps + 1):
                batch = next(feed)
                if batch is None:  # too small to train on
                    continue
                n = plan.size_at(i)
                lo, hi = ctx.shard(n)  # this rank's part of the global batch
                x, y = batch_input(batch, plan.draws.rows(i + lo, i + hi), data.convention, aug.mix,
                                   cfg.channels_last)
                with autocast():
                    out = step_module(x, y)  # {"loss", "logits", each loss term}
                loss, logits, losses = out["loss"], out["logits"], loss_terms(out)
                guard.check(loss, losses, step)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(_share_of_global_mean(loss, hi - lo, n, ctx)).backward()
                scaler.step(optimizer)
                scaler.update()
                tally.add(losses, logits, y, hi - lo, n)
                guard.every_n_steps(step)
                if saver.due(step) and not plan.is_last(i):
                    guard.settle(step)  # never save weights a non-finite loss has updated
                    _gather(model, tally, sync_bn, ctx)
                    saver.save(epoch, history, best_val, within=tally.partial(step, ctx, device))
                    tally.carry_on(ctx)
        guard.settle(plan.steps)
        _gather(model, tally, sync_bn, ctx)  # one model to evaluate and save
        with autocast():
            record = tally.record(epoch, optimizer.param_groups[0]["lr"],
                                  *on_device.accuracies(model, data.convention, cfg.eval_batch_size, ctx,
                                                        test=cfg.test_eval == "every_epoch" or epoch == cfg.epochs - 1))
        history.append(record)
        if len(on_device.y_val) and record["val_acc"] > best_val:
            best_val = record["val_acc"]
            saver.save_weights("best.pt")
        saver.save(epoch + 1, history, best_val)
        if ctx.is_main:
            run.write_metrics(history)
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, record)
    if cfg.test_eval == "end":
        with autocast():
            _test_best_epoch(history, model, saver, on_device, data.convention, cfg.eval_batch_size, ctx)
    saver.save_weights("model.pt")
    return history


def _test_best_epoch(history: list[dict], model: nn.Module, saver: Checkpointer, on_device: _EvalData,
                     convention: InputConvention, batch_size: int, ctx: DistContext) -> None:
    """``train.test_eval=end``: the best-validation epoch's test accuracy, from its weights (``best.pt``),
    written into its line of the history (and ``metrics.jsonl``), as an every-epoch run records it."""
    best = best_epoch(history)
    if best is None or best["test_acc"] == best["test_acc"]:  # no validation split, or already tested
        return
    state = distributed.on_main(ctx, lambda: load_checkpoint(saver.run.file("best.pt")))
    best_model = copy.deepcopy(model)
    best_model.load_state_dict(state["model"])
    best["test_acc"] = evaluate(best_model, on_device.x_test, on_device.y_test, convention, batch_size, ctx)
    if ctx.is_main:
        saver.run.write_metrics(history)


def _place(distiller: Distiller, cfg: TrainConfig, ctx: DistContext, device: torch.device) -> bool:
    """Check the global batch, move the models to ``device`` in the configured memory format and, when
    batch norm is synchronised over the ranks, convert the student's; return whether it is."""
    if cfg.batch_size < 2 * ctx.world_size:
        raise ConfigError(f"bad value for train.batch_size: {cfg.batch_size} (allowed: >= {2 * ctx.world_size}: "
                          f"the global batch, at least 2 images for each of {ctx.world_size} processes)")
    sync_bn = distributed.resolve_sync_bn(cfg.sync_bn, ctx, device)
    distiller.to(device)
    if sync_bn:
        distiller.student = nn.SyncBatchNorm.convert_sync_batchnorm(distiller.student)
    if cfg.channels_last:
        distiller.to(memory_format=torch.channels_last)
    return sync_bn


def _share_of_global_mean(loss: torch.Tensor, part: int, n: int, ctx: DistContext) -> torch.Tensor:
    """DDP averages gradients over the ranks: weighting each rank's loss by its share ``part`` of the
    global batch of ``n`` makes the update the global batch's mean."""
    return loss * (part * ctx.world_size / n) if ctx.enabled else loss


def _gather(model: nn.Module, tally: EpochTally, sync_bn: bool, ctx: DistContext) -> None:
    """Bring the ranks together before a checkpoint or an evaluation: batch-norm statistics averaged
    (unless synchronised all along), the epoch's sums summed."""
    if not sync_bn:
        distributed.average_buffers(model, ctx)
    tally.reduce(ctx)


def training_environment(cfg: TrainConfig, ctx: DistContext, device: torch.device, streaming: bool = False) -> dict:
    """What ``env.json`` records of how a run computes: its processes and the fast-path options in effect."""
    env = {
        "data_parallel": {**ctx.to_dict(), "sync_bn": distributed.resolve_sync_bn(cfg.sync_bn, ctx, device),
                          "global_batch": cfg.batch_size},
        "fast_path": {"amp": cfg.amp, "channels_last": cfg.channels_last, "compile": cfg.compile,
                      "check_finite_every": cfg.check_finite_every, "data_on_device": not streaming,
                      "batched_augmentation": True},
    }
    if device.type == "cuda":  # PyTorch's defaults: TF32 in convolutions, not in matrix products
        env["fast_path"].update(cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
                                matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32)
    return env


@dataclass
class _EvalData:
    """The validation and test sets: moved to the device once with an in-memory source, else read from
    where they live (the validation images through the training set's, by position) a batch at a time."""

    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    @classmethod
    def of(cls, data: TrainingData, device: torch.device, source: BatchSource) -> _EvalData:
        if isinstance(source, InMemorySource):
            val_pos = data.val_pos.to(device)
            return cls(source.x[val_pos], source.y[val_pos], data.test.x.to(device), data.test.y.to(device))
        val = data.train.subset(data.val_pos)
        return cls(val.x, val.y, data.test.x, data.test.y)

    def accuracies(self, model: nn.Module, convention: InputConvention, batch_size: int,
                   ctx: DistContext, test: bool = True) -> tuple[float, float]:
        """Validation and test accuracy (percent); the test's NaN when ``test`` is false."""
        return (evaluate(model, self.x_val, self.y_val, convention, batch_size, ctx),
                evaluate(model, self.x_test, self.y_test, convention, batch_size, ctx) if test else float("nan"))


@dataclass
class EpochPlan:
    """What an epoch draws at its start, from generators seeded by (seed, epoch): the order of the
    training set and every batch's augmentation, the same on every rank for the whole global batch."""

    order: torch.Tensor  # training-set positions, on the host (a source moves what it needs)
    draws: AugmentDraws  # one row per image of each batch that trains
    batch_size: int  # the global batch
    min_batch: int  # smaller batches (the last) are skipped: batch norm needs 2 images in each process
    started: float  # perf_counter at the epoch's start

    @classmethod
    def draw(cls, cfg: TrainConfig, aug: AugmentConfig, epoch: int, train_pos: torch.Tensor,
             image_hw: tuple[int, int], overlay: bool, ctx: DistContext, device: torch.device) -> EpochPlan:
        """The plan of ``epoch``; also seeds the global generators (dropout) for it, per rank."""
        started = time.perf_counter()
        gen = torch.Generator().manual_seed(derive_seed(cfg.seed, "batches", epoch))
        overlay_gen = torch.Generator().manual_seed(derive_seed(cfg.seed, "overlay", epoch))
        # dropout and anything else global; other ranks get streams of their own
        torch.manual_seed(derive_seed(cfg.seed, "torch", epoch, *(("rank", ctx.rank) if ctx.rank else ())))
        order = train_pos[torch.randperm(len(train_pos), generator=gen)]
        min_batch = 2 * ctx.world_size
        sizes = [min(cfg.batch_size, len(order) - i) for i in range(0, len(order), cfg.batch_size)]
        padding = plan_padding(aug.crop_padding, aug.crop_padding_for, tuple(image_hw))
        draws = draw_batches([b for b in sizes if b >= min_batch], *image_hw, padding, aug.flip, gen,
                             aug.overlay_p if overlay else 0.0, tuple(aug.power_range), overlay_gen).to(device)
        return cls(order, draws, cfg.batch_size, min_batch, started)

    @property
    def steps(self) -> int:
        return -(-len(self.order) // self.batch_size)

    def batches(self, after: int) -> range:
        """The start positions of the batches after the first ``after`` steps."""
        return range(after * self.batch_size, len(self.order), self.batch_size)

    def part(self, i: int, ctx: DistContext) -> tuple[int, int] | None:
        """This rank's slice of the order in the global batch starting at ``i``; None when it is too small
        to train on (the last)."""
        n = self.size_at(i)
        if n < self.min_batch:
            return None
        lo, hi = ctx.shard(n)
        return i + lo, i + hi

    def size_at(self, i: int) -> int:
        return min(self.batch_size, len(self.order) - i)

    def is_last(self, i: int) -> bool:
        return i + self.batch_size >= len(self.order)

    def begin(self, partial: dict | None, ctx: DistContext, device: torch.device) -> EpochTally:
        """The epoch's tally: empty, or, from a checkpoint taken inside the epoch, its sums so far, with
        the global generators restored (its draws have just been made again)."""
        if partial is None:
            return EpochTally({}, torch.zeros((), device=device), 0, 0, 0.0, self.started)
        rng = partial.get("rng") or [(partial["torch_rng"], None)]  # (older checkpoints: one CPU state)
        if len(rng) == ctx.world_size:  # else another number of processes: fresh streams from the seed
            _set_rng_state(rng[ctx.rank], device)
        tally = EpochTally({k: v.to(device) for k, v in partial["sums"].items()}, partial["correct"].to(device),
                           partial["seen"], partial["steps"], partial["elapsed_s"], self.started)
        tally.carry_on(ctx)
        return tally


@dataclass
class EpochTally:
    """An epoch's running sums: loss terms weighted by images, correct predictions, images seen; after a
    reduction over the ranks rank 0 carries the totals, as a resumed run does."""

    sums: dict[str, torch.Tensor]
    correct: torch.Tensor
    seen: int
    steps: int  # steps done when this process took the epoch up
    elapsed: float  # seconds spent on the epoch before that
    started: float

    def add(self, losses: dict[str, torch.Tensor], logits: torch.Tensor, y: torch.Tensor, part: int,
            n: int) -> None:
        for name, value in losses.items():
            self.sums[name] = self.sums.get(name, 0.0) + value.detach().float() * part
        self.correct += (logits.argmax(1) == y).sum()
        self.seen += n

    def reduce(self, ctx: DistContext) -> None:
        self.sums, self.correct = _sum_over_ranks(self.sums, self.correct, ctx)

    def carry_on(self, ctx: DistContext) -> None:
        if not ctx.is_main:
            self.sums = {k: torch.zeros_like(v) for k, v in self.sums.items()}
            self.correct = torch.zeros_like(self.correct)

    def time_s(self) -> float:
        return self.elapsed + time.perf_counter() - self.started

    def partial(self, step: int, ctx: DistContext, device: torch.device) -> dict:
        """What a checkpoint after ``step`` keeps of the epoch (every rank's generators: a collective)."""
        return {"steps": step, "rng": ctx.all_gather_object(_rng_state(device)), "sums": self.sums,
                "correct": self.correct, "seen": self.seen, "elapsed_s": self.time_s()}

    def record(self, epoch: int, lr: float, val_acc: float, test_acc: float) -> dict:
        """The epoch's line of ``metrics.jsonl``."""
        record = {
            "epoch": epoch + 1,
            "lr": lr,
            **{f"loss_{k}": (v / self.seen).item() for k, v in self.sums.items()},
            "train_acc": 100.0 * self.correct.item() / max(self.seen, 1),
            "val_acc": val_acc,
            "test_acc": test_acc,
            "epoch_time_s": self.time_s(),
        }
        record["loss"] = sum(v for k, v in record.items() if k.startswith("loss_"))
        return record


class FiniteGuard:
    """Stops training at a non-finite loss with the epoch and step, keeping the last good checkpoint.

    ``every`` = 1 checks each step before its update (a host sync per step); N > 1 collects the flags
    on the device and reads them every N steps, 0 at the epoch's end, and always before a checkpoint.
    """

    def __init__(self, every: int, ctx: DistContext, checkpoint: Path, desc: str):
        self.every, self.ctx, self.checkpoint, self.desc = every, ctx, checkpoint, desc
        self.epoch, self.flag, self.checked = 0, None, 0

    def begin(self, epoch: int, done: int) -> None:
        self.epoch, self.flag, self.checked = epoch, None, done  # the last step known good

    def check(self, loss: torch.Tensor, losses: dict[str, torch.Tensor], step: int) -> None:
        bad = ~torch.isfinite(loss)
        if self.every != 1:
            self.flag = bad if self.flag is None else self.flag | bad
        elif _on_any_rank(bad, self.ctx):  # stop before the update: the last checkpoint stays good
            terms = ", ".join(f"{k} {v.item():.4g}" for k, v in losses.items())
            what = (f"{loss.item()} ({terms})" if not self.ctx.enabled else f"non-finite in at least one of "
                    f"{self.ctx.world_size} processes (rank {self.ctx.rank}: {loss.item()}, {terms})")
            raise self._stop(what, f"step {step}")

    def every_n_steps(self, step: int) -> None:
        if self.every > 1 and step % self.every == 0:
            self.settle(step)

    def settle(self, step: int) -> None:
        """Read the flags collected since the last check; all is known good up to ``step`` or it stops."""
        first = self.checked + 1
        bad = self.flag is not None and _on_any_rank(self.flag, self.ctx)
        self.flag, self.checked = None, step
        if bad:
            every = f"every {self.every} steps" if self.every else "at epoch ends"
            raise self._stop("non-finite", f"between steps {first} and {step} (checked {every}; "
                             "train.check_finite_every=1 stops before the bad update)")

    def _stop(self, what: str, where: str) -> NumericalError:
        kept = (f"{self.checkpoint} keeps the last good state" if self.checkpoint.is_file()
                else "no checkpoint had been written yet")
        return NumericalError(f"{self.desc}: the loss became {what} at epoch {self.epoch + 1}, {where}; training "
                              f"stopped and {kept}: lower the learning rate or check the data")


class Checkpointer:
    """A run's training state in ``last.pt`` and its weights in ``best.pt`` and ``model.pt``.

    Rank 0 alone writes. On resume rank 0 reads the checkpoint (checksum checked, never runs code) and
    sends it to the other ranks, so no shared file system is needed.
    """

    def __init__(self, run: RunDir, model: nn.Module, optimizer: torch.optim.Optimizer,
                 scaler: torch.amp.GradScaler, ctx: DistContext, every: int):
        self.run, self.model, self.optimizer, self.scaler, self.ctx = run, model, optimizer, scaler, ctx
        self.every = every  # also inside epochs, every so many steps (0: never)

    def restore(self, resume: bool, desc: str, epochs: int) -> tuple[list[dict], int, float, dict | None]:
        """Load the state to resume from, if any: (history, epochs done, best validation accuracy, where
        inside the next epoch the checkpoint was taken, or None)."""
        run = self.run
        state = distributed.on_main(self.ctx, lambda: load_checkpoint(run.checkpoint)
                                    if resume and run.checkpoint.is_file() else None)
        if state is None:
            return [], 0, float("-inf"), None
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            if self.scaler.is_enabled() and "scaler" in state:
                self.scaler.load_state_dict(state["scaler"])
            history, start_epoch, best_val = state["history"], state["epoch"], state["best_val"]
        except (KeyError, RuntimeError, ValueError) as e:
            raise CheckpointError(f"{run.checkpoint} is not this run's training state ({type(e).__name__}); "
                                  f"delete {run.path} to start again") from None
        partial = state.get("partial")
        where = (f"at epoch {start_epoch + 1}, step {partial['steps'] + 1}" if partial
                 else f"at epoch {start_epoch + 1}" if start_epoch < epochs else "after its last epoch")
        if self.ctx.is_main:
            print(f"{desc}: resuming {run.path} from its checkpoint {where}", flush=True)
        return history, start_epoch, best_val, partial

    def due(self, step: int) -> bool:
        """Whether to checkpoint inside the epoch after ``step`` (unless it was the epoch's last)."""
        return bool(self.every) and step % self.every == 0

    def save(self, epochs_done: int, history: list[dict], best_val: float, within: dict | None = None) -> None:
        if not self.ctx.is_main:
            return
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "epoch": epochs_done,
                 "history": history, "best_val": best_val, "partial": within}
        if self.scaler.is_enabled():
            state["scaler"] = self.scaler.state_dict()
        save_checkpoint(state, self.run.checkpoint)

    def save_weights(self, name: str) -> None:
        if self.ctx.is_main:
            save_checkpoint({"model": self.model.state_dict()}, self.run.file(name))


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


def best_epoch(history: list[dict]) -> dict | None:
    """The history's line of the best validation accuracy (first of ties: ``best.pt`` is saved on a strict
    improvement); None without a validation split (its accuracies are NaN)."""
    with_val = [h for h in history if h["val_acc"] == h["val_acc"]]
    return max(with_val, key=lambda h: h["val_acc"]) if with_val else None


def summarize(history: list[dict]) -> dict:
    """Test accuracy after the last epoch and at the best-on-validation epoch (first of ties)."""
    last = history[-1]
    out = {"epochs": last["epoch"], "test_acc_last": last["test_acc"], "val_acc_last": last["val_acc"]}
    best = best_epoch(history)
    if best is not None:
        out.update(best_epoch=best["epoch"], val_acc_best=best["val_acc"], test_acc_at_best_val=best["test_acc"])
    out["train_time_s"] = sum(h["epoch_time_s"] for h in history)
    return out


__all__ = ["AMP_MODES", "TrainingData", "batch_input", "batch_source", "best_epoch", "evaluate", "fit", "load_batch",
           "loss_terms", "make_optimizer", "summarize", "training_environment"]
