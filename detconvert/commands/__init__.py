"""One module per ``detconvert`` subcommand (see :mod:`detconvert.cli`).

Rule: importing a module here, and its ``add_arguments``, must not import torch, torchvision, cv2 or
pycocotools (nor a detconvert stage that does: ops, modeling, parallel, inference, evaluation, train, ...);
import those inside ``run``, after the pure argument checks. ``--help``, argument errors, ``inspect``,
``config`` and ``zoo list`` then answer in a fraction of a second; ``tests/test_cli_lean.py`` enforces it.
"""
