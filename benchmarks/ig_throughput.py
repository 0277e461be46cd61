"""Integrated-gradients throughput on this machine's CPU: igkd against Captum and against the floor.

The paper's CIFAR MobileNetV2 teacher (random weights, eval mode), 32x32x3 images, 50 steps, float32,
the same images for every row, one process. Prints one table of images per second:

* igkd: ``igkd.attribution.integrated_gradients`` with default settings, all images in one call;
* Captum default: ``IntegratedGradients(model).attribute`` with ``internal_batch_size=None``, called on
  batches of ``--captum-batch`` images (8: the authors' IG loader batch), so one pass is 8 x 50 samples;
* Captum best: the same with the best ``internal_batch_size`` of {32, 64, 128, 256, 512} (chosen on a
  sweep over ``--sweep-images`` images, printed above the table);
* floor: the time of 50 plain forward + input-gradient passes per image, of the unmodified eval model
  (parameters frozen), at its best batch size of {32, 64, 128, 256, 512} (chosen on a sweep);
  "floor: IG model" does the same on igkd's prepared model (BN folded, channels-last), the floor of
  what igkd itself can reach;
* precompute_ig into a temporary store at two dataset sizes (peak memory must not grow with N);
* one row per non-default option, each with its speed and its error against igkd's 50-step float32.

The machine is shared and outside load only ever slows a row down, so the main rows are timed in
interleaved rounds and the best round is the estimate (as ``timeit`` does); the median is printed too.
The glibc allocator is tuned (``igkd.attribution.tune_cpu_allocator``) for every row, Captum's
included, unless ``--no-tune-allocator``: the comparison is between implementations. Peak memory is
the peak of C-heap memory in use during the row (glibc ``mallinfo2``, polled); the process's peak
resident set is printed at the end.

    .venv/bin/python benchmarks/ig_throughput.py            # 32 images, 5 rounds: ~10 min on 2 cores
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import os
import platform
import statistics
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from igkd.attribution import (
    attribution_map,
    integrated_gradients,
    precompute_ig,
    prepare_for_ig,
    tune_cpu_allocator,
)
from igkd.data.catalog import CIFAR10
from igkd.data.image_dataset import ImageDataset
from igkd.models import cifar_mobilenet_v2, state_dict_hash, truncated_student

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


def grad_passes(model, x, t, batch, samples, channels_last=False):
    """``samples`` forward + input-gradient samples in passes of ``batch`` (inputs cycled)."""
    done = 0
    while done < samples:
        b = min(batch, samples - done)
        idx = torch.arange(done, done + b) % x.shape[0]
        xb = x[idx]
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        xb.requires_grad_(True)
        out = model(xb)
        torch.autograd.grad(out.gather(1, t[idx, None]).sum(), xb)
        done += b


def floor_sweep(model, x, t, samples, channels_last=False) -> dict[int, float]:
    """Rate in images/s (= samples/s / 50) of forward + input-gradient passes, per batch size."""
    rates = {}
    for b in BATCHES:
        grad_passes(model, x, t, b, b, channels_last)  # warm-up of this shape
        n = max(samples, b)
        t0 = time.perf_counter()
        grad_passes(model, x, t, b, n, channels_last)
        rates[b] = n / (time.perf_counter() - t0) / N_STEPS
    return rates


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def accuracy_lines(model, x, y, per_call) -> list[str]:
    """igkd and Captum in float32 against each other and against a float64 computation."""
    cap = captum_ig(model, x, y, 64, per_call)
    fast = integrated_gradients(model, x, y)
    exact = integrated_gradients(model, x, y, fold_bn=False, channels_last=False)
    f64 = integrated_gradients(copy.deepcopy(model).double(), x.double(), y, fold_bn=False, channels_last=False)
    return [
        f"igkd default vs Captum {rel(fast, cap):.1e}; igkd exact (fold_bn=False, channels_last=False) "
        f"vs Captum {rel(exact, cap):.1e}",
        f"against float64: Captum {rel(cap, f64):.1e}, igkd default {rel(fast, f64):.1e}, "
        f"igkd exact {rel(exact, f64):.1e}",
    ]


# -- main -----------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds of the main rows")
    ap.add_argument("--captum-batch", type=int, default=8, help="images per Captum call (authors: 8)")
    ap.add_argument("--sweep-images", type=int, default=16, help="images for Captum's batch-size sweep")
    ap.add_argument("--floor-samples", type=int, default=512, help="samples per floor measurement")
    ap.add_argument("--f64-images", type=int, default=8, help="images for the float64 accuracy check")
    ap.add_argument("--no-tune-allocator", action="store_true")
    ap.add_argument("--no-options", action="store_true", help="skip the rows of non-default options")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    tuned = False if args.no_tune_allocator else tune_cpu_allocator()
    torch.manual_seed(0)
    model = cifar_mobilenet_v2().eval()
    for p in model.parameters():  # the plain model's passes compute no parameter gradients either
        p.requires_grad_(False)
    conv = CIFAR10.convention
    x_u8 = torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8)
    y = torch.randint(0, 10, (args.images,))
    x = conv.from_uint8(x_u8)
    n = args.images
    print(f"# IG throughput: CIFAR MobileNetV2 (random weights, eval), {n} images 3x32x32, {N_STEPS} "
          f"steps, float32, CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"allocator {'tuned' if tuned else 'default'}", flush=True)

    # Sweeps that choose Captum's best internal_batch_size and the floors' best batch sizes.
    xs, ys = x[:args.sweep_images], y[:args.sweep_images]
    captum_ig(model, xs[:args.captum_batch], ys[:args.captum_batch], BATCHES[0], args.captum_batch)
    sweep = {}
    for ibs in BATCHES:
        dt, _ = timed(lambda ibs=ibs: captum_ig(model, xs, ys, ibs, args.captum_batch))
        sweep[ibs] = xs.shape[0] / dt
    best_ibs = max(sweep, key=sweep.get)
    prepared = prepare_for_ig(model)
    plain_sweep = floor_sweep(model, x, y, args.floor_samples // 2)
    ig_sweep = floor_sweep(prepared.module, x, y, args.floor_samples // 2, True)
    b_plain, b_ig = max(plain_sweep, key=plain_sweep.get), max(ig_sweep, key=ig_sweep.get)
    for name, rates in (("Captum internal_batch_size", sweep), ("floor batch, plain model", plain_sweep),
                        ("floor batch, IG model", ig_sweep)):
        print(f"  sweep {name}: " + ", ".join(f"{k}: {v:.2f}" for k, v in rates.items()) + " img/s", flush=True)
    integrated_gradients(model, x[:8], y[:8])  # warm-up of the remaining shapes
    captum_ig(model, x[:args.captum_batch], y[:args.captum_batch], None, args.captum_batch)

    rows: dict[str, dict] = {}

    def record(name, seconds, images=n, note="", rate=None):
        r = rows.setdefault(name, {"rates": [], "peak": None, "note": note})
        r["rates"].append(images / seconds if rate is None else rate)

    def floor_at(module, b, cl, samples=args.floor_samples):
        grad_passes(module, x, y, b, samples, cl)

    igkd_row, cdef_row, cbest_row = "igkd (default settings)", "Captum default (ibs None)", f"Captum best (ibs {best_ibs})"
    floor_row, ig_floor_row = f"floor: plain model (batch {b_plain})", f"floor: IG model (batch {b_ig})"
    results = {}
    for rnd in range(args.rounds):  # interleaved, so every row sees the same share of outside load
        dt, results["igkd"] = timed(lambda: integrated_gradients(model, x, y, n_steps=N_STEPS))
        record(igkd_row, dt, note="ibs auto (64), BN folded, channels-last")
        dt, results["captum_best"] = timed(lambda: captum_ig(model, x, y, best_ibs, args.captum_batch))
        record(cbest_row, dt, note=f"best of {list(BATCHES)}, {args.captum_batch} img/call")
        dt, _ = timed(lambda: floor_at(model, b_plain, False))
        record(floor_row, dt, rate=args.floor_samples / dt / N_STEPS, note="unmodified eval model")
        dt, _ = timed(lambda: floor_at(prepared.module, b_ig, True))
        record(ig_floor_row, dt, rate=args.floor_samples / dt / N_STEPS, note="BN folded, channels-last")
        dt, results["captum_default"] = timed(lambda: captum_ig(model, x, y, None, args.captum_batch))
        record(cdef_row, dt, note=f"{args.captum_batch} img/call = {args.captum_batch * N_STEPS} samples/pass")
        print(f"  round {rnd + 1}/{args.rounds}: " + ", ".join(
            f"{k.split(' (')[0]} {v['rates'][-1]:.2f}" for k, v in rows.items()), flush=True)

    ref = results["igkd"]
    rows[igkd_row]["err"] = rel(ref, results["captum_default"])
    rows[cbest_row]["err"] = rel(results["captum_best"], results["captum_default"])
    rows[cdef_row]["err"] = 0.0
    # Peak memory, measured apart from the timings; memory depends on the pass size, not on N.
    xm, ym = x[:args.captum_batch], y[:args.captum_batch]
    rows[igkd_row]["peak"] = peak_heap_mb(lambda: integrated_gradients(model, xm, ym))
    rows[cbest_row]["peak"] = peak_heap_mb(lambda: captum_ig(model, xm, ym, best_ibs, args.captum_batch))
    rows[cdef_row]["peak"] = peak_heap_mb(lambda: captum_ig(model, xm, ym, None, args.captum_batch))
    rows[floor_row]["peak"] = peak_heap_mb(lambda: floor_at(model, b_plain, False, b_plain))
    rows[ig_floor_row]["peak"] = peak_heap_mb(lambda: floor_at(prepared.module, b_ig, True, b_ig))

    # precompute_ig: the whole store path (chunks, delta, writes), timed at N images; its peak memory
    # measured at N/2 and N images to show that it does not grow with N.
    teacher_hash = state_dict_hash(model)

    def precompute(m: int, tmp: str):
        ds = ImageDataset("bench", x_u8[:m], y[:m], [str(i) for i in range(10)])
        return precompute_ig(model, ds, conv, os.path.join(tmp, f"store{m}"), teacher_hash=teacher_hash,
                             dtype="float32", chunk_size=16, progress=False,
                             tune_allocator=not args.no_tune_allocator)

    with tempfile.TemporaryDirectory() as tmp:
        dt, res = timed(lambda: precompute(n, tmp))
        name = f"precompute_ig, {n} images"
        record(name, dt, note=f"chunks of 16, with delta and store writes; peak at {n // 2} images: "
               f"{peak_heap_mb(lambda: precompute(n // 2, tmp)):.0f} MB")
        rows[name]["peak"] = peak_heap_mb(lambda: precompute(n, tmp + "/again"))
        rows[name]["map_err"] = rel(res.store.get(torch.arange(n)), attribution_map(ref))

    # Non-default options: speed and error against igkd's 50-step float32.
    options = [] if args.no_options else [
        ("n_steps=25", dict(n_steps=25)),
        ("n_steps=10", dict(n_steps=10)),
        ("riemann_trapezoid", dict(method="riemann_trapezoid")),
        ("riemann_middle", dict(method="riemann_middle")),
        ("riemann_left", dict(method="riemann_left")),
        ("riemann_right", dict(method="riemann_right")),
        ("fold_bn=False", dict(fold_bn=False)),
        ("channels_last=False", dict(channels_last=False)),
        ("no fold, not channels-last", dict(fold_bn=False, channels_last=False)),
        ("internal_batch_size=128", dict(internal_batch_size=128)),
        ("internal_batch_size=32", dict(internal_batch_size=32)),
    ]
    ref_map = attribution_map(ref)
    for name, kw in options:
        dt, a = timed(lambda kw=kw: integrated_gradients(model, x, y, **kw))
        record(f"option {name}", dt)
        rows[f"option {name}"]["err"] = rel(a, ref)
        rows[f"option {name}"]["map_err"] = rel(attribution_map(a), ref_map)
        rows[f"option {name}"]["peak"] = peak_heap_mb(lambda kw=kw: integrated_gradients(model, xm, ym, **kw))
    rows["option autocast=True"] = {"rates": [], "peak": None, "note": "CUDA only; not measurable on CPU"}

    # -- the table ------------------------------------------------------------------------------
    best = {k: max(v["rates"]) if v["rates"] else None for k, v in rows.items()}
    med = {k: statistics.median(v["rates"]) if v["rates"] else None for k, v in rows.items()}
    print()
    print(f"| {'row':<34} | {'best':>6} | {'median':>6} | {'vs igkd':>7} | {'rel err':>8} | {'map err':>8} | "
          f"{'peak MB':>7} | note")
    print(f"|{'-' * 36}|{'-' * 8}|{'-' * 8}|{'-' * 9}|{'-' * 10}|{'-' * 10}|{'-' * 9}|------")
    for k, v in rows.items():
        b, m = best[k], med[k]
        err = f"{v['err']:.1e}" if "err" in v else ""
        map_err = f"{v['map_err']:.1e}" if "map_err" in v else ""
        peak = f"{v['peak']:.0f}" if v["peak"] else ""
        multi = len(v["rates"]) > 1
        print(f"| {k:<34} | {f'{b:.2f}' if b else 'n/a':>6} | {f'{m:.2f}' if multi else '':>6} | "
              f"{f'{b / best[igkd_row]:.2f}x' if b else '':>7} | {err:>8} | {map_err:>8} | {peak:>7} | {v['note']}")
    print(f"img/s; best and median of {args.rounds} interleaved rounds for the first five rows (one run for the "
          "others); 'vs igkd' from best. rel err: ||a - b|| / ||b|| of the attributions, against Captum default "
          "for igkd and Captum rows, against igkd's 50-step float32 for option rows; map err: the same on the "
          "maps (precompute rows: store against a direct call). peak MB: C heap in use (separate untimed run).")

    err = rows[igkd_row]["err"]
    print()
    print("targets (from best-of-rounds; the median-based ratio in brackets):")
    for what, key, goal in ((">= 1.5x Captum best", cbest_row, 1.5), (">= 5x Captum default", cdef_row, 5.0)):
        ratio, ratio_med = best[igkd_row] / best[key], med[igkd_row] / med[key]
        print(f"  igkd {what:<40} {ratio:6.2f}x ({ratio_med:.2f}x)  {'met' if ratio >= goal else 'NOT met'}")
    slow, slow_med = best[floor_row] / best[igkd_row], med[floor_row] / med[igkd_row]
    print(f"  igkd {'within 1.15x of the floor (plain model)':<40} {slow:6.2f}x ({slow_med:.2f}x)  "
          f"{'met' if slow <= 1.15 else 'NOT met'}  (time igkd / time floor)")
    print(f"  igkd {'rel diff vs Captum <= 1e-4':<40} {err:7.1e}          {'met' if err <= 1e-4 else 'NOT met'}")
    slow_ig = best[ig_floor_row] / best[igkd_row]
    print(f"  (info) igkd vs the floor of its own prepared model: {slow_ig:.2f}x ({med[ig_floor_row] / med[igkd_row]:.2f}x)")
    print(f"process peak resident set: {_process_peak_mb():.0f} MB")

    # float32 rounding in a deep ReLU6 net flips units near their kinks: any change of conv algorithm
    # (layout, folding) moves the attributions by about as much as float32 itself does.
    k = args.f64_images
    print()
    print(f"accuracy context, first {k} images, 50 steps (rel err ||a - b|| / ||b||):")
    for line in accuracy_lines(model, x[:k], y[:k], args.captum_batch):
        print(f"  benchmark teacher (random init): {line}")
    if (REFERENCE / STUDENT).exists():
        student = truncated_student(cifar_mobilenet_v2(), 5)
        student.load_state_dict(torch.load(REFERENCE / STUDENT, map_location="cpu"), strict=True)
        student.eval()
        for line in accuracy_lines(student, x[:k], y[:k], args.captum_batch):
            print(f"  trained k=5 reference student:   {line}")


if __name__ == "__main__":
    main()
