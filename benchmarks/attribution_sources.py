"""Precompute speed of every attribution source (``ig.attribution``) on this machine's CPU (or GPU).

Two teachers, each on a few dozen random images: the paper's CIFAR MobileNetV2 (width 1.0, CIFAR
strides, 3x32x32) and the Fashion-MNIST study's teacher shape (width 0.5, strides [2,1,2,2,1], 1x28x28).
Every row times the whole store path, ``precompute_ig`` into a fresh folder with the options
``igkd precompute-ig`` uses by default (chunks, records, sha256, finalisation included), so it is
what a user waits for per image. Each source's settings are the config's defaults (IG: 50
Gauss-Legendre steps; smoothgrad: 50 noisy copies, noise 15 % of the input range; Grad-CAM: the last
convolutional block). Random weights: speed does not depend on them. Outside load only slows a row
down, so rows are timed in interleaved rounds and the best round is the estimate (as ``timeit`` does).

    .venv/bin/python benchmarks/attribution_sources.py [--images 48] [--threads 2] [--rounds 3]
    python benchmarks/attribution_sources.py --device cuda --images 2048 --json ig.json   # benchmarks/gpu_check.sh

Run it alone on an idle machine for numbers worth quoting.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import torch

from igkd.attribution import (
    ATTRIBUTIONS,
    AttributionSource,
    IGOptions,
    StoreIdentity,
    default_gradcam_layer,
    precompute_ig,
    tune_cpu_allocator,
)
from igkd.config import IGConfig
from igkd.data.catalog import CIFAR10, FASHION_MNIST
from igkd.data.image_dataset import ImageDataset
from igkd.models import cifar_mobilenet_v2, state_dict_hash

TEACHERS = {  # name: (constructor keywords, image shape, input convention)
    "CIFAR MobileNetV2 (paper), 3x32x32": ({}, (3, 32, 32), CIFAR10.convention),
    "Fashion-MNIST study teacher (w 0.5), 1x28x28": (
        {"in_channels": 1, "width_mult": 0.5, "strides": [2, 1, 2, 2, 1]}, (1, 28, 28), FASHION_MNIST.convention),
}


def source_for(name: str, model: torch.nn.Module) -> AttributionSource:
    ig = IGConfig()
    if name == "gradcam":
        return AttributionSource.of(name, layer=ig.gradcam_layer or default_gradcam_layer(model))
    return AttributionSource.of(name, nt_samples=ig.smoothgrad_samples, noise_level=ig.smoothgrad_noise,
                                seed=ig.smoothgrad_seed)


def settings(src: AttributionSource, n_steps: int) -> str:
    if src.is_ig:
        return f"{n_steps} steps, gausslegendre"
    if src.name == "smoothgrad":
        return f"{src.nt_samples} samples, noise {src.noise_level:g}"
    if src.name == "gradcam":
        return f"layer {src.layer}"
    return "one gradient"


def time_store(model, ds, src, convention, n_steps: int, root: Path, device: str = "cpu") -> float:
    """Seconds of one ``precompute_ig`` of ``ds`` into a fresh folder, default options."""
    ident = StoreIdentity.of(ds, state_dict_hash(model), convention, n_steps=n_steps, attribution=src)
    path = root / ident.folder_name()
    shutil.rmtree(path, ignore_errors=True)
    t0 = time.perf_counter()
    res = precompute_ig(model, ds, path, ident, IGOptions(device=device), progress=False)
    dt = time.perf_counter() - t0
    assert res.complete
    shutil.rmtree(path, ignore_errors=True)
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=48, help="random images per teacher")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (best is reported)")
    ap.add_argument("--n-steps", type=int, default=IGConfig().n_steps, help="IG steps")
    ap.add_argument("--sources", default=",".join(ATTRIBUTIONS), help="comma-separated ig.attribution values")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (the IG store's device)")
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    ap.add_argument("--store-images", type=int, default=50_000,
                    help="images of the store whose wall time is estimated (the paper's CIFAR-10 training set)")
    args = ap.parse_args()
    sources = [s.strip() for s in args.sources.split(",") if s.strip()]
    unknown = [s for s in sources if s not in ATTRIBUTIONS]
    if unknown:
        ap.error(f"unknown sources {unknown}; choose from {', '.join(ATTRIBUTIONS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cpu":
        tune_cpu_allocator()  # as precompute_ig does on CPU
    warnings.filterwarnings("ignore", module="captum")
    print(f"# Attribution sources, precompute speed (images/s, best of {args.rounds} interleaved rounds): "
          f"{args.images} random images per teacher, random weights, float16 store, default options, "
          f"{where(args.device)}, {os.cpu_count()} cores, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}", flush=True)
    print(f"\n| teacher | source | settings | images/s | vs IG | est. store of {args.store_images:,} images |"
          "\n|---|---|---|---:|---:|---:|")
    rows = []
    with tempfile.TemporaryDirectory(prefix="igkd-sources-") as tmp:
        for teacher, (kwargs, shape, convention) in TEACHERS.items():
            torch.manual_seed(0)
            model = cifar_mobilenet_v2(num_classes=10, **kwargs).eval()
            g = torch.Generator().manual_seed(1)
            ds = ImageDataset("random", torch.randint(0, 256, (args.images, *shape), dtype=torch.uint8, generator=g),
                              torch.randint(0, 10, (args.images,), generator=g), [str(c) for c in range(10)])
            srcs = {name: source_for(name, model) for name in sources}
            warm = ImageDataset("warm-up", ds.x[:2], ds.y[:2], ds.classes)
            for name in sources:  # imports (Captum), first-call allocations and kernel choices
                time_store(model, warm, srcs[name], convention, args.n_steps, Path(tmp), args.device)
            best = {name: float("inf") for name in sources}
            for _ in range(args.rounds):
                for name in sources:
                    best[name] = min(best[name], time_store(model, ds, srcs[name], convention, args.n_steps,
                                                            Path(tmp), args.device))
            ig = best.get("integrated_gradients")
            for name in sources:
                speed = args.images / best[name]
                ratio = f"{ig / best[name]:.1f}x" if ig else ""
                store_min = args.store_images / speed / 60
                print(f"| {teacher} | {name} | {settings(srcs[name], args.n_steps)} | {speed:.1f} | {ratio} | "
                      f"{store_min:.1f} min |", flush=True)
                rows.append({"teacher": teacher, "source": name, "settings": settings(srcs[name], args.n_steps),
                             "images_per_s": speed, "store_minutes": store_min, "store_images": args.store_images})
    if args.json:
        Path(args.json).write_text(json.dumps({"device": where(args.device), "torch": torch.__version__,
                                               "images": args.images, "rows": rows}, indent=1) + "\n")


def where(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()}"


if __name__ == "__main__":
    main()
