"""Integrated-gradients speed and exactness on this machine's CPU: igkd against Captum and float64.

The paper's CIFAR MobileNetV2 teacher, two versions: at initialisation (random weights, fresh batch
norm) and with trained-like batch-norm statistics and affine parameters. 32x32x3 images, 50 steps,
float32, the same images for every row, one process. Prints one table: for every row its speed
(images/s) and its error against a float64 IG computation (relative L2 over all images, and the
median, 90th percentile and maximum over images) on both teachers, and the rule that chooses the
default: a row's rounding error (against float64 IG of the same 50-step quadrature) must be at most
0.05x the quadrature's own error (50 against ``--quadrature-steps`` steps, both float64) on the
trained-like teacher, and at most 3x Captum's rounding error on the teacher at initialisation.

* igkd default: ``integrated_gradients`` with default settings (BN folded, channels-last);
* Captum default / best: ``IntegratedGradients(model).attribute`` on batches of ``--captum-batch``
  images with ``internal_batch_size`` None / the best of {32, ..., 512} (a sweep chooses it);
* option rows: non-default settings, each with its speed and error (channels-last, no folding,
  BN folding, other pass sizes, fewer steps, another quadrature; ``--compile`` adds torch.compile);
* floor: 50 plain forward + input-gradient passes per image of the unmodified eval model;
* precompute_ig: the whole store path with its default options.

Outside load only ever slows a row down, so the main rows are timed in interleaved rounds and the best
round is the estimate (as ``timeit`` does). The glibc allocator is tuned for every row, Captum's
included, unless ``--no-tune-allocator``: the comparison is between implementations.

    .venv/bin/python benchmarks/ig_throughput.py [--compile]     # ~15 min on 2 cores
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import os
import platform
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from igkd.attribution import (
    IGOptions,
    StoreIdentity,
    integrated_gradients,
    precompute_ig,
    prepare_for_ig,
    tune_cpu_allocator,
)
from igkd.data.catalog import CIFAR10
from igkd.data.image_dataset import ImageDataset
from igkd.models import cifar_mobilenet_v2, state_dict_hash
from igkd.models.inference import trained_like

N_STEPS = 50
REFERENCE = Path(os.environ.get("IGKD_REFERENCE", Path(__file__).resolve().parents[2] / "shared" / "reference"))
STUDENT = "CIFAR10_KD_IG_T2.5_alpha0.01_p0.1_gamma0_TestAcc92.28.pt"
BATCHES = (32, 64, 128, 256, 512)


# -- peak memory ----------------------------------------------------------------------------------


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
        "keepcost")]


def _heap_probe() -> Callable[[], int] | None:
    """Bytes the C heap has in use now (glibc ``mallinfo2``: in-use heap blocks + mmapped blocks)."""
    try:
        fn = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return None
    fn.restype = _Mallinfo2

    def probe() -> int:
        m = fn()
        return m.uordblks + m.hblkhd

    return probe


_PROBE = _heap_probe()


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def peak_heap_mb(fn: Callable[[], object]) -> float | None:
    """Peak MB of C heap in use while ``fn`` runs, polled every millisecond from a thread.

    Run apart from the timed runs: ``mallinfo2`` takes the allocator's locks and walks its free
    lists, which slows the computation it watches. (With a tuned allocator the resident set stays at
    its high-water mark, so it cannot tell rows apart; memory in use can.)
    """
    if _PROBE is None:
        return None
    peak = _PROBE()
    stop = threading.Event()

    def poll() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, _PROBE())
            stop.wait(0.001)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        fn()
    finally:
        stop.set()
        thread.join()
    return peak / 2**20


def _process_peak_mb() -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


# -- the contenders -------------------------------------------------------------------------------


def captum_ig(model, x, t, internal_batch_size, per_call):
    from captum.attr import IntegratedGradients

    ig = IntegratedGradients(model)
    outs = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for s in range(0, x.shape[0], per_call):
            outs.append(ig.attribute(x[s:s + per_call], target=t[s:s + per_call], n_steps=N_STEPS,
                                     internal_batch_size=internal_batch_size).detach())
    return torch.cat(outs)


def grad_passes(model, x, t, batch, samples):
    """``samples`` forward + input-gradient samples in passes of ``batch`` (inputs cycled)."""
    done = 0
    while done < samples:
        b = min(batch, samples - done)
        idx = torch.arange(done, done + b) % x.shape[0]
        xb = x[idx].requires_grad_(True)
        out = model(xb)
        torch.autograd.grad(out.gather(1, t[idx, None]).sum(), xb)
        done += b


def compiled_ig(model):
    """igkd's IG on a ``torch.compile``d copy of its prepared model (the stretch option)."""
    prepared = prepare_for_ig(model)
    prepared.module = torch.compile(prepared.module, dynamic=False)
    return lambda x, y, **kw: integrated_gradients(prepared, x, y, **kw)


