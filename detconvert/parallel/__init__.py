"""Multi-device execution: a per-device-minibatch DataParallel and torch.distributed scale-out."""
from detconvert.parallel.data_parallel import DataParallel, mean_over_devices
from detconvert.parallel.scatter_gather import ScatterError, gather, scatter_minibatch, scatter_split

__all__ = ["DataParallel", "mean_over_devices", "ScatterError", "gather", "scatter_minibatch", "scatter_split"]
