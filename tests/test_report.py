import csv
import io
import json
import re
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from igkd.errors import ConfigError
from igkd.experiments.report import fmt_p, write_report
from igkd.fileio import write_checked_json, write_with_sidecar

FIELDS = ("study,method,remove_blocks,run,seed,train_images,test_images,params,macs,"
          "compression_factor,teacher_test_acc,test_acc_last,test_acc_at_best_val,best_epoch,"
          "epochs,train_time_s,wall_time_s,run_dir").split(",")
METHODS = ["student", "kd", "kd_ig"]
OFFSET = {"student": 0.0, "kd": 0.8, "kd_ig": 1.5, "kd_ig+noise_maps": 0.3}
SHIFT = {"student": 0, "kd": 1, "kd_ig": 2, "kd_ig+noise_maps": 3}
CF = {5: 4.12, 7: 12.5}


def accuracy(method: str, k: int, run: int) -> float:
    """Deterministic fake accuracies: a method offset, a per-run effect shared by all methods
    (what pairing removes) and a little method-specific noise."""
    noise = 0.13 * ((run * 7 + 3 * SHIFT[method]) % 5)
    return round(88.0 - 2.0 * (k - 5) + OFFSET[method] + 0.7 * run + noise, 2)


def make_study(root, groups=(5,), methods=METHODS, runs=4, paired=True, gallery_channels=1, contrasts=()):
    root.mkdir(exist_ok=True)
    study = {"kind": "sweep" if len(groups) > 1 else "montecarlo", "methods": list(methods),
             "runs": runs, "paired": paired, "train_fraction": 0.8, "remove_blocks": list(groups),
             "baseline": "student", "dataset": "fashion_mnist", "contrasts": [list(c) for c in contrasts],
             "teacher": {"test_acc": 91.3, "params": 2_236_682, "macs": 6_000_000}, "config": {}}
    write_checked_json(root / "study.json", study)
    rows = []
    for k in groups:
        for method in methods:
            for run in range(runs):
                run_dir = f"runs/k{k}/{method}/run{run}"
                acc = accuracy(method, k, run)
                (root / run_dir).mkdir(parents=True)
                with (root / run_dir / "metrics.jsonl").open("w") as f:
                    for epoch in range(1, 4):
                        f.write(json.dumps({"epoch": epoch, "lr": 0.01, "loss": 1.0 / epoch,
                                            "loss_ce": 1.0 / epoch, "train_acc": 80.0 + epoch,
                                            "val_acc": float("nan"), "test_acc": acc - 3 + epoch,
                                            "epoch_time_s": 1.0}) + "\n")
                rows.append({"study": "s", "method": method, "remove_blocks": k, "run": run,
                             "seed": 100 + run, "train_images": 48000, "test_images": 10000,
                             "params": 543498, "macs": 1_000_000, "compression_factor": CF[k],
                             "teacher_test_acc": 91.3, "test_acc_last": acc,
                             "test_acc_at_best_val": "" if run == 0 else acc - 0.1,
                             "best_epoch": "" if run == 0 else 3, "epochs": 3,
                             "train_time_s": 10.0, "wall_time_s": 11.0, "run_dir": run_dir})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    write_with_sidecar(root / "results.csv", buf.getvalue().encode())
    n, c = 3, gallery_channels
    np.savez(root / "gallery.npz",
             images=np.random.default_rng(0).integers(0, 255, (n, c, 8, 8), dtype=np.uint8),
             maps=np.random.default_rng(1).normal(size=(n, 8, 8)).astype(np.float32),
             overlays=np.random.default_rng(2).integers(0, 255, (n, c, 8, 8), dtype=np.uint8),
             labels=np.arange(n, dtype=np.int64), classes=np.array(["shirt", "bag", "boot"]))
    return root


def md_rows(md: str, first_cell: str) -> list[list[str]]:
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in md.splitlines()
            if line.startswith("|")]
    return [r for r in rows if r[0] == first_cell]


def assert_self_contained(html: str):
    assert "data:image/png;base64," in html
    assert "<script" not in html.lower()
    assert not re.search(r"https?://", html)
    for link in re.findall(r'(?:src|href)="([^"]*)"', html):
        assert link.startswith("data:image/png;base64,"), link


