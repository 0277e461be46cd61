"""igkd in your own training loop: a plain PyTorch loop, a DataLoader with workers, IG maps that move with
their images through torchvision's transforms, and the distiller's loss.

    python examples/own_loop.py --train-size 1000 --epochs 3   # about 60 % test accuracy

Fashion-MNIST (Debian's dataset-fashion-mnist), igkd's shipped teacher, the k = 11 student.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from fashion_mnist import DEFAULT_ROOT, MEAN, STD, FashionMNIST
from torch.utils.data import DataLoader
from torchvision.transforms import v2

import igkd


def main(argv: list[str] | None = None) -> float:
    """Train the student; return its test accuracy (percent)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(DEFAULT_ROOT), help="folder of the Fashion-MNIST idx files")
    p.add_argument("--train-size", type=int, default=1000)
    p.add_argument("--test-size", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--maps", default=None, help="the IG map store's folder (default: a temporary one)")
    args = p.parse_args(argv)
    torch.manual_seed(0)

    train = FashionMNIST(args.data, "train", args.train_size)
    test = FashionMNIST(args.data, "test", args.test_size)
    teacher = igkd.create_model("cifar_mobilenet_v2", 10, in_chans=1, checkpoint="igkd:fashion-mnist-teacher-w0.5",
                                width_mult=0.5, strides=[2, 1, 2, 2, 1]).eval()
    with tempfile.TemporaryDirectory() as tmp:
        # IG maps of the training images (8 steps here for speed; the paper: 50), kept in a resumable store.
        maps = igkd.compute_maps(teacher, train, args.maps or Path(tmp) / "maps", n_steps=8, normalize=(MEAN, STD))

        augment = v2.Compose([
            v2.RandomCrop(28, padding=2), v2.RandomHorizontalFlip(),  # the map is cropped and flipped too
            igkd.Overlay(p=0.1),  # the map blended into 10 % of the images, then dropped
            v2.Normalize(MEAN, STD),
        ])
        loader = DataLoader(igkd.WithMaps(train, maps, augment), batch_size=32, shuffle=True, drop_last=True,
                            num_workers=args.workers)

        student = igkd.create_student(teacher, remove_blocks=11)
        distiller = igkd.Distiller(student, teacher, method="kd_ig", alpha=0.01, temperature=2.5)
        optimizer = torch.optim.Adam(distiller.student.parameters(), lr=5e-3)  # the teacher is frozen
        for epoch in range(args.epochs):
            distiller.train()  # the teacher stays in eval mode
            for x, y in loader:
                out = distiller(x, y)  # {"loss", "logits", "ce", "kd"}
                optimizer.zero_grad()
                out["loss"].backward()
                optimizer.step()
            acc = igkd.evaluate(distiller.student, test, normalize=(MEAN, STD))["accuracy"]
            print(f"epoch {epoch + 1}: loss {out['loss'].item():.3f} (ce {out['ce'].item():.3f}, kd "
                  f"{out['kd'].item():.3f}), test accuracy {acc:.2f} %", flush=True)
    return acc


if __name__ == "__main__":
    main()
