#!/usr/bin/env python3
"""Detectron.pytorch's ``tools/train_net_step.py``: a shim over ``detconvert train``.

Example::

    python tools/train_net_step.py --cfg e2e_mask_rcnn_R-50-FPN_1x.yaml --dataset train.json \
        --load_detectron model_final.pkl --keep-classes person,dog --bs 2 --nw 4
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from detconvert.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