def test_montecarlo_report(tmp_path):
    study = make_study(tmp_path / "study")
    html_path, md_path = write_report(study)
    assert (html_path, md_path) == (study / "report.html", study / "report.md")
    html, md = html_path.read_text(), md_path.read_text()
    assert_self_contained(html)
    assert html.count("data:image/png;base64,") == 3  # runs, learning curves, gallery
    assert "fashion_mnist" in md and "91.30" in md and "paired" in md

    # The summary table (first "kd" row) holds kd's mean over the written runs.
    kd = [accuracy("kd", 5, r) for r in range(4)]
    summary = md_rows(md, "kd")[0]
    assert summary[1] == "4" and summary[3] == f"{np.mean(kd):.2f}"
    assert summary[2] == f"{min(kd):.2f}" and summary[4] == f"{max(kd):.2f}"

    # The comparison is paired: its p-value is the paired t-test's.
    student = [accuracy("student", 5, r) for r in range(4)]
    p = stats.ttest_rel(kd, student).pvalue
    comparison = md_rows(md, "kd")[1]
    assert "paired t-test" in comparison and fmt_p(p) in comparison
    assert re.search(r"Test choice( for [^:]+)?: paired t-test", md)

    for name in ("accuracy_per_method", "learning_curves", "gallery"):
        assert (study / "report_files" / f"{name}.png").is_file()
        assert f"(report_files/{name}.png)" in md
    assert not (study / "report_files" / "accuracy_vs_compression.png").exists()


def test_planned_contrasts_are_tested_together_with_holm(tmp_path):
    methods = ["student", "kd", "kd_ig", "kd_ig+noise_maps"]
    pairs = [("kd_ig", "kd"), ("kd_ig", "kd_ig+noise_maps")]
    study = make_study(tmp_path / "study", methods=methods, runs=5, contrasts=pairs)
    md = write_report(study)[1].read_text()
    assert "## Planned comparisons" in md
    acc = {m: [accuracy(m, 5, r) for r in range(5)] for m in methods}
    raw = [stats.ttest_rel(acc[a], acc[b]).pvalue for a, b in pairs]
    # Holm for two p-values: the smaller doubled, the larger kept unless below that (all capped at 1)
    low = min(1.0, 2 * min(raw))
    holm = [low if p == min(raw) else min(1.0, max(p, low)) for p in raw]
    for (a, b), p, ph in zip(pairs, raw, holm):
        row = md_rows(md, f"{a} - {b}")[0]
        diff = np.mean(np.subtract(acc[a], acc[b]))
        assert row[1] == "5" and row[2].startswith(f"{diff:+.2f}")
        assert row[5] == fmt_p(p) and row[6] == fmt_p(ph)
    # without contrasts the section is absent
    plain = write_report(make_study(tmp_path / "plain", methods=methods, runs=5))[1].read_text()
    assert "Planned comparisons" not in plain


def test_sweep_report_unpaired(tmp_path):
    methods = ["student", "kd_ig", "kd_ig+noise_maps"]
    study = make_study(tmp_path / "sweep", groups=(5, 7), methods=methods, paired=False,
                       gallery_channels=3)
    (study / "bench.json").write_text(json.dumps([{"model": "student", "latency_ms": 1.234}]))
    html_path, md_path = write_report(study)
    html, md = html_path.read_text(), md_path.read_text()
    assert_self_contained(html)
    assert (study / "report_files" / "accuracy_vs_compression.png").is_file()
    assert "Welch's t-test" in md and "Mann-Whitney U" in md
    # Sweep table: one row per k with the CF and every method's mean.
    row = md_rows(md, "7")[0]
    assert row[1] == "12.50"
    assert row[3] == f"{np.mean([accuracy('kd_ig', 7, r) for r in range(4)]):.2f}"
    assert "kd_ig+noise_maps" in md and "latency_ms" in md and "1.23" in md


def test_too_few_runs_still_renders(tmp_path):
    study = make_study(tmp_path / "one", runs=1)
    _, md_path = write_report(study)
    assert "No comparison yet" in md_path.read_text()


def test_missing_or_empty_results(tmp_path):
    with pytest.raises(ConfigError, match="results.csv"):
        write_report(tmp_path)
    write_with_sidecar(tmp_path / "results.csv", (",".join(FIELDS) + "\n").encode())
    with pytest.raises(ConfigError, match="no finished runs"):
        write_report(tmp_path)


