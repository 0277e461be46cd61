"""Inference copies of a network: eval mode, frozen, batch norm folded, channels-last.

Used wherever a network only runs forward (or forward and input-gradient) with fixed weights: the
teacher in every distillation step, and the teacher in the IG passes. Folding and channels-last change
float32 rounding only (logits within about 1e-5 relative of the eager model: ``tests/test_inference.py``),
far below any error the method itself makes, and make the CPU forward about twice as fast.
"""

from __future__ import annotations

import copy
import functools

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """Fold every eval-mode ``BatchNorm2d`` that directly follows a ``Conv2d`` in a ``Sequential``.

    Works in place on ``module`` (pass a copy) and returns it. The folded conv gets a bias and the
    batch norm becomes ``Identity``, so module paths are kept (a forward hook on ``features.9`` still
    sees that module's output). This covers torchvision's ``Conv2dNormActivation`` and
    ``InvertedResidual.conv`` (both ``Sequential``); a batch norm that does not directly follow a conv
    inside a ``Sequential`` is left alone (still correct, just not faster). Only valid in eval mode:
    the folded conv uses the running statistics.
    """
    for child in module.children():
        fold_batchnorm(child)
    if isinstance(module, nn.Sequential):
        for i in range(len(module) - 1):
            conv, bn = module[i], module[i + 1]
            if (type(conv) is nn.Conv2d and type(bn) is nn.BatchNorm2d and not bn.training
                    and bn.track_running_stats and bn.running_mean is not None
                    and bn.num_features == conv.out_channels):
                module[i] = fuse_conv_bn_eval(conv, bn)
                module[i + 1] = nn.Identity()
    return module


def inference_copy(model: nn.Module, *, fold_bn: bool = True, channels_last: bool = True,
                   device: torch.device | str | None = None) -> nn.Module:
    """A copy of ``model`` for forward passes with fixed weights; the caller's model is not touched.

    Eval mode, parameters frozen, batch norm folded (``fold_bn``), in-place ReLU/ReLU6/Hardtanh made
    out-of-place (same numbers; the in-place form costs an extra copy in autograd on channels-last
    tensors), and channels-last weights (``channels_last``; feed it channels-last inputs).
    """
    if device is None:
        p = next(model.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
    module = copy.deepcopy(model).to(device).eval()
    for p in module.parameters():
        p.requires_grad_(False)
    if fold_bn:
        fold_batchnorm(module)
    for m in module.modules():
        if isinstance(m, (nn.ReLU, nn.ReLU6, nn.Hardtanh)) and getattr(m, "inplace", False):
            m.inplace = False
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
    return module


def trained_like(model: nn.Module, seed: int = 0) -> nn.Module:
    """An eval-mode copy of ``model`` whose batch norms have statistics and affine parameters like a trained
    network's (a fresh one has mean 0, variance 1, weight 1, bias 0, which folding leaves unchanged).
    For checks of folding and rounding (``benchmarks/ig_throughput.py``, the teacher-runtime tests)."""
    model = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_((torch.rand(c, generator=g) - 0.5) * 0.5)
            m.running_var.copy_(torch.rand(c, generator=g) * 2 + 0.1)
            m.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.data.copy_((torch.rand(c, generator=g) - 0.5) * 0.2)
    return model.eval()


# --------------------------------------------------------------------------------------------------
# The teacher's forward in a distillation step

# distill.teacher_runtime: auto = onnxruntime on the CPU where it is installed, else torch; torch = the
# inference copy above; eager = the teacher module as it is; onnxruntime = ONNX Runtime (CPU only).
TEACHER_RUNTIMES = ("auto", "onnxruntime", "torch", "eager")
_ONNX_CACHE: dict[tuple, bytes] = {}  # exported teachers of this process, by weights, tap and input shape


class _WithTap(nn.Module):
    """``net`` returning its logits and the output of its module ``tap`` (for attention transfer)."""

    def __init__(self, net: nn.Module, tap: str):
        super().__init__()
        self.net, self.tap = net, tap

    def forward(self, x: torch.Tensor):
        seen: list[torch.Tensor] = []
        handle = self.net.get_submodule(self.tap).register_forward_hook(lambda _m, _i, o: seen.append(o))
        try:
            logits = self.net(x)
        finally:
            handle.remove()
        return logits, seen[0]


@functools.cache  # asked at every distillation step
def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        return False
    return True


def onnx_model_proto(net: nn.Module, sample_shape: tuple[int, ...], input_names: list[str],
                     output_names: list[str] | None = None, opset: int = 18):
    """``net`` exported by PyTorch's ``torch.export``-based exporter as an ONNX ``ModelProto``: float32
    whatever the caller's autocast, a dynamic batch axis, the exporter's chatter silenced. Shared by
    ``igkd export`` (:mod:`igkd.deploy.export`) and :class:`OrtTeacher`; exporter errors propagate."""
    import contextlib
    import io
    import warnings

    x = torch.zeros((2, *sample_shape))  # batch 2: batch 1 would be specialised as a constant
    with (warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad(),
          torch.autocast("cpu", enabled=False)):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(net, (x,), input_names=input_names, output_names=output_names,
                                    dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True,
                                    opset_version=opset, optimize=True, verbose=False)
    return program.model_proto


def ort_session_options(threads: int | None = None, spin: bool = True):
    """ONNX Runtime's session options as igkd uses them: all graph optimisations, ``threads`` intra-op
    threads (default: PyTorch's), one inter-op thread, quiet. ``spin=False`` stops the threads from
    busy-waiting after a run (for a session that shares the cores with PyTorch work in between)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


class OrtTeacher:
    """A frozen teacher run by ONNX Runtime on the CPU: ``(logits, tap output or None)`` of a float32 batch.

    The network is exported once per process (weights, tap and image shape as the key) from its
    BN-folded inference copy with PyTorch's exporter (dynamic batch), and run with all graph
    optimisations and PyTorch's thread count. On the paper's teacher at batch 64 on a 2-core CPU its
    forward takes about a third of the eager module's (``benchmarks/train_throughput.py``); logits and
    tap stay within 1e-4 of the eager module's (``tests/test_losses.py``).
    """

    def __init__(self, model: nn.Module, tap: str | None, sample_shape: tuple[int, ...],
                 threads: int | None = None):
        import onnxruntime as ort

        from . import state_dict_hash

        key = (state_dict_hash(model), tap, tuple(sample_shape))
        if key not in _ONNX_CACHE:
            net = inference_copy(model, channels_last=False, device="cpu")
            net = _WithTap(net, tap) if tap else net
            proto = onnx_model_proto(net, sample_shape, ["input"])
            if len(_ONNX_CACHE) >= 4:
                _ONNX_CACHE.pop(next(iter(_ONNX_CACHE)))
            _ONNX_CACHE[key] = proto.SerializeToString()
        # No busy-waiting after a run: its threads would spin on the cores the student's step needs next.
        self.session = ort.InferenceSession(_ONNX_CACHE[key], ort_session_options(threads, spin=False),
                                            providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.tap = tap

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        outs = self.session.run(None, {self.input: x.detach().float().contiguous().numpy()})
        return torch.from_numpy(outs[0]), torch.from_numpy(outs[1]) if self.tap else None
