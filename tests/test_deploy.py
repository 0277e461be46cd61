"""Deployment: ONNX / TorchScript export parity, int8 quantisation, the latency bench, its report section."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from igkd.cli import main
from igkd.config import load_config
from igkd.deploy.export import (
    PARITY_TOLERANCE,
    check_parity,
    export_onnx,
    export_torchscript,
    load_torchscript,
)
from igkd.deploy.results import FORMAT, bench_table, pareto_front
from igkd.deploy.timing import TimingOptions, latency_stats, measure
from igkd.errors import ExportError
from igkd.models import cifar_mobilenet_v2, truncated_student
from igkd.pipeline import distill

from .toy_data import toy_settings, write_quadrants_npz

FAST = ["--warmup", "1", "--min-repeats", "3", "--min-time", "0"]


def _sets(items):
    return [x for item in items for x in ("--set", item)]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """A k = 11 student trained (cross-entropy) to ~100 % test accuracy on the toy task."""
    tmp = tmp_path_factory.mktemp("toy")
    settings = toy_settings(write_quadrants_npz(tmp / "q.npz"), tmp)
    cfg = load_config(None, [*settings, "distill.method=student", "train.epochs=8", "train.lr=0.005"])
    summary = distill(cfg, tmp / "student", progress=False)
    assert summary["test_acc_last"] >= 95.0  # separable: the accuracies below mean something
    return tmp / "student" / "model.pt", settings


def _small_model():
    torch.manual_seed(0)
    teacher = cifar_mobilenet_v2(num_classes=4, in_channels=1, width_mult=0.25, strides=[1, 1, 2, 2, 1])
    student = truncated_student(teacher, 11).eval()
    with torch.no_grad():  # non-trivial outputs: a randomly initialised head gives logits near zero
        student.classifier[-1].weight.normal_(0, 1.0)
    return student


def test_onnx_export_matches_pytorch_at_any_batch(tmp_path):
    import onnx
    import onnxruntime as ort

    model = _small_model()
    path = export_onnx(model, (1, 12, 12), tmp_path / "m.onnx", metadata={"igkd.mean": "[0.5]"})
    assert model.training is False and path.is_file()
    proto = onnx.load(str(path))
    assert {p.key: p.value for p in proto.metadata_props}["igkd.mean"] == "[0.5]"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 3, 17):  # the batch axis is dynamic
        x = torch.randn(batch, 1, 12, 12)
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        with torch.no_grad():
            want = model(x).numpy()
        assert got.shape == (batch, 4)
        assert np.abs(want).max() > 0.1  # a comparison of near-zero outputs would prove nothing
        assert np.abs(got - want).max() <= PARITY_TOLERANCE


def test_torchscript_export_loads_and_matches(tmp_path):
    model = _small_model()
    loaded = load_torchscript(export_torchscript(model, (1, 12, 12), tmp_path / "m.pt"))
    x = torch.randn(5, 1, 12, 12)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=1e-6)


def test_parity_check_refuses_a_mismatch():
    check_parity(5e-5, "m")
    for bad in (2e-4, float("nan")):
        with pytest.raises(ExportError, match="differs from PyTorch"):
            check_parity(bad, "m")


def test_latency_statistics():
    s = latency_stats([i / 1000 for i in range(1, 101)])  # 1 .. 100 ms
    assert s["median_ms"] == pytest.approx(50.5) and s["repeats"] == 100
    assert s["p10_ms"] == pytest.approx(10.9) and s["p90_ms"] == pytest.approx(90.1)
    lo, hi = s["median_ci_ms"]
    assert 40 <= lo < 50.5 < hi <= 61
    calls = []
    out = measure(lambda: calls.append(1), TimingOptions(warmup=4, warmup_s=0, min_repeats=7, min_time_s=0))
    assert out["repeats"] == 7 and len(calls) == 11  # warm-up calls are not timed


def test_pareto_front():
    pts = [{"latency_ms": 1.0, "accuracy": 80.0}, {"latency_ms": 2.0, "accuracy": 90.0},
           {"latency_ms": 3.0, "accuracy": 85.0}, {"latency_ms": 1.0, "accuracy": 79.0}]
    assert pareto_front(pts) == [True, True, False, False]


def test_export_cli_onnx_torchscript_and_int8(toy, tmp_path, capsys):
    checkpoint, settings = toy
    out = tmp_path / "student.onnx"
    code = main(["export", "--checkpoint", str(checkpoint), "--out", str(out),
                 "--torchscript", str(tmp_path / "student.ts"), "--int8", str(tmp_path / "student.int8.onnx"),
                 "--calibration-images", "64", "--json", str(tmp_path / "export.json"), *_sets(settings)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    r = json.loads((tmp_path / "export.json").read_text())
    assert r["model"] == "truncated k=11" and r["onnx"]["max_abs_diff"] <= 1e-4 and r["torchscript"]["max_abs_diff"] <= 1e-4
    q = r["int8"]
    assert q["calibration_images"] == 64 and q["test_images"] == 160
    assert q["accuracy_float32"] >= 95.0
    assert q["accuracy_drop"] == pytest.approx(q["accuracy_float32"] - q["accuracy_int8"])
    assert abs(q["accuracy_drop"]) <= 5.0  # int8 keeps a clearly separable task
    assert q["accuracy_onnx_float32"] == pytest.approx(q["accuracy_float32"])
    assert 0 < q["bytes"] < r["onnx"]["bytes"]  # int8 weights: a smaller file
    assert q["latency_int8"]["median_ms"] > 0 and q["latency_float32"]["repeats"] >= 30
    assert "drop" in printed and "max abs difference" in printed


def test_bench_writes_json_table_and_plot(toy, tmp_path, capsys):
    checkpoint, settings = toy
    code = main(["bench", "--checkpoint", str(checkpoint), "--batch-sizes", "1,8", "--accuracy", "--int8",
                 "--calibration-images", "32", "--threads", "1", "--out", str(tmp_path / "b"), *FAST,
                 *_sets(settings)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    bench = json.loads((tmp_path / "b" / "bench.json").read_text())
    assert bench["format"] == FORMAT and bench["input_shape"] == [1, 12, 12]
    env = bench["environment"]
    assert env["torch_threads"] == 1 and env["onnxruntime_threads"] == 1 and "cpu" in env["devices"]
    teacher, student = bench["models"]  # the config's teacher (random weights: no accuracy) and the checkpoint
    assert teacher["role"] == "teacher" and teacher["accuracy"] == {}
    assert student["name"] == f"truncated k=11 ({checkpoint})" and student["student"] == {
        "kind": "truncated", "remove_blocks": 11, "width_mult": None, "strides": None}
    assert teacher["params"] > student["params"] and teacher["macs"] > student["macs"]
    assert student["size_bytes"] > 4 * student["params"]  # float32 weights plus the file's structure
    for rec in (teacher, student):
        lanes = {(lat["runtime"], lat["device"], lat["batch"]) for lat in rec["latency"]}
        assert lanes == {(r, "cpu", b) for r in ("torch", "onnxruntime", "onnxruntime-int8") for b in (1, 8)}
        for lat in rec["latency"]:
            assert lat["p10_ms"] <= lat["median_ms"] <= lat["p90_ms"] and lat["repeats"] >= 3
        assert rec["onnx_max_abs_diff"] <= 1e-4 and rec["int8_bytes"] > 0
    assert student["accuracy"]["test set"] >= 95.0 and "int8 test set" in student["accuracy"]
    assert student["int8_accuracy_drop"] == pytest.approx(
        student["accuracy"]["test set"] - student["accuracy"]["int8 test set"])
    assert (tmp_path / "b" / "bench.md").read_text().strip() in printed
    assert (tmp_path / "b" / "bench.png").read_bytes()[:4] == b"\x89PNG"
    headers, rows, _ = bench_table(bench)
    assert "batch 1: median ms [p10, p90]" in headers and "Pareto front" in headers
    student_row = next(r for r in rows if r[0] == student["name"])
    assert student_row[-1] == "test set"  # the only model with an accuracy is on the front


def test_bench_paper_students_without_weights(tmp_path, capsys):
    """The paper-model table's shape: teacher and truncated students by depth, random weights, no data."""
    code = main(["bench", "-c", "paper-cifar10", "--remove-blocks", "15,17", "--runtimes", "torch",
                 "--batch-sizes", "1", "--out", str(tmp_path / "p.json"), *FAST,
                 "--set", "teacher.width_mult=0.25"])
    assert code == 0, capsys.readouterr().err
    bench = json.loads((tmp_path / "p.json").read_text())
    names = [m["name"] for m in bench["models"]]
    assert names == ["teacher", "truncated k=5", "truncated k=15", "truncated k=17"]  # k=5: the configured one
    assert all(m["accuracy"] == {} for m in bench["models"]) and not (tmp_path / "p.png").exists()


