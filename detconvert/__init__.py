"""detconvert: Detectron (Caffe2, 2018) models as first-class PyTorch models, with Detectron's numerics.

The house, stages in data order; a folder imports only from the folders above it in this list
(``tests/test_package_layout.py`` checks it):

    errors, spec, structures   shared vocabulary: one-line errors, the typed ArchSpec, Detections
    io/          read   Detectron pickles (restricted unpickler), embedded cfg YAML, atomic writes
    config/      translate  Detectron YAML -> merged defaults -> ArchSpec;   inspect/  describe a weight file
    zoo/         fetch  the model-zoo catalogue and verified downloads
    ops/ modeling/  compute  Detectron's numerics (boxes, NMS, RoIAlign) and the nn.Modules + blob mapping tables
    data/ parallel/  feed  class tables, batching, samplers; DataParallel / torch.distributed plumbing
    inference/   run    load_model / Predictor, Detectron's test path (+ test-time augmentation), precision policy,
                        proposals, results json, folder and video runners, pictures
    evaluation/  score  COCO and PASCAL VOC evaluation of results files and datasets
    export/      write  safetensors / pth checkpoints, detectron2, torchvision, ONNX;   train/  fine-tune
    doctor/      check  package versions, CPU features, CUDA, cache folder, model host: what to fix
    cli, commands/, demo   the thin command line over one library call each
"""
__version__ = "0.1.0"

from detconvert.io.weights import WeightFile, load_weights  # noqa: E402  (public entry: read any weight file)

__all__ = ["WeightFile", "load_weights", "load_model", "Predictor", "translate_config", "build_spec",
           "export_model", "__version__"]

# Imported on first use: they pull in torch, torchvision and OpenCV, which `import detconvert` (and CLI start-up)
# should not pay for.
_LAZY = {
    "load_model": "detconvert.inference.predictor",
    "Predictor": "detconvert.inference.predictor",
    "translate_config": "detconvert.config",
    "build_spec": "detconvert.config",
    "export_model": "detconvert.export",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'detconvert' has no attribute {name!r}")
