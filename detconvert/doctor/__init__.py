"""``detconvert doctor``: what this machine can run, and what to do about each problem.

::

    from detconvert.doctor import diagnose
    report = diagnose()
    print(report.format_text())        # one OK / WARN / FAIL line per check, advice under each problem
    report.exit_code                   # 0 without a FAIL, 1 with one

The checks (:mod:`.checks`), in report order:

* packages: torch, torchvision, numpy, OpenCV, pycocotools, safetensors, PyYAML, tqdm import, at least at
  the versions detconvert requires. A broken import (a torchvision built for another torch, an OpenCV
  wanting libGL, a pycocotools built against another NumPy) is a FAIL with the pip line that fixes it;
  the optional ``[onnx]`` extra is reported, never a problem.
* cpu: AVX2 / AVX-512 from ``/proc/cpuinfo`` and the kernels ATen dispatches to
  (``torch.backends.cpu.get_cpu_capability()``); then bfloat16 (AVX512-BF16, AMX): what ``--precision
  fast`` runs on this CPU.
* cuda: the devices torch sees, or why it sees none although a driver is loaded.
* cache: the model-zoo cache folder (``$DETCONVERT_CACHE``) is writable, its content and free space.
* model base: the zoo host (``$DETCONVERT_MODEL_BASE``) answers a HEAD request for ImageNet R-50 within
  3 s. No answer is a WARN, not a FAIL: local files and the cache still work offline.

FAIL means a part of detconvert cannot work here as configured; WARN means it works with a caveat.

This is the highest library stage: it imports torch and every probe it needs from the stages below.
"""
from detconvert.doctor.checks import FAIL, OK, WARN, Check, DoctorReport, diagnose

__all__ = ["FAIL", "OK", "WARN", "Check", "DoctorReport", "diagnose"]
