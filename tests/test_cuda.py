"""The GPU path, end to end: skipped without CUDA, run by ``benchmarks/gpu_check.sh`` where there is one."""

import json

import pytest
import torch

from igkd.cli import main
from igkd.config import DistillConfig
from igkd.distill.methods import Distiller
from igkd.models import cifar_mobilenet_v2, truncated_student
from igkd.models.inference import trained_like

from .toy_data import toy_settings, write_quadrants_npz

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _sets(items):
    return [x for item in items for x in ("--set", item)]


def test_teacher_runtime_on_cuda_matches_eager():
    """On CUDA ``auto`` runs the BN-folded channels-last copy in PyTorch: within 1e-4 of the eager teacher."""
    torch.backends.cudnn.allow_tf32 = False  # TF32 convolutions round at 1e-3: compare float32 with float32
    try:
        torch.manual_seed(0)
        teacher = trained_like(cifar_mobilenet_v2()).cuda()
        student = truncated_student(teacher, 5)
        x = torch.randn(64, 3, 32, 32, device="cuda")
        out = {}
        for rt in ("eager", "auto"):
            d = Distiller.from_config(student, teacher, "kd_ig_at", DistillConfig(teacher_runtime=rt),
                                      at_layer=9).cuda().train()
            out[rt] = d.teacher_outputs(x)
            assert d._ort is None
        (z0, f0), (z1, f1) = out["eager"], out["auto"]
        assert ((z1 - z0).norm() / z0.norm()).item() < 1e-4 and ((f1 - f0).norm() / f0.norm()).item() < 1e-4
    finally:
        torch.backends.cudnn.allow_tf32 = True


@pytest.mark.parametrize("fast", [[], ["train.amp=bf16", "train.channels_last=true", "teacher_train.amp=bf16"]])
def test_pipeline_on_cuda(tmp_path, fast):
    """Teacher, IG store and a kd_ig_at student on the GPU (exact and bf16 + channels-last): the teacher learns,
    the student's losses stay finite, and the run says where it ran."""
    data = write_quadrants_npz(tmp_path / "q.npz")
    sets = [s for s in toy_settings(data, tmp_path) if "device=" not in s and "threads=" not in s]
    sets += ["train.device=cuda", "teacher_train.device=cuda", *fast]
    assert main(["train-teacher", "-c", "cpu-fashion-mnist", *_sets(sets), "--out", str(tmp_path / "t")]) == 0
    teacher = json.loads((tmp_path / "t" / "summary.json").read_text())
    assert teacher["test_acc_last"] > 60
    sets.append(f"teacher.checkpoint={tmp_path / 't' / 'model.pt'}")
    assert main(["precompute-ig", "-c", "cpu-fashion-mnist", *_sets(sets)]) == 0
    assert main(["distill", "-c", "cpu-fashion-mnist", *_sets(sets), "-m", "kd_ig_at",
                 "--out", str(tmp_path / "s")]) == 0
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert 0 <= summary["test_acc_last"] <= 100
    env = json.loads((tmp_path / "s" / "env.json").read_text())
    assert "cuda" in json.dumps(env).lower()
