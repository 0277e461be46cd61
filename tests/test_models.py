import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import (
    Swin_T_Weights,
    VisionTransformer,
    ViT_B_16_Weights,
    swin_t,
    vit_b_16,
)

from igkd.models import (
    at_layer_for,
    cifar_mobilenet_v2,
    compression_factor,
    count_flops,
    count_macs,
    count_parameters,
    create_model,
    scaled_student,
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


@torch.no_grad()
def conv_and_linear_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """The count igkd used before FlopCounterMode: forward hooks on Conv2d and Linear modules only."""
    total = 0

    def conv(m, _inp, out):
        nonlocal total
        total += out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def linear(m, _inp, out):
        nonlocal total
        total += out.numel() * m.in_features

    handles = [m.register_forward_hook(conv if isinstance(m, nn.Conv2d) else linear)
               for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    model.eval()(torch.zeros(1, *input_shape))
    for h in handles:
        h.remove()
    return total


@pytest.mark.parametrize("build,shape", [
    (lambda: cifar_mobilenet_v2(), (3, 32, 32)),
    (lambda: truncated_student(cifar_mobilenet_v2(), 5), (3, 32, 32)),
    (lambda: cifar_mobilenet_v2(num_classes=10, in_channels=1, width_mult=0.35, strides=[2, 1, 2, 2, 1]), (1, 28, 28)),
    (lambda: truncated_student(cifar_mobilenet_v2(in_channels=1, width_mult=0.5, strides=[2, 1, 2, 2, 1]), 11),
     (1, 28, 28)),
    (lambda: scaled_student(10, 1, 0.25, (2, 2, 2, 2, 1), 14), (1, 28, 28)),
    (lambda: cifar_mobilenet_v2(num_classes=7, width_mult=1.4), (3, 40, 24)),
])
def test_macs_of_the_family_are_todays_count(build, shape):
    model = build().train()
    macs = count_macs(model, shape)
    assert macs == conv_and_linear_macs(build(), shape) and count_flops(model, shape) == 2 * macs
    assert model.training  # the mode it came in


def test_macs_include_attention_on_a_tiny_vit():
    # One encoder block, hidden 8, 2 heads of 4, MLP 16, 8x8 images in 4x4 patches: 4 patches + class token.
    vit = VisionTransformer(image_size=8, patch_size=4, num_layers=1, num_heads=2, hidden_dim=8, mlp_dim=16,
                            num_classes=3)
    tokens, d, heads = 5, 8, 2
    by_hand = {
        "patches (conv 4x4, 3 -> 8, 2x2 outputs)": 2 * 2 * 8 * 3 * 4 * 4,
        "q, k, v projections": tokens * d * 3 * d,
        "Q K^T, per head": heads * tokens * tokens * (d // heads),
        "softmax(.) V, per head": heads * tokens * tokens * (d // heads),
        "output projection": tokens * d * d,
        "MLP": 2 * tokens * d * 16,
        "head (class token)": d * 3,
    }
    assert count_macs(vit, (3, 8, 8)) == sum(by_hand.values()) == 4520
    # the old count saw neither the projections inside nn.MultiheadAttention nor the attention itself
    assert conv_and_linear_macs(vit, (3, 8, 8)) == 4520 - 960 - 200 - 200 - 320
    assert torch.backends.mha.get_fastpath_enabled()  # switched off for the count only


def test_macs_count_a_functional_attention_call():
    class Attend(nn.Module):  # attention over the pixels by F.scaled_dot_product_attention, then a linear head
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            q = x.flatten(2).transpose(1, 2)[:, None]  # (N, 1 head, 9 pixels, 4 channels)
            return self.head(F.scaled_dot_product_attention(q, q, q).mean((1, 2)))

    assert count_macs(Attend(), (4, 3, 3)) == 2 * 9 * 9 * 4 + 4 * 2


@pytest.mark.parametrize("build,weights", [(vit_b_16, ViT_B_16_Weights.IMAGENET1K_V1),
                                           (swin_t, Swin_T_Weights.IMAGENET1K_V1)])
def test_macs_match_torchvisions_published_figures(build, weights):
    # torchvision's model cards give GFLOPs counted as multiply-adds (attention included), to 3 decimals
    assert round(count_macs(build(), (3, 224, 224)) / 1e9, 3) == weights.meta["_ops"]