def errors(a: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    """Relative L2 error against the float64 reference: over the batch, and per image."""
    d = (a.double() - ref).flatten(1)
    r = ref.flatten(1)
    per = (d.norm(dim=1) / r.norm(dim=1)).numpy()
    return {"total": float(d.norm() / r.norm()), "median": float(np.median(per)),
            "p90": float(np.percentile(per, 90)), "max": float(per.max())}


# -- main -----------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds of the speed rows")
    ap.add_argument("--captum-batch", type=int, default=8, help="images per Captum call (authors: 8)")
    ap.add_argument("--sweep-images", type=int, default=16, help="images for Captum's batch-size sweep")
    ap.add_argument("--floor-samples", type=int, default=512, help="samples per floor measurement")
    ap.add_argument("--compile", action="store_true", help="add a torch.compile row (slow to compile)")
    ap.add_argument("--quadrature-steps", type=int, default=200,
                    help="steps of the float64 IG that measures the 50-step quadrature's own error")
    ap.add_argument("--no-tune-allocator", action="store_true")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    tuned = False if args.no_tune_allocator else tune_cpu_allocator()
    torch.manual_seed(0)
    model = cifar_mobilenet_v2().eval()
    for p in model.parameters():  # the plain model's passes compute no parameter gradients either
        p.requires_grad_(False)
    teachers = {"at init": model, "trained-like BN": trained_like(model)}
    conv = CIFAR10.convention
    n = args.images
    g = torch.Generator().manual_seed(1)
    x_u8 = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    x = conv.from_uint8(x_u8)
    print(f"# IG speed and exactness: CIFAR MobileNetV2 teacher, {n} images 3x32x32, {N_STEPS} steps, "
          f"float32, CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"allocator {'tuned' if tuned else 'default'}", flush=True)

    # Captum's best internal_batch_size, from a sweep.
    xs, ys = x[:args.sweep_images], y[:args.sweep_images]
    captum_ig(model, xs[:args.captum_batch], ys[:args.captum_batch], BATCHES[0], args.captum_batch)
    sweep = {}
    for ibs in BATCHES:
        dt, _ = timed(lambda ibs=ibs: captum_ig(model, xs, ys, ibs, args.captum_batch))
        sweep[ibs] = xs.shape[0] / dt
    best_ibs = max(sweep, key=sweep.get)
    print("  sweep Captum internal_batch_size: " + ", ".join(f"{k}: {v:.2f}" for k, v in sweep.items())
          + " img/s", flush=True)

    # Every row: a function of (model, x, y) -> attributions; its name and whether it is timed in rounds.
    rows: list[tuple[str, Callable, str]] = [
        ("igkd default", lambda m, a, b: integrated_gradients(m, a, b),
         "fold_bn + channels_last, ibs auto (32)"),
        (f"Captum best (ibs {best_ibs})", lambda m, a, b: captum_ig(m, a, b, best_ibs, args.captum_batch),
         f"best of {list(BATCHES)}, {args.captum_batch} img/call"),
        ("Captum default (ibs None)", lambda m, a, b: captum_ig(m, a, b, None, args.captum_batch),
         f"{args.captum_batch} img/call = {args.captum_batch * N_STEPS} samples/pass"),
        ("option eager (no folding, contiguous)",
         lambda m, a, b: integrated_gradients(m, a, b, fold_bn=False, channels_last=False),
         "the caller's model itself; the previous default"),
        ("option fold_bn only", lambda m, a, b: integrated_gradients(m, a, b, channels_last=False),
         "BN folded, contiguous"),
        ("option channels_last only", lambda m, a, b: integrated_gradients(m, a, b, fold_bn=False),
         "unfolded, channels-last"),
        ("option internal_batch_size=64", lambda m, a, b: integrated_gradients(m, a, b, internal_batch_size=64),
         "larger passes"),
        ("option n_steps=25", lambda m, a, b: integrated_gradients(m, a, b, n_steps=25), "changes the integral"),
        ("option riemann_trapezoid", lambda m, a, b: integrated_gradients(m, a, b, method="riemann_trapezoid"),
         "changes the integral"),
    ]
    if args.compile:
        compiled = {name: compiled_ig(t) for name, t in teachers.items()}
        rows.append(("option torch.compile", None, "inductor, dynamic=False, on the BN-folded model"))

    def run(name, fn, teacher_name, a, b):
        if fn is None:
            return compiled[teacher_name](a, b)
        return fn(teachers[teacher_name], a, b)

    # Speed: interleaved rounds on the teacher at init, so every row sees the same outside load.
    integrated_gradients(model, x[:8], y[:8])  # warm-up of the shapes
    if args.compile:
        t0 = time.perf_counter()
        run("option torch.compile", None, "at init", x[:8], y[:8])
        run("option torch.compile", None, "at init", x, y)
        print(f"  torch.compile warm-up (compilation): {time.perf_counter() - t0:.0f} s", flush=True)
    rates: dict[str, list[float]] = {name: [] for name, _, _ in rows}
    outs: dict[str, torch.Tensor] = {}
    floor = []
    timed_rows = rows[:6] + ([rows[-1]] if args.compile else [])
    for rnd in range(args.rounds):
        for name, fn, _ in timed_rows:
            dt, outs[name] = timed(lambda name=name, fn=fn: run(name, fn, "at init", x, y))
            rates[name].append(n / dt)
        dt, _ = timed(lambda: grad_passes(model, x, y, 64, args.floor_samples))
        floor.append(args.floor_samples / dt / N_STEPS)
        print(f"  round {rnd + 1}/{args.rounds}: " + ", ".join(
            f"{k} {v[-1]:.2f}" for k, v in rates.items() if v) + f", floor {floor[-1]:.2f}", flush=True)
    for name, fn, _ in rows:
        if not rates[name]:
            dt, outs[name] = timed(lambda name=name, fn=fn: run(name, fn, "at init", x, y))
            rates[name].append(n / dt)

    # Exactness: every row against float64 IG of the same quadrature (50 steps, eager) on both teachers,
    # and that quadrature's own error: 50 against args.quadrature_steps steps, both float64.
    errs: dict[tuple[str, str], dict[str, float]] = {}
    quad: dict[str, dict[str, float]] = {}
    for tname, teacher in teachers.items():
        t0 = time.perf_counter()
        t64 = copy.deepcopy(teacher).double()
        ref = integrated_gradients(t64, x.double(), y, fold_bn=False, channels_last=False,
                                   internal_batch_size=64).double()
        fine = integrated_gradients(t64, x.double(), y, n_steps=args.quadrature_steps, fold_bn=False,
                                    channels_last=False, internal_batch_size=64).double()
        quad[tname] = errors(ref, fine)
        print(f"  float64 references ({N_STEPS} and {args.quadrature_steps} steps), {tname}: "
              f"{time.perf_counter() - t0:.0f} s; quadrature error {quad[tname]['total']:.1e}", flush=True)
        for name, fn, _ in rows:
            a = outs[name] if tname == "at init" else run(name, fn, tname, x, y)
            errs[(name, tname)] = errors(a, ref)

    # precompute_ig: the whole store path (chunks, delta, writes) at the default settings.
    with tempfile.TemporaryDirectory() as tmp:
        ds = ImageDataset("bench", x_u8, y, [str(i) for i in range(10)])
        identity = StoreIdentity.of(ds, state_dict_hash(model), conv)
        dt, _ = timed(lambda: precompute_ig(model, ds, Path(tmp) / "s", identity,
                                            IGOptions(chunk_size=16, dtype="float32"), progress=False))
        precompute_rate = n / dt

    # -- the table ------------------------------------------------------------------------------
    best = {k: max(v) for k, v in rates.items()}
    base = best["igkd default"]
    print()
    cap = f"Captum best (ibs {best_ibs})"
    cbest = best[cap]
    q_trained = quad["trained-like BN"]["total"]

    def rule(name: str) -> tuple[float, float, bool]:
        """The rule for a default: rounding error <= 0.05x the quadrature error (trained-like BN) and
        <= 3x Captum's rounding error (at init)."""
        r_quad = errs[(name, "trained-like BN")]["total"] / q_trained
        r_cap = errs[(name, "at init")]["total"] / errs[(cap, "at init")]["total"]
        return r_quad, r_cap, r_quad <= 0.05 and r_cap <= 3.0

    print("| row | img/s (best) | vs igkd | vs Captum best | err at init: total / median / p90 / max "
          "| err trained-like BN: total / median / p90 / max | err / quadrature err (trained-like) "
          "| err / Captum's err (at init) | rule | note |")
    print("|---|---:|---:|---:|---|---|---:|---:|---|---|")
    for name, _, note in rows:
        cells = []
        for tname in teachers:
            e = errs[(name, tname)]
            cells.append(" / ".join(f"{e[k]:.1e}" for k in ("total", "median", "p90", "max")))
        r_quad, r_cap, ok = rule(name)
        print(f"| {name} | {best[name]:.2f} | {best[name] / base:.2f}x | {best[name] / cbest:.2f}x | "
              f"{cells[0]} | {cells[1]} | {r_quad:.3f} | {r_cap:.2f} | {'meets' if ok else 'fails'} | {note} |")
    print(f"| floor: 50 plain forward+input-gradient passes (batch 64) | {max(floor):.2f} | "
          f"{max(floor) / base:.2f}x | {max(floor) / cbest:.2f}x | | | | | | unmodified eval model |")
    print(f"| precompute_ig (default options, chunks of 16) | {precompute_rate:.2f} | {precompute_rate / base:.2f}x "
          f"| {precompute_rate / cbest:.2f}x | | | | | | with delta and store writes |")
    print(f"img/s: best of {args.rounds} interleaved rounds for the first six rows (and torch.compile), one run "
          "for the others. err: relative L2 error ||a - f64|| / ||f64|| of the attributions against float64 IG "
          f"(50 steps, Gauss-Legendre) over all {n} images (total) and per image (median, 90th percentile, max). "
          f"Quadrature error ({N_STEPS} against {args.quadrature_steps} steps, float64, total): at init "
          f"{quad['at init']['total']:.1e}, trained-like BN {q_trained:.1e}.")

    print()
    print("the rule for the default: rounding error <= 0.05x the quadrature error (trained-like BN) and "
          "<= 3x Captum's rounding error (at init); among the rows that keep the 50-step quadrature:")
    exact = [name for name, _, _ in rows if name != cap and "n_steps" not in name and "riemann" not in name
             and not name.startswith("Captum")]
    passing = [name for name in exact if rule(name)[2]]
    fastest = max(passing, key=lambda k: best[k]) if passing else None
    print(f"  rows meeting it: {', '.join(passing) or 'none'}; fastest: {fastest}")
    print(f"  the default meets it: {'yes' if rule('igkd default')[2] else 'NO'}; "
          f"it is the fastest that does: {'yes' if fastest == 'igkd default' else 'NO'}")
    speed = base / cbest
    print(f"  speed >= 2x Captum best: {speed:.2f}x  {'met' if speed >= 2 else 'NOT met'}")
    print(f"process peak resident set: {_process_peak_mb():.0f} MB")


if __name__ == "__main__":
    main()