def test_report_renders_bench_with_study_accuracy(tmp_path):
    from igkd.experiments.report import write_report
    from igkd.fileio import write_json

    from .test_report import accuracy, make_study

    study = make_study(tmp_path / "study", groups=(5,), runs=3)

    def lat(ms):
        return [{"runtime": "torch", "device": "cpu", "batch": 1, "median_ms": ms, "p10_ms": ms * 0.9,
                 "p90_ms": ms * 1.2, "median_ci_ms": [ms, ms], "repeats": 30}]

    def rec(name, role, student, ms, acc=None):
        return {"name": name, "role": role, "student": student, "checkpoint": None, "params": 1000, "macs": 10**6,
                "size_bytes": 5000, "accuracy": acc or {}, "latency": lat(ms)}

    bench = {"format": FORMAT, "title": "Budget students", "input_shape": [1, 28, 28], "batch_sizes": [1],
             "environment": {"cpu_count": 2, "torch_threads": 2, "devices": ["cpu"], "load_average_1min": 0.1},
             "timing": {}, "models": [
                 rec("teacher", "teacher", None, 10.0),
                 rec("truncated k=5", "student", {"kind": "truncated", "remove_blocks": 5}, 6.0),
                 rec("scaled w=1 s=22221 k=14", "student", {"kind": "scaled", "remove_blocks": 14, "width_mult": 1.0,
                                                          "strides": [2, 2, 2, 2, 2]}, 2.0, {"kd_ig": 85.0}),
             ]}
    write_json(study / "bench.json", bench)
    _, md_path = write_report(study)
    md = md_path.read_text()
    assert "## Latency and accuracy" in md and "### Budget students" in md
    row = next(line for line in md.splitlines() if line.startswith("| truncated k=5"))
    mean_kd_ig = np.mean([accuracy("kd_ig", 5, r) for r in range(3)])
    assert f"{mean_kd_ig:.2f}" in row  # the study's mean for its own student at k = 5
    teacher_row = next(line for line in md.splitlines() if line.startswith("| teacher"))
    assert "91.30" in teacher_row and "1.00x" in teacher_row and "5.00x" in md  # 10 ms / 2 ms
    assert (study / "report_files" / "accuracy_vs_latency_bench.png").is_file()


@pytest.mark.parametrize("argv,needle", [
    (["export", "--checkpoint", "nowhere.pt", "--out", "m.onnx"], "nowhere.pt"),
    (["export", "--checkpoint", "x.pt", "--out", "m.txt"], ".onnx"),
    (["bench", "--runtimes", "tensorrt"], "--runtimes"),
    (["bench", "--batch-sizes", "1,x"], "--batch-sizes"),
    (["bench", "--batch-sizes", "0"], "--batch-sizes"),
    (["bench", "--int8", "--runtimes", "torch"], "--int8"),
])
def test_cli_errors_are_one_line(argv, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = main([*argv, "-c", "paper-cifar10"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("igkd: error: ") and needle in err, err
    assert not list(tmp_path.iterdir())  # nothing written
