"""Integrated gradients: agreement with Captum, completeness, batch-norm folding, no side effects."""

import copy
import warnings

import pytest
import torch
from captum.attr import IntegratedGradients
from captum.attr._utils.approximation_methods import approximation_parameters
from torch import nn

from igkd.attribution import (
    SUPPORTED_METHODS,
    attribution_map,
    fold_batchnorm,
    integrated_gradients,
    prepare_for_ig,
    quadrature,
)
from igkd.attribution.ig import _runs, default_internal_batch_size
from igkd.models import cifar_mobilenet_v2


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial running statistics and affine parameters, so folding has something to fold."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
    return model


def small_net(seed: int = 0, classes: int = 5) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU6(inplace=True),
        nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 12, 1), nn.BatchNorm2d(12), nn.ReLU6(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, classes))
    return randomize_bn(net, seed).eval()


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def captum(model, x, target, baselines=None, n_steps=50, method="gausslegendre", internal_batch_size=None,
           delta=False):
    with warnings.catch_warnings():  # Captum warns when internal_batch_size < number of inputs
        warnings.simplefilter("ignore")
        return IntegratedGradients(model).attribute(x, baselines=baselines, target=target, n_steps=n_steps,
                                                    method=method, internal_batch_size=internal_batch_size,
                                                    return_convergence_delta=delta)


@pytest.mark.parametrize("method", SUPPORTED_METHODS)
def test_quadrature_is_captums(method):
    for n in (2, 7, 50):
        steps, alphas = approximation_parameters(method)
        s, a = quadrature(method, n)
        assert torch.equal(s, torch.tensor(steps(n)).float())
        assert torch.equal(a, torch.tensor(alphas(n), dtype=torch.float32))


@pytest.mark.parametrize("method", SUPPORTED_METHODS)
def test_matches_captum(method):
    net = small_net()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, 8, 8, generator=g)
    labels = torch.tensor([0, 3, 1, 4])
    baseline = torch.randn(1, 3, 8, 8, generator=g) * 0.2
    for target in (2, labels):
        for baselines in (None, baseline):
            for ibs in (None, 6):
                want, want_delta = captum(net, x, target, baselines, 10, method, ibs, delta=True)
                got, delta = integrated_gradients(net, x, target, baselines, 10, method, ibs,
                                                  return_convergence_delta=True)
                assert rel(got, want) <= 1e-4, (method, target, baselines is None, ibs)
                assert torch.allclose(delta, want_delta, atol=1e-4)


def test_matches_captum_on_mobilenet_and_per_sample_baselines():
    torch.manual_seed(0)
    model = randomize_bn(cifar_mobilenet_v2(num_classes=4, width_mult=0.25)).eval()
    x = torch.randn(3, 3, 16, 16)
    baselines = torch.randn(3, 3, 16, 16) * 0.1  # one baseline per input
    want = captum(model, x, torch.tensor([0, 1, 3]), baselines, 12, internal_batch_size=9)
    got = integrated_gradients(model, x, torch.tensor([0, 1, 3]), baselines, 12)
    assert rel(got, want) <= 1e-4
    # A scalar baseline means that value everywhere, as in Captum.
    assert rel(integrated_gradients(model, x, 2, 0.5, 8), captum(model, x, 2, 0.5, 8)) <= 1e-4


def test_completeness():
    """Sum of attributions = F(x) - F(baseline), closely, with many steps."""
    net = small_net(seed=3)
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    target = torch.tensor([1, 0, 2])
    attr, delta = integrated_gradients(net, x, target, n_steps=300, return_convergence_delta=True)
    with torch.no_grad():
        fx = net(x).gather(1, target[:, None]).squeeze(1)
        fb = net(torch.zeros_like(x)).gather(1, target[:, None]).squeeze(1)
    sums = attr.sum(dim=(1, 2, 3))
    assert torch.allclose(delta, sums - (fx - fb), atol=1e-5)
    assert (sums - (fx - fb)).abs().max() <= 2e-3 * (fx - fb).abs().max()


def test_fold_batchnorm_is_numerically_equal():
    torch.manual_seed(0)
    model = randomize_bn(cifar_mobilenet_v2(num_classes=4, width_mult=0.25)).eval()
    folded = fold_batchnorm(copy.deepcopy(model))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the original keeps its BN
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        want, got = model(x), folded(x)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-5)
    # A train-mode BN uses batch statistics: folding must leave it alone.
    train_bn = small_net().train()
    fold_batchnorm(train_bn)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in train_bn.modules()) == 3


