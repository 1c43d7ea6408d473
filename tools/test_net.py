#!/usr/bin/env python3
"""Detectron.pytorch's ``tools/test_net.py``: a shim over ``detconvert eval``.

Example::

    python tools/test_net.py --load_detectron model_final.pkl --image_dir val2017 \
        --ann annotations/instances_val2017.json
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from detconvert.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["eval", *sys.argv[1:]]))
