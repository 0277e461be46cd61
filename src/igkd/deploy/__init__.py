"""Deployment: honest latency (``bench``), ONNX and TorchScript export with parity checks (``export``),
int8 post-training quantisation (``quantize``), and the bench results the report reads (``results``).

Submodules are imported where used: ``results`` must stay importable without torch (the report reads
it), the others pull in torch and ONNX Runtime.
"""