def test_report_does_not_import_torch():
    code = "import sys, igkd.experiments.report; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def write_constructed_study(root, values: dict, contrasts=(), margin=None, paired=True):
    """A study folder holding exactly ``values`` ({method: accuracy per run}) and nothing else."""
    root.mkdir(parents=True, exist_ok=True)
    meta = {"kind": "montecarlo", "methods": list(values), "runs": len(next(iter(values.values()))),
            "paired": paired, "train_fraction": 0.8, "remove_blocks": [5], "baseline": "student",
            "dataset": "fashion_mnist", "contrasts": [list(c) for c in contrasts], "config": {}}
    if margin is not None:
        meta["margin"] = margin
    write_checked_json(root / "study.json", meta)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=FIELDS, restval="")
    writer.writeheader()
    for method, accs in values.items():
        for run, acc in enumerate(accs):
            writer.writerow({"study": "s", "method": method, "remove_blocks": 5, "run": run, "seed": run,
                             "test_acc_last": acc, "run_dir": f"runs/{method}-{run}"})
    write_with_sidecar(root / "results.csv", buf.getvalue().encode())
    return root


def constructed_values(n=10):
    rng = np.random.default_rng(7)
    student = 83 + rng.normal(0, 0.5, n)
    pattern = np.tile([1.0, -1.0], n // 2)
    return {"student": list(np.round(student, 2)),
            "same": list(np.round(student + 0.03 + 0.05 * pattern, 2)),  # within +-0.1 of the student
            "up": list(np.round(student + 2 + 0.2 * pattern, 2)),
            "noisy": list(np.round(student + 0.3 + 2.5 * pattern, 2))}


def test_report_gives_tost_verdicts_and_power_with_the_recorded_margin(tmp_path):
    values = constructed_values()
    pairs = [("same", "student"), ("up", "student"), ("noisy", "student")]
    study = write_constructed_study(tmp_path / "s", values, contrasts=pairs, margin=0.4)
    md = write_report(study)[1].read_text()
    verdicts = {a: md_rows(md, f"{a} - student")[1] for a, _ in pairs}  # [0]: the tests, [1]: equivalence
    assert verdicts["same"][-1] == "equivalent within ±0.40"
    assert verdicts["up"][-1] == "better"
    assert verdicts["noisy"][-1] == "inconclusive"
    # the numbers are the stats module's: TOST p, MDE and runs for the margin of the noisy contrast
    d = np.subtract(values["noisy"], values["student"])
    from statsmodels.stats.power import TTestPower
    from statsmodels.stats.weightstats import ttost_paired

    row = verdicts["noisy"]
    assert row[5] == fmt_p(ttost_paired(np.array(values["noisy"]), np.array(values["student"]), -0.4, 0.4)[0])
    mde = TTestPower().solve_power(effect_size=None, nobs=10, alpha=0.05, power=0.8) * d.std(ddof=1)
    assert row[6] == f"{mde:.2f}" and int(row[7]) > 10
    assert "Margin m = 0.40 points (recorded in study.json)" in md and "TOST" in md
    # the baseline comparisons carry the same verdicts
    assert md_rows(md, "up")[-1][-1] == "better"


def test_report_margin_option_overrides_the_recorded_one(tmp_path, capsys):
    from igkd.cli import main

    values = constructed_values()
    study = write_constructed_study(tmp_path / "s", values, contrasts=[("same", "student")], margin=0.4)
    assert main(["report", str(study), "--margin", "0.02"]) == 0
    md = (study / "report.md").read_text()
    row = md_rows(md, "same - student")[1]
    assert row[-1] == "inconclusive" and "Margin m = 0.02 points (given to igkd report)" in md
    assert "TOST p (±0.02)" in md
    # no margin anywhere: the paper's 0.40
    old = write_constructed_study(tmp_path / "old", values, contrasts=[("same", "student")])
    md = write_report(old)[1].read_text()
    assert "Margin m = 0.40 points (the default" in md
    assert main(["report", str(study), "--margin", "-1"]) == 2
    assert "margin" in capsys.readouterr().err


def test_learning_curves_use_validation_when_the_test_set_was_tested_at_the_end_only(tmp_path):
    """train.test_eval=end leaves test_acc NaN on most epochs: the curves then show validation accuracy
    (and say so), not an empty plot."""
    study = make_study(tmp_path / "study")
    _, md = write_report(study)
    assert "Mean test accuracy per epoch" in md.read_text()
    for path in (study / "runs").rglob("metrics.jsonl"):
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        for m in lines:
            m["val_acc"] = m["test_acc"] - 1
            if m["epoch"] != len(lines):
                m["test_acc"] = float("nan")
        path.write_text("".join(json.dumps(m) + "\n" for m in lines))
    _, md = write_report(study)
    text = md.read_text()
    assert "Mean validation accuracy per epoch" in text and "train.test_eval=end" in text
    assert (study / "report_files" / "learning_curves.png").is_file()
