"""Fine-tuning converted Detectron models the way Detectron trained them.

Targets (``rpn_targets``, ``roi_sampling``, ``mask_targets``, ``keypoint_targets``,
``retinanet_targets``) reproduce ``detectron/roi_data/*``; ``losses`` reproduces the loss operators of
``detectron/modeling/*_heads.py``; ``solver`` reproduces ``utils/lr_policy.py`` and the SGD update of
``utils/net.py``/``train.py`` without Caffe2's momentum correction on PyTorch's buffer.
"""
