"""igkd: knowledge distillation with integrated-gradients augmentation."""

__version__ = "0.1.0"
