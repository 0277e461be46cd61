import math

import pytest
import torch

from igkd.models import (
    at_layer_for,
    cifar_mobilenet_v2,
    compression_factor,
    count_macs,
    count_parameters,
    create_model,
    state_dict_hash,
    truncated_student,
)
from igkd.runs import load_weights

from .conftest import REFERENCE, require

# METHOD.md step 2: k removed -> student parameters, CF (two decimals; 139.4 and 1121.7 rounded there)
PAPER_TABLE = {3: (1_019_402, 2.19), 5: (543_498, 4.12), 7: (306_954, 7.29), 9: (185_738, 12.04),
               11: (77_194, 28.97), 13: (40_970, 54.59), 15: (16_042, 139.43), 17: (1_994, 1121.71)}


def test_teacher_matches_paper():
    t = cifar_mobilenet_v2()
    assert count_parameters(t) == 2_236_682
    assert t.features[0][0].stride == (1, 1)
    assert t.features[2].conv[1][0].stride == (1, 1)
    assert t.features[4].conv[1][0].stride == (2, 2)
    assert isinstance(t.classifier[0], torch.nn.Dropout) and t.classifier[1].in_features == 1280
    assert round(count_macs(t, (3, 32, 32)) / 1e6, 1) == 88.0
    assert t(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("k", sorted(PAPER_TABLE))
def test_compression_table(k):
    t = cifar_mobilenet_v2()
    s = truncated_student(t, k)
    params, cf = PAPER_TABLE[k]
    assert count_parameters(s) == params
    assert round(compression_factor(t, s), 2) == cf
    assert len(s.features) == 19 - k
    assert s(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_student_macs_match_method():
    t = cifar_mobilenet_v2()
    assert round(count_macs(truncated_student(t, 5), (3, 32, 32)) / 1e6, 1) == 58.7


def test_student_is_freshly_initialised_not_a_copy():
    t = cifar_mobilenet_v2()
    s = truncated_student(t, 5)
    assert not torch.equal(s.features[3].conv[0][0].weight, t.features[3].conv[0][0].weight)
    s.features[0][0].weight.data.zero_()
    assert t.features[0][0].weight.abs().sum() > 0


@pytest.mark.parametrize("name", ["CIFAR10_KD_IG_T2.5_alpha0.01_p0.1_gamma0_TestAcc92.28.pt",
                                  "CIFAR10-Train80Rand_Student_TestAcc90.73.pt"])
def test_reference_students_load_strictly(name):
    path = REFERENCE / name
    require(path, "reference student")
    s = load_weights(truncated_student(cifar_mobilenet_v2(), 5), path)
    s.eval()
    out = s(torch.randn(4, 3, 32, 32))
    assert torch.isfinite(out).all() and out.std() > 0


def test_wrong_checkpoint_is_a_clear_error(tmp_path):
    from igkd.errors import CheckpointError

    torch.save(truncated_student(cifar_mobilenet_v2(), 7).state_dict(), tmp_path / "k7.pt")
    with pytest.raises(CheckpointError, match="does not fit"):
        load_weights(truncated_student(cifar_mobilenet_v2(), 5), tmp_path / "k7.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="unreadable"):
        load_weights(truncated_student(cifar_mobilenet_v2(), 5), tmp_path / "junk.pt")


def test_at_layer_rule():
    assert [at_layer_for(k) for k in (3, 5, 7, 9, 11, 13, 15, 17)] == [9, 9, 9, 4, 4, 4, 2, 0]
    t = cifar_mobilenet_v2()
    s = truncated_student(t, 5)
    x = torch.zeros(1, 3, 32, 32)
    assert s.features[: at_layer_for(5) + 1](x).shape == (1, 64, 8, 8)


def test_small_grayscale_recipe_is_same_code():
    t = create_model("cifar_mobilenet_v2", in_channels=1, width_mult=0.5, strides=[2, 1, 2, 2, 1])
    assert t(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    s = truncated_student(t, 5)
    assert s(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert compression_factor(t, s) > 1
    with pytest.raises(ValueError, match="strides"):
        cifar_mobilenet_v2(strides=[1, 1, 3, 2, 2])


def test_state_dict_hash_tracks_weights():
    t = cifar_mobilenet_v2(width_mult=0.25)
    h = state_dict_hash(t)
    assert h == state_dict_hash(t.state_dict())
    with torch.no_grad():
        t.classifier[1].bias[0] += 1e-3
    assert state_dict_hash(t) != h


def test_student_head_has_pytorchs_default_linear_init():
    """The authors' students used nn.Linear's default init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    torch.manual_seed(0)
    s = truncated_student(cifar_mobilenet_v2(), 5)
    w = s.classifier[1].weight.detach()
    bound = 1 / math.sqrt(w.shape[1])
    assert w.abs().max() <= bound and w.abs().max() > 0.95 * bound
    assert abs(w.std().item() - bound / math.sqrt(3)) < 0.05 * bound  # uniform, not normal(0, 0.01)
    assert s.classifier[1].bias.abs().max() > 0
