"""lantern: run quantized GGUF language models in PyTorch."""

from .errors import LanternError

__version__ = "0.1.0"

__all__ = ["LanternError", "load", "__version__"]


def load(model: str, device: str = "cpu", **options):
    """Load a model from a .gguf path or a model spec (alias, hf:owner/repo/file.gguf)."""
    from .model import Model

    return Model.load(model, device=device, **options)
