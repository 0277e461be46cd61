#!/usr/bin/env bash
# The GPU check: one script, at most 8 minutes on one H100 or H200, no network needed. It writes one JSON
# (default: $OUT/gpu_check.json where $OUT is set, else runs/gpu_check/gpu_check.json) with
#   - the CUDA-only tests (pytest -m cuda): passed / failed / skipped and the log's tail;
#   - training throughput of student and kd_ig on the paper's models (teacher MobileNetV2, k = 5 student,
#     batch 64) in eager float32, bf16, channels-last, and bf16 + channels-last + torch.compile;
#   - IG (and one-pass saliency) precompute throughput on CUDA;
#   - the estimated wall time of the paper's 100-epoch run and of its IG store (50,000 images).
#
#   bash benchmarks/gpu_check.sh [OUT.json]
#
# It runs igkd from this checkout's src/ with the machine's python3 (PYTHON=...), which must hold PyTorch
# with CUDA. Packages the machine lacks (captum, optuna, ...) travel as wheels in .whl/, made here with
#   bash benchmarks/gpu_wheels.sh
# and are installed into /tmp first. Each part has its own time limit, so one that fails or hangs still
# leaves the others' results in the JSON.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_JSON=${1:-${OUT:-runs/gpu_check}/gpu_check.json}
DIR=$(dirname "$OUT_JSON")
mkdir -p "$DIR"
PY=${PYTHON:-python3}
T0=$(date +%s)

if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/igkd-site \
        .whl/*.whl || echo "gpu_check: wheel install failed" >&2
    export PYTHONPATH=/tmp/igkd-site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$DIR/gpu.txt" 2>&1

# 1. The CUDA-only tests (only the files that hold them, so a package missing here cannot stop collection).
mapfile -t CUDA_TESTS < <(grep -l "mark.cuda" tests/*.py)
timeout 130 "$PY" -m pytest -q -p no:cacheprovider -m cuda "${CUDA_TESTS[@]}" --junitxml "$DIR/cuda_tests.xml" \
    > "$DIR/cuda_tests.log" 2>&1
echo "tests rc=$? after $(( $(date +%s) - T0 )) s"

# 2. Training-step throughput on the paper's models (50,000 synthetic CIFAR-sized images on the GPU).
timeout 210 "$PY" benchmarks/train_throughput.py --device cuda --methods student,kd_ig --teachers auto \
    --modes eager,bf16,channels_last,bf16+channels_last+compile --json "$DIR/train.json" > "$DIR/train.log" 2>&1
echo "train rc=$? after $(( $(date +%s) - T0 )) s"

# 3. IG and one-pass saliency precompute on CUDA (whole store path, default options).
timeout 100 "$PY" benchmarks/attribution_sources.py --device cuda --images 2048 --rounds 2 \
    --sources integrated_gradients,saliency,gradcam --json "$DIR/ig.json" > "$DIR/ig.log" 2>&1
echo "ig rc=$? after $(( $(date +%s) - T0 )) s"

# 4. One JSON, with the estimates of the paper's recipe.
"$PY" - "$DIR" "$OUT_JSON" "$(( $(date +%s) - T0 ))" <<'EOF'
import json, sys, xml.etree.ElementTree as ET
from pathlib import Path

d, out, wall = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
def load(name):
    try:
        return json.loads((d / name).read_text())
    except (OSError, ValueError):
        return None
def tail(name, n=40):
    try:
        return (d / name).read_text().splitlines()[-n:]
    except OSError:
        return []
tests = {"log_tail": tail("cuda_tests.log")}
try:
    suite = ET.parse(d / "cuda_tests.xml").getroot()
    suite = suite if suite.tag == "testsuite" else suite[0]
    tests.update({k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")})
except (OSError, ET.ParseError):
    tests["error"] = "no junit file: the tests did not finish"
train, ig = load("train.json"), load("ig.json")
estimates = {}
if train:
    for r in train["rows"]:
        key = f"{r['method']} amp={r['amp']} channels_last={r['channels_last']} compile={r['compile']}"
        estimates[f"paper 100-epoch run, {key} (h)"] = round(r["recipe_h"], 3)
if ig:
    for r in ig["rows"]:
        if r["teacher"].startswith("CIFAR"):
            estimates[f"IG store of 50,000 images, source {r['source']} (min)"] = round(
                r["store_minutes"] * 50_000 / r["store_images"], 2)
result = {"gpu": (d / "gpu.txt").read_text().strip() if (d / "gpu.txt").exists() else None,
          "wall_s": wall, "cuda_tests": tests, "train_throughput": train, "attribution_throughput": ig,
          "estimates": estimates, "logs": {"train": tail("train.log", 20), "ig": tail("ig.log", 20)}}
out.write_text(json.dumps(result, indent=1) + "\n")
print(json.dumps(estimates, indent=1))
print(f"gpu_check: {out} ({wall} s)")
EOF
