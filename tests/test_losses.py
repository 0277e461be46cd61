import math

import pytest
import torch

from igkd.config import DistillConfig
from igkd.distill.losses import at_loss, attention_map, kd_loss
from igkd.distill.methods import Distiller, MethodSpec
from igkd.models import cifar_mobilenet_v2, truncated_student
from igkd.models.inference import trained_like


def test_kd_loss_matches_hand_computation():
    # T = 2, teacher softmax(z/T) = (3/4, 1/4), student uniform:
    # KL = 3/4 ln(3/2) + 1/4 ln(1/2) = 0.1308120..., times T² = 4.
    T = 2.0
    zt = torch.tensor([[2 * math.log(3.0), 0.0]] * 2)
    zs = torch.zeros(2, 2)
    expected = 4 * (0.75 * math.log(1.5) + 0.25 * math.log(0.5))
    assert kd_loss(zs, zt, T).item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(0.5232481, rel=1e-6)
    assert kd_loss(zt, zt, T).item() == pytest.approx(0.0, abs=1e-7)


def test_kd_loss_sums_classes_and_averages_batch():
    torch.manual_seed(0)
    zs, zt = torch.randn(5, 7), torch.randn(5, 7)
    T = 2.5
    pt, ps = torch.softmax(zt / T, 1), torch.softmax(zs / T, 1)
    per_sample = (pt * (pt.log() - ps.log())).sum(1)
    assert kd_loss(zs, zt, T).item() == pytest.approx(T * T * per_sample.mean().item(), rel=1e-5)


def test_at_loss_by_hand():
    ft = torch.tensor([[[[1.0, 0.0]], [[1.0, 0.0]]]])  # (1, 2, 1, 2): mean F² = (1, 0)
    fs = torch.tensor([[[[0.0, 2.0]], [[0.0, 0.0]]]])  # mean F² = (0, 2) -> (0, 1)
    assert attention_map(ft).tolist() == [[1.0, 0.0]]
    assert at_loss(fs, ft).item() == pytest.approx(1.0)
    uniform = torch.ones(1, 3, 1, 2)
    assert at_loss(uniform, ft).item() == pytest.approx(1 - 1 / math.sqrt(2), rel=1e-6)
    assert at_loss(ft * 5, ft).item() == pytest.approx(0.0, abs=1e-7)  # scale-free
    with pytest.raises(ValueError, match="differ in size"):
        at_loss(torch.ones(1, 2, 4, 4), torch.ones(1, 2, 8, 8))


def test_method_specs():
    assert MethodSpec.parse("student") == MethodSpec(False, False, False)
    assert MethodSpec.parse("kd_ig_at") == MethodSpec(True, True, True)
    assert MethodSpec.parse("ig") == MethodSpec(False, True, False)
    assert not MethodSpec.parse("ig").needs_teacher
    with pytest.raises(ValueError):
        MethodSpec.parse("kd_foo")


def test_distiller_named_terms_and_frozen_eval_teacher():
    torch.manual_seed(0)
    teacher = cifar_mobilenet_v2(width_mult=0.25)
    student = truncated_student(teacher, 5)
    cfg = DistillConfig(alpha=0.3, temperature=2.0, gamma=0.8)
    d = Distiller.from_config(student, teacher, "kd_at", cfg, at_layer=9)
    d.train()
    assert not d.teacher.training and student.training
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    logits, losses = d.forward_train(x, y)
    assert set(losses) == {"ce", "kd", "at"}
    with torch.no_grad():
        zt = teacher.eval()(x)
    assert losses["kd"].item() == pytest.approx(0.3 * kd_loss(logits, zt, 2.0).item(), rel=1e-5)
    assert losses["ce"].item() == pytest.approx(0.7 * torch.nn.functional.cross_entropy(logits, y).item(), rel=1e-5)
    sum(losses.values()).backward()
    assert all(p.grad is None for p in teacher.parameters()) and all(p.grad is None for p in d.teacher.parameters())
    assert student.features[0][0].weight.grad is not None


@pytest.mark.parametrize("runtime", ["torch", "onnxruntime", "auto"])
@pytest.mark.parametrize("method", ["kd_ig", "kd_ig_at"])
def test_teacher_runtimes_match_the_eager_teacher(method, runtime):
    """Every teacher runtime (BN-folded channels-last copy; ONNX Runtime) gives the eager teacher's logits
    and AT features within 1e-4, and so the same loss terms; the caller's teacher is left as it was."""
    torch.manual_seed(0)
    teacher = trained_like(cifar_mobilenet_v2())
    student = truncated_student(teacher, 5)
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    out = {}
    for rt in ("eager", runtime):
        d = Distiller.from_config(student, teacher, method, DistillConfig(teacher_runtime=rt),
                                  at_layer=9).train()
        _logits, losses = d.forward_train(x, y)
        zt, ft = d.teacher_outputs(x)
        out[rt] = (zt, ft, {k: v.item() for k, v in losses.items()})
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in teacher.modules())  # the caller's model untouched
    assert (d._ort is not None) == (runtime != "torch")
    (z0, f0, l0), (z1, f1, l1) = out["eager"], out[runtime]
    assert z0.std() > 0.05  # logits that differ between images and classes: the relative bound means something
    assert ((z1 - z0).norm() / z0.norm()).item() < 1e-4
    if method.endswith("_at"):
        assert f1.shape == f0.shape and ((f1 - f0).norm() / f0.norm()).item() < 1e-4
    else:
        assert f0 is None and f1 is None
    for k in l0:
        assert l1[k] == pytest.approx(l0[k], rel=1e-4)


def test_teacher_runtime_is_checked():
    from igkd.config import load_config
    from igkd.errors import ConfigError

    with pytest.raises(ConfigError, match="distill.teacher_runtime.*auto, onnxruntime, torch, eager"):
        load_config(None, ["distill.teacher_runtime=tensorrt"])
