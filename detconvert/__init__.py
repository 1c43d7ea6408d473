"""detconvert: Detectron (Caffe2, 2018) models as first-class PyTorch models, with Detectron's numerics."""
__version__ = "0.1.0"
