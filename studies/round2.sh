#!/usr/bin/env bash
# Science round 2 (issue 23): the paper-recipe study, then the converged study re-run (search + runs).
# Runs from a worktree pinned at one commit, so that edits to the checkout do not reach its workers; every
# step resumes. On a machine that lost the study folders, the finished runs come back from the archives in
# studies/ (their text files are what a resume needs; unfinished runs start again).
#   bash studies/round2.sh            # from the repository root, after scripts/setup.sh; hours of CPU
# Archive progress into studies/ with scripts/archive_study.py (see README, "Results anyone can check").
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
PIN=a2eb129
WT=${WT:-/work/wt-study}
OUT=${OUT:-/work/studyrun}
[ -d "$WT" ] || git -C "$REPO" worktree add --detach "$WT" "$PIN"
[ "$(git -C "$WT" rev-parse --short=7 HEAD)" = "$PIN" ] || { echo "$WT is not at $PIN" >&2; exit 2; }
mkdir -p "$OUT"
for name in paper-recipe converged; do
    if [ ! -d "$OUT/$name" ] && [ -f "$REPO/studies/$name/study.json" ]; then
        mkdir -p "$OUT/$name"
        cp -r "$REPO/studies/$name/study.json" "$REPO/studies/$name/runs" "$OUT/$name/"
        echo "restored the finished runs of $name from studies/$name"
    fi
done
export PYTHONPATH="$WT/src"
IGKD="$REPO/.venv/bin/python -m igkd.cli"
CACHE=/root/.cache/igkd/ig   # part of the studies' recorded config: keep it
# The converged study first (about 1.5 hours here), then the paper-recipe study (about 6 hours).
BEST="$OUT/tune-converged/best.yaml"
if [ ! -f "$BEST" ] && [ -f "$REPO/studies/converged/tune/best.yaml" ]; then
    mkdir -p "$OUT/tune-converged" && cp "$REPO/studies/converged/tune/best.yaml" "$BEST"  # the search is done
fi
[ -f "$BEST" ] || $IGKD tune -c cpu-converged-fashion-mnist --set ig.cache_dir=$CACHE -m kd_ig --sampler tpe --trials 12 \
    --out "$OUT/tune-converged" --space distill.alpha=0.01,0.1,0.25,0.5 \
    --space distill.temperature=1.5,2.5,4 --space augment.overlay_p=0.1,0.25,0.5 --workers 2 --threads-per-run 1
$IGKD montecarlo -c "$BEST" --runs 10 --out "$OUT/converged" --workers 2 \
    --threads-per-run 1 --methods student,kd,kd_ig,kd_ig+noise_maps,kd_ig+gradcam_maps,kd_ig+saliency_maps \
    --contrasts kd_ig-kd,kd_ig-kd_ig+noise_maps,kd_ig-kd_ig+gradcam_maps,kd_ig-kd_ig+saliency_maps
# Once studies/round2-extend.sh has extended the paper-recipe study (a second part in study.json), the igkd
# pinned here (which predates study parts) refuses that folder: its first 50 runs are finished then, and
# round2-extend.sh resumes the study.
if "$REPO/.venv/bin/python" -c 'import json, sys; sys.exit(len(json.load(open(sys.argv[1])).get("parts", [])) < 2)' \
        "$OUT/paper-recipe/study.json" 2>/dev/null; then
    echo "paper-recipe: extended by studies/round2-extend.sh, which resumes it"; exit 0
fi
$IGKD montecarlo -c paper-recipe-fashion-mnist --set ig.cache_dir=$CACHE --runs 10 \
    --out "$OUT/paper-recipe" --workers 2 --threads-per-run 1 \
    --methods student,kd,kd_ig,kd_ig+noise_maps,kd_ig+random_teacher_maps \
    --contrasts kd_ig-kd,kd_ig-kd_ig+noise_maps,kd_ig-kd_ig+random_teacher_maps,kd-student
echo "round 2 studies done"
