#!/usr/bin/env python3
"""Detectron's / Detectron.pytorch's ``tools/infer_simple.py``: a shim over ``detconvert infer``.

Example::

    python tools/infer_simple.py --load_detectron model_final.pkl --image_dir demo --output_dir out
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from detconvert.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["infer", *sys.argv[1:]]))
