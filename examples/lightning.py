"""igkd with Lightning: a LightningModule around igkd.Distiller; Lightning runs the loop.

    pip install 'igkd[lightning]'   # pytorch-lightning
    python examples/lightning.py --train-size 1000 --epochs 4   # about 50 % test accuracy

Fashion-MNIST (Debian's dataset-fashion-mnist), igkd's shipped teacher, the k = 11 student. Only the
student is trained (and would be wrapped by DDP under a multi-device strategy); the teacher is frozen.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import pytorch_lightning as L  # (the "lightning" package works the same; this name cannot clash with this file)
import torch
from fashion_mnist import DEFAULT_ROOT, MEAN, STD, FashionMNIST
from torch.utils.data import DataLoader
from torchvision.transforms import v2

import igkd


class DistillModule(L.LightningModule):
    """The distiller's loss as Lightning's training step; the student's accuracy as its validation."""

    def __init__(self, distiller: igkd.Distiller, lr: float = 5e-3):
        super().__init__()
        self.distiller, self.lr = distiller, lr

    def training_step(self, batch, _index):
        x, y = batch
        out = self.distiller(x, y)  # {"loss", "logits", "ce", "kd"}
        self.log_dict({k: v for k, v in out.items() if k != "logits"}, prog_bar=True)
        return out["loss"]

    def validation_step(self, batch, _index):
        x, y = batch
        self.log("val_acc", (self.distiller(x).argmax(1) == y).float().mean() * 100)

    def configure_optimizers(self):
        return torch.optim.Adam(self.distiller.student.parameters(), lr=self.lr)  # the teacher is frozen


def main(argv: list[str] | None = None) -> float:
    """Train the student; return its test accuracy (percent)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(DEFAULT_ROOT), help="folder of the Fashion-MNIST idx files")
    p.add_argument("--train-size", type=int, default=1000)
    p.add_argument("--test-size", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args(argv)
    L.seed_everything(0, verbose=False)

    train = FashionMNIST(args.data, "train", args.train_size)
    test = FashionMNIST(args.data, "test", args.test_size)
    teacher = igkd.create_model("cifar_mobilenet_v2", 10, in_chans=1, checkpoint="igkd:fashion-mnist-teacher-w0.5",
                                width_mult=0.5, strides=[2, 1, 2, 2, 1]).eval()
    with tempfile.TemporaryDirectory() as tmp:
        maps = igkd.compute_maps(teacher, train, Path(tmp) / "maps", n_steps=8, normalize=(MEAN, STD))
        augment = v2.Compose([v2.RandomCrop(28, padding=2), v2.RandomHorizontalFlip(), igkd.Overlay(p=0.1),
                              v2.Normalize(MEAN, STD)])
        train_loader = DataLoader(igkd.WithMaps(train, maps, augment), batch_size=32, shuffle=True, drop_last=True,
                                  num_workers=args.workers)
        plain = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])
        val_loader = DataLoader([(plain(x), y) for x, y in test], batch_size=250)

        distiller = igkd.Distiller(igkd.create_student(teacher, remove_blocks=11), teacher, method="kd_ig")
        trainer = L.Trainer(max_epochs=args.epochs, accelerator="cpu", devices=1, logger=False,
                            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                            default_root_dir=tmp)
        trainer.fit(DistillModule(distiller), train_loader, val_loader)
    acc = igkd.evaluate(distiller.student, test, normalize=(MEAN, STD))["accuracy"]
    print(f"after {args.epochs} epochs: validation accuracy {trainer.callback_metrics['val_acc']:.2f} %, test "
          f"accuracy {acc:.2f} %", flush=True)
    return acc


if __name__ == "__main__":
    main()
