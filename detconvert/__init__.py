"""detconvert: Detectron (Caffe2, 2018) models as first-class PyTorch models, with Detectron's numerics."""
__version__ = "0.1.0"

from detconvert.io.weights import WeightFile, load_weights  # noqa: E402  (public entry: read any weight file)

__all__ = ["WeightFile", "load_weights", "__version__"]
