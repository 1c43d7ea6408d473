"""detconvert: Detectron (Caffe2, 2018) models as first-class PyTorch models, with Detectron's numerics."""
__version__ = "0.1.0"

from detconvert.io.weights import WeightFile, load_weights  # noqa: E402  (public entry: read any weight file)

__all__ = ["WeightFile", "load_weights", "load_model", "Predictor", "__version__"]


def __getattr__(name: str):
    # load_model / Predictor are imported lazily: they pull in torch, torchvision and OpenCV, which
    # `import detconvert` (and CLI start-up) should not pay for.
    if name in ("load_model", "Predictor"):
        from detconvert import model

        return getattr(model, name)
    raise AttributeError(f"module 'detconvert' has no attribute {name!r}")