@pytest.mark.parametrize("fast", [True, False], ids=["prepared-copy", "model-itself"])
def test_no_side_effects_on_the_model(fast):
    net = small_net().train()
    net[0].weight.requires_grad_(False)  # a mix of frozen and trainable parameters
    modes = [m.training for m in net.modules()]
    flags = [p.requires_grad for p in net.parameters()]
    state = copy.deepcopy(net.state_dict())
    x = torch.randn(2, 3, 8, 8)
    kwargs = {} if fast else {"fold_bn": False, "channels_last": False}
    attr = integrated_gradients(net, x, 1, n_steps=5, **kwargs)
    assert [m.training for m in net.modules()] == modes
    assert [p.requires_grad for p in net.parameters()] == flags
    assert all(p.grad is None for p in net.parameters())
    for k, v in net.state_dict().items():  # eval mode was used: running stats did not move
        assert torch.equal(v, state[k]), k
    # Eval mode was used for the passes, whatever mode the model was in.
    want = captum(copy.deepcopy(net).eval(), x, 1, n_steps=5)
    assert rel(attr, want) <= 1e-4


def test_internal_batch_size_bounds_every_pass():
    net = small_net()
    sizes = []
    net.register_forward_pre_hook(lambda _m, args: sizes.append(args[0].shape[0]))
    x = torch.randn(5, 3, 8, 8)
    got = integrated_gradients(net, x, 2, n_steps=7, internal_batch_size=4, fold_bn=False,
                               channels_last=False)
    assert max(sizes) <= 4 and sum(sizes) == 5 * 7
    assert rel(got, integrated_gradients(net, x, 2, n_steps=7, internal_batch_size=35)) <= 1e-5


def test_runs_cover_every_pair_once_in_order():
    for n_images, n_steps in ((1, 1), (5, 3), (4, 7)):
        total = n_images * n_steps
        for size in range(1, total + 1):
            seen = []
            for start in range(0, total, size):
                stop = min(total, start + size)
                offset = 0
                for i0, i1, s0, s1, off in _runs(start, stop, n_steps):
                    assert off == offset
                    seen += [i * n_steps + s for i in range(i0, i1) for s in range(s0, s1)]
                    offset += (i1 - i0) * (s1 - s0)
                assert offset == stop - start
            assert seen == list(range(total))


def test_prepared_model_is_reusable_and_frozen():
    net = small_net()
    prepared = prepare_for_ig(net)
    assert not any(p.requires_grad for p in prepared.module.parameters())
    x = torch.randn(2, 3, 8, 8)
    assert rel(integrated_gradients(prepared, x, 0, n_steps=6), integrated_gradients(net, x, 0, n_steps=6)) < 1e-6


def test_attribution_map_and_errors():
    a = torch.tensor([[[[1.0, -2.0]], [[-3.0, 0.5]]]])  # (1, 2, 1, 2)
    assert torch.equal(attribution_map(a), torch.tensor([[[4.0, 2.5]]]))
    net = small_net()
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(ValueError, match="CUDA-only"):
        integrated_gradients(net, x, 0, n_steps=4, autocast=True)
    with pytest.raises(ValueError, match="unknown IG method"):
        integrated_gradients(net, x, 0, method="simpson")
    with pytest.raises(ValueError, match="n_steps"):
        integrated_gradients(net, x, 0, n_steps=1, method="riemann_left")
    with pytest.raises(ValueError, match="target"):
        integrated_gradients(net, x, torch.tensor([0, 1, 2]), n_steps=4)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    net = small_net()
    x = torch.randn(4, 3, 8, 8)
    cpu = integrated_gradients(net, x, 1, n_steps=20)
    gpu = integrated_gradients(copy.deepcopy(net).cuda(), x.cuda(), 1, n_steps=20)
    assert rel(gpu.cpu(), cpu) <= 1e-4
    half = integrated_gradients(copy.deepcopy(net).cuda(), x.cuda(), 1, n_steps=20, autocast=True)
    assert rel(half.cpu(), cpu) <= 5e-2


def test_default_internal_batch_size_counts_pixels_not_channels():
    cpu = torch.device("cpu")
    assert default_internal_batch_size((8, 3, 32, 32), cpu) == 32  # what the docstring promises for CIFAR
    assert default_internal_batch_size((8, 1, 32, 32), cpu) == 32  # channels do not count
    assert default_internal_batch_size((8, 1, 28, 28), cpu) == 42
    assert default_internal_batch_size((8, 3, 64, 64), cpu) == 8


def test_default_is_as_exact_as_captum_against_float64():
    """The default computes what Captum computes; measured against float64 its error is Captum's."""
    torch.manual_seed(0)
    model = randomize_bn(cifar_mobilenet_v2(num_classes=4, width_mult=0.25)).eval()
    x, t = torch.randn(8, 3, 16, 16), torch.arange(8) % 4
    f64 = integrated_gradients(copy.deepcopy(model).double(), x.double(), t, n_steps=16).double()
    ours, theirs = integrated_gradients(model, x, t, n_steps=16), captum(model, x, t, n_steps=16)
    assert rel(ours, theirs) <= 1e-6
    assert rel(ours, f64) <= 1.5 * rel(theirs, f64) + 1e-7
